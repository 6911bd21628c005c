package xds

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	netrbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/proto"

	"github.com/meshguard/meshguard/extproc/nodeid"
	"github.com/meshguard/meshguard/flowmodel"
)

func dests(ds ...string) []flowmodel.DestinationRecord {
	out := make([]flowmodel.DestinationRecord, len(ds))
	for i, d := range ds {
		out[i] = flowmodel.DestinationRecord{Destination: d, Count: 1}
	}
	return out
}

func newGen(t *testing.T, cfg Config) *Generator {
	t.Helper()
	g, err := NewGenerator(cfg)
	if err != nil {
		t.Fatalf("NewGenerator: %v", err)
	}
	return g
}

func build(t *testing.T, g *Generator, id nodeid.Identity, svcs ...flowmodel.ServiceRecord) Resources {
	t.Helper()
	res, err := g.Build(id, svcs)
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	for _, l := range res.Listeners {
		validateDeep(t, l)
	}
	for _, c := range res.Clusters {
		validateDeep(t, c)
	}
	for _, r := range res.Routes {
		validateDeep(t, r)
	}
	return res
}

// chain returns a filter chain of the listener by name ("tcp" is the default chain).
func chain(t *testing.T, res Resources, name string) *listenerv3.FilterChain {
	t.Helper()
	if len(res.Listeners) != 1 {
		t.Fatalf("%d listeners, want 1", len(res.Listeners))
	}
	l := res.Listeners[0]
	if name == "tcp" {
		return l.GetDefaultFilterChain()
	}
	for _, fc := range l.GetFilterChains() {
		if fc.GetName() == name {
			return fc
		}
	}
	return nil
}

func filterConfig[T proto.Message](t *testing.T, fc *listenerv3.FilterChain, name string) T {
	t.Helper()
	var zero T
	for _, f := range fc.GetFilters() {
		if f.GetName() != name {
			continue
		}
		m, err := f.GetTypedConfig().UnmarshalNew()
		if err != nil {
			t.Fatalf("unpack %s: %v", name, err)
		}
		v, ok := m.(T)
		if !ok {
			t.Fatalf("%s config is %T", name, m)
		}
		return v
	}
	return zero
}

func rbacOf(t *testing.T, res Resources, chainName string) *netrbacv3.RBAC {
	t.Helper()
	fc := chain(t, res, chainName)
	if fc == nil {
		t.Fatalf("no filter chain %q", chainName)
	}
	r := filterConfig[*netrbacv3.RBAC](t, fc, wellknown.RoleBasedAccessControl)
	if r != nil && fc.GetFilters()[0].GetName() != wellknown.RoleBasedAccessControl {
		t.Errorf("chain %q: RBAC is not the first filter", chainName)
	}
	return r
}

func tcpProxyOf(t *testing.T, res Resources, chainName string) *tcpproxyv3.TcpProxy {
	t.Helper()
	return filterConfig[*tcpproxyv3.TcpProxy](t, chain(t, res, chainName), wellknown.TCPProxy)
}

func extProcOf(t *testing.T, res Resources) *extprocv3.ExternalProcessor {
	t.Helper()
	hcm := filterConfig[*hcmv3.HttpConnectionManager](t, chain(t, res, "http"), wellknown.HTTPConnectionManager)
	if hcm == nil {
		t.Fatal("no http_connection_manager on the http chain")
	}
	fs := hcm.GetHttpFilters()
	if len(fs) != 2 || fs[0].GetName() != extProcFilterName || fs[1].GetName() != wellknown.Router {
		t.Fatalf("http filters = %v, want ext_proc then router", fs)
	}
	m, err := fs[0].GetTypedConfig().UnmarshalNew()
	if err != nil {
		t.Fatal(err)
	}
	return m.(*extprocv3.ExternalProcessor)
}

var (
	sidecar  = nodeid.Identity{Role: nodeid.RoleSidecar, Service: "shop/checkout"}
	gateway  = nodeid.Identity{Role: nodeid.RoleGateway}
	learned  = dests("203.0.113.7:443", "api.example.com:443", "198.51.100.20:5432", "[2001:db8::1]:443", "192.0.2.9", "*.cdn.example.net:443")
	checkout = func(mode flowmodel.Mode) flowmodel.ServiceRecord {
		return flowmodel.ServiceRecord{Name: "shop/checkout", Mode: mode, Destinations: learned}
	}
)

func tcpTo(dst string) conn {
	return conn{src: netip.MustParseAddr("10.0.0.2"), dst: netip.MustParseAddrPort(dst)}
}
func tlsTo(dst, sni string) conn { c := tcpTo(dst); c.sni = sni; return c }

func TestSidecarEnforce(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		path    string
		c       conn
		allowed bool
	}{
		{"learned ip and port", Config{}, "tcp", tcpTo("203.0.113.7:443"), true},
		{"learned ip, other port", Config{}, "tcp", tcpTo("203.0.113.7:80"), false},
		{"unknown ip", Config{}, "tcp", tcpTo("203.0.113.8:443"), false},
		{"second port", Config{}, "tcp", tcpTo("198.51.100.20:5432"), true},
		{"ip learned without port allows any port", Config{}, "tcp", tcpTo("192.0.2.9:12345"), true},
		{"ipv6", Config{}, "tcp", tcpTo("[2001:db8::1]:443"), true},
		{"tls learned sni", Config{}, "tls", tlsTo("203.0.113.7:443", "api.example.com"), true},
		{"tls sni case", Config{}, "tls", tlsTo("203.0.113.7:443", "API.Example.COM"), true},
		{"tls wildcard host", Config{}, "tls", tlsTo("203.0.113.7:443", "img.cdn.example.net"), true},
		{"tls no sni", Config{}, "tls", tlsTo("203.0.113.7:443", ""), true},
		{"tls unknown sni on known ip", Config{}, "tls", tlsTo("203.0.113.7:443", "evil.example.org"), false},
		{"tls known sni on unknown ip", Config{}, "tls", tlsTo("198.51.100.99:443", "api.example.com"), false},
		{"tls unknown sni, sni check off", Config{SkipSNICheck: true}, "tls", tlsTo("203.0.113.7:443", "evil.example.org"), true},
		{"tls unknown ip, sni check off", Config{SkipSNICheck: true}, "tls", tlsTo("203.0.113.9:443", "api.example.com"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := build(t, newGen(t, tt.cfg), sidecar, checkout(flowmodel.ModeEnforce))
			if len(res.Skipped) != 0 {
				t.Errorf("skipped = %v", res.Skipped)
			}
			r := rbacOf(t, res, tt.path)
			if r == nil || r.GetRules() == nil || r.GetShadowRules() != nil {
				t.Fatalf("%s RBAC = %v, want enforcing rules only", tt.path, r)
			}
			if got := allowed(t, r.GetRules(), tt.c); got != tt.allowed {
				t.Errorf("allowed(%+v) = %v, want %v", tt.c, got, tt.allowed)
			}
			tp := tcpProxyOf(t, res, tt.path)
			if tp.GetUpstreamConnectMode() != tcpproxyv3.UpstreamConnectMode_ON_DOWNSTREAM_DATA || tp.GetMaxEarlyDataBytes() == nil {
				t.Errorf("tcp_proxy connects before the RBAC decides: %v", tp)
			}
			if r := rbacOf(t, res, "http"); r != nil {
				t.Errorf("RBAC on the http chain without RBACOnHTTP")
			}
		})
	}
}

func TestSidecarModes(t *testing.T) {
	quarantine := flowmodel.ServiceRecord{Name: "shop/checkout", Mode: flowmodel.ModeQuarantine,
		QuarantineAllow: []string{"vault.internal:8200", "10.0.0.5:8200"}, Destinations: learned}
	type check struct {
		path    string
		c       conn
		allowed bool
	}
	tests := []struct {
		name       string
		cfg        Config
		id         nodeid.Identity
		rec        []flowmodel.ServiceRecord
		wantRules  bool // enforcing rules on tcp and tls
		wantShadow bool
		skipped    []Skip
		checks     []check // evaluated on rules, or on shadow rules when only those exist
	}{
		{name: "learn: no RBAC", id: sidecar, rec: []flowmodel.ServiceRecord{checkout(flowmodel.ModeLearn)}},
		{name: "unknown service: no RBAC", id: sidecar, rec: []flowmodel.ServiceRecord{{Name: "other/svc", Mode: flowmodel.ModeEnforce, Destinations: learned}}},
		{name: "unidentified sidecar: no RBAC", id: nodeid.Identity{Role: nodeid.RoleSidecar}, rec: []flowmodel.ServiceRecord{checkout(flowmodel.ModeEnforce)}},
		{name: "monitor: shadow rules", id: sidecar, rec: []flowmodel.ServiceRecord{checkout(flowmodel.ModeMonitor)}, wantShadow: true,
			checks: []check{{"tcp", tcpTo("203.0.113.7:443"), true}, {"tcp", tcpTo("203.0.113.8:443"), false}}},
		{name: "enforce without destinations: deny-all", id: sidecar,
			rec: []flowmodel.ServiceRecord{{Name: "shop/checkout", Mode: flowmodel.ModeEnforce}}, wantRules: true,
			checks: []check{{"tcp", tcpTo("203.0.113.7:443"), false}, {"tls", tlsTo("203.0.113.7:443", ""), false}}},
		{name: "enforce with host names only: deny-all", id: sidecar,
			rec: []flowmodel.ServiceRecord{{Name: "shop/checkout", Mode: flowmodel.ModeEnforce, Destinations: dests("api.example.com:443")}}, wantRules: true,
			checks: []check{{"tls", tlsTo("203.0.113.7:443", "api.example.com"), false}, {"tcp", tcpTo("203.0.113.7:443"), false}}},
		{name: "enforce without destinations, deny-all asked: the same", cfg: Config{DenyAllWhenEmpty: true}, id: sidecar,
			rec: []flowmodel.ServiceRecord{{Name: "shop/checkout", Mode: flowmodel.ModeEnforce}}, wantRules: true,
			checks: []check{{"tcp", tcpTo("203.0.113.7:443"), false}, {"tls", tlsTo("203.0.113.7:443", "api.example.com"), false}}},
		{name: "monitor without destinations: no shadow rules", id: sidecar,
			rec: []flowmodel.ServiceRecord{{Name: "shop/checkout", Mode: flowmodel.ModeMonitor}}},
		{name: "monitor without destinations, deny-all asked: shadow deny-all", cfg: Config{DenyAllWhenEmpty: true}, id: sidecar,
			rec: []flowmodel.ServiceRecord{{Name: "shop/checkout", Mode: flowmodel.ModeMonitor}}, wantShadow: true,
			checks: []check{{"tcp", tcpTo("203.0.113.7:443"), false}, {"tls", tlsTo("203.0.113.7:443", ""), false}}},
		{name: "learn, deny-all asked: no RBAC", cfg: Config{DenyAllWhenEmpty: true}, id: sidecar,
			rec: []flowmodel.ServiceRecord{{Name: "shop/checkout", Mode: flowmodel.ModeLearn}}},
		{name: "bad destination left out", id: sidecar,
			rec:       []flowmodel.ServiceRecord{{Name: "shop/checkout", Mode: flowmodel.ModeEnforce, Destinations: dests("203.0.113.7:443", "bad host:x")}},
			wantRules: true, skipped: []Skip{{Service: "shop/checkout", Reason: SkipBadDestination, Detail: "bad host:x"}},
			checks: []check{{"tcp", tcpTo("203.0.113.7:443"), true}}},
		{name: "quarantine: allow list only", id: sidecar, rec: []flowmodel.ServiceRecord{quarantine}, wantRules: true,
			checks: []check{
				{"tcp", tcpTo("10.0.0.5:8200"), true},
				{"tcp", tcpTo("10.0.0.6:8200"), false},
				{"tcp", tcpTo("203.0.113.7:443"), false}, // learned, but quarantined
				{"tls", tlsTo("10.0.0.9:8200", "vault.internal"), true},
				{"tls", tlsTo("10.0.0.9:8201", "vault.internal"), false},
				{"tls", tlsTo("10.0.0.9:8200", "other.internal"), false},
			}},
		{name: "quarantine with empty allow list denies all", id: sidecar,
			rec: []flowmodel.ServiceRecord{{Name: "shop/checkout", Mode: flowmodel.ModeQuarantine, Destinations: learned}}, wantRules: true,
			checks: []check{{"tcp", tcpTo("203.0.113.7:443"), false}, {"tls", tlsTo("203.0.113.7:443", ""), false}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := build(t, newGen(t, tt.cfg), tt.id, tt.rec...)
			if !slices.Equal(res.Skipped, tt.skipped) {
				t.Errorf("skipped = %v, want %v", res.Skipped, tt.skipped)
			}
			for _, p := range []string{"tcp", "tls"} {
				r := rbacOf(t, res, p)
				if gotRules, gotShadow := r.GetRules() != nil, r.GetShadowRules() != nil; gotRules != tt.wantRules || gotShadow != tt.wantShadow {
					t.Fatalf("%s: rules %v shadow %v, want %v %v", p, gotRules, gotShadow, tt.wantRules, tt.wantShadow)
				}
				wantMode := tcpproxyv3.UpstreamConnectMode_IMMEDIATE
				if tt.wantRules {
					wantMode = tcpproxyv3.UpstreamConnectMode_ON_DOWNSTREAM_DATA
				}
				if got := tcpProxyOf(t, res, p).GetUpstreamConnectMode(); got != wantMode {
					t.Errorf("%s: tcp_proxy connect mode %v, want %v", p, got, wantMode)
				}
			}
			for _, c := range tt.checks {
				r := rbacOf(t, res, c.path)
				rules := r.GetRules()
				if rules == nil {
					rules = r.GetShadowRules()
				}
				if got := allowed(t, rules, c.c); got != c.allowed {
					t.Errorf("%s allowed(%+v) = %v, want %v", c.path, c.c, got, c.allowed)
				}
			}
		})
	}
}

func TestRBACOnHTTP(t *testing.T) {
	res := build(t, newGen(t, Config{RBACOnHTTP: true}), sidecar, checkout(flowmodel.ModeEnforce))
	r := rbacOf(t, res, "http")
	if r == nil {
		t.Fatal("no RBAC on the http chain")
	}
	if !allowed(t, r.GetRules(), tcpTo("203.0.113.7:443")) || allowed(t, r.GetRules(), tcpTo("203.0.113.8:443")) {
		t.Error("http RBAC does not follow the baseline")
	}
}

func TestGateway(t *testing.T) {
	g := newGen(t, Config{GatewaySources: map[string][]string{"shop/checkout": {"10.8.0.0/24"}}})
	svcs := []flowmodel.ServiceRecord{
		{Name: "shop/cart", Mode: flowmodel.ModeLearn, Destinations: dests("198.51.100.1:443")},
		checkout(flowmodel.ModeEnforce),
		{Name: "10.1.2.3", Mode: flowmodel.ModeEnforce, Destinations: dests("198.51.100.7:8443")},
		{Name: "bad name", Mode: flowmodel.ModeEnforce, Destinations: dests("198.51.100.7:8443")},
		{Name: "ops/backup", Mode: flowmodel.ModeQuarantine},
		{Name: "ops/empty", Mode: flowmodel.ModeEnforce},
		{Name: "ops/watch", Mode: flowmodel.ModeMonitor, Destinations: dests("198.51.100.8:443")},
	}
	res := build(t, g, gateway, svcs...)
	wantSkipped := []Skip{{Service: "bad name", Reason: SkipNoPrincipals}}
	if !slices.Equal(res.Skipped, wantSkipped) {
		t.Errorf("skipped = %v, want %v", res.Skipped, wantSkipped)
	}
	spiffe := func(c conn, id string) conn { c.peer = id; return c }
	from := func(src string, c conn) conn { c.src = netip.MustParseAddr(src); return c }
	tests := []struct {
		name    string
		c       conn
		allowed bool
	}{
		{"checkout by configured CIDR to learned", from("10.8.0.5", tcpTo("203.0.113.7:443")), true},
		{"checkout by configured CIDR to unknown", from("10.8.0.5", tcpTo("203.0.113.99:443")), false},
		{"checkout by SPIFFE to learned", from("10.9.9.9", spiffe(tcpTo("203.0.113.7:443"), "spiffe://cluster.local/ns/shop/sa/checkout")), true},
		{"checkout by SPIFFE to unknown", from("10.9.9.9", spiffe(tcpTo("203.0.113.99:443"), "spiffe://cluster.local/ns/shop/sa/checkout")), false},
		{"IP-named service to its destination", from("10.1.2.3", tcpTo("198.51.100.7:8443")), true},
		{"IP-named service to checkout's destination", from("10.1.2.3", tcpTo("203.0.113.7:443")), false},
		{"learning source goes anywhere", from("10.7.7.7", tcpTo("192.0.2.200:9999")), true},
		{"quarantined with no allow list", from("10.7.7.7", spiffe(tcpTo("203.0.113.7:443"), "spiffe://cluster.local/ns/ops/sa/backup")), false},
		{"enforce without destinations denies all", from("10.7.7.7", spiffe(tcpTo("192.0.2.200:9999"), "spiffe://cluster.local/ns/ops/sa/empty")), false},
		{"monitored source not enforced", from("10.7.7.7", spiffe(tcpTo("192.0.2.200:9999"), "spiffe://cluster.local/ns/ops/sa/watch")), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := allowed(t, rbacOf(t, res, "tcp").GetRules(), tt.c); got != tt.allowed {
				t.Errorf("allowed = %v, want %v", got, tt.allowed)
			}
		})
	}
	shadow := rbacOf(t, res, "tcp").GetShadowRules()
	watch := from("10.7.7.7", spiffe(tcpTo("192.0.2.200:9999"), "spiffe://cluster.local/ns/ops/sa/watch"))
	if allowed(t, shadow, watch) || !allowed(t, shadow, spiffe(tcpTo("198.51.100.8:443"), watch.peer)) {
		t.Error("shadow rules do not follow the monitored service's baseline")
	}
	if !allowed(t, shadow, from("10.8.0.5", tcpTo("192.0.2.200:9999"))) {
		t.Error("shadow rules deny a source that is not monitored")
	}
	// A gateway's ext_proc and access-log streams do not name a service.
	if md := extProcOf(t, res).GetGrpcService().GetInitialMetadata(); len(md) != 0 {
		t.Errorf("gateway ext_proc initial metadata = %v", md)
	}

	// The same services in another order give the same resources.
	rev := slices.Clone(svcs)
	slices.Reverse(rev)
	res2 := build(t, g, gateway, rev...)
	if !proto.Equal(res.Listeners[0], res2.Listeners[0]) {
		t.Error("gateway listener depends on the order of the services")
	}
}

func TestServerFirstPorts(t *testing.T) {
	rec := flowmodel.ServiceRecord{Name: "shop/checkout", Mode: flowmodel.ModeEnforce,
		Destinations: dests("198.51.100.30:3306", "203.0.113.7:443", "192.0.2.9")}
	res := build(t, newGen(t, Config{}), sidecar, rec)
	fc := chain(t, res, "server_first_3306")
	if fc == nil {
		t.Fatal("no server-first chain for 3306")
	}
	m := fc.GetFilterChainMatch()
	var prefixes []string
	for _, r := range m.GetPrefixRanges() {
		prefixes = append(prefixes, r.GetAddressPrefix())
	}
	if m.GetDestinationPort().GetValue() != 3306 || !slices.Equal(prefixes, []string{"192.0.2.9", "198.51.100.30"}) {
		t.Errorf("server-first match = %v", m)
	}
	if mode := tcpProxyOf(t, res, "server_first_3306").GetUpstreamConnectMode(); mode != tcpproxyv3.UpstreamConnectMode_IMMEDIATE {
		t.Errorf("server-first tcp_proxy mode %v, want IMMEDIATE", mode)
	}
	if rbacOf(t, res, "server_first_3306") == nil {
		t.Error("server-first chain without RBAC")
	}
	// Ports with allowed IPs only: 25 has none beyond the any-port IP.
	var names []string
	for _, fc := range res.Listeners[0].GetFilterChains() {
		names = append(names, fc.GetName())
	}
	wantNames := []string{"server_first_21", "server_first_25", "server_first_110", "server_first_143", "server_first_587", "server_first_3306", "http", "tls"}
	if !slices.Equal(names, wantNames) {
		t.Errorf("chains = %v, want %v", names, wantNames)
	}
	for _, lf := range res.Listeners[0].GetListenerFilters() {
		if lf.GetName() == wellknown.OriginalDestination {
			if lf.GetFilterDisabled() != nil {
				t.Error("original_dst disabled on some ports")
			}
			continue
		}
		if got := len(lf.GetFilterDisabled().GetOrMatch().GetRules()); got != len(DefaultServerFirstPorts) {
			t.Errorf("%s disabled on %d ports, want %d", lf.GetName(), got, len(DefaultServerFirstPorts))
		}
	}
	// Learning: no server-first chains; none configured: none either.
	for _, tc := range []struct {
		cfg Config
		rec flowmodel.ServiceRecord
	}{
		{Config{}, flowmodel.ServiceRecord{Name: rec.Name, Mode: flowmodel.ModeLearn, Destinations: rec.Destinations}},
		{Config{ServerFirstPorts: []uint32{}}, rec},
	} {
		res := build(t, newGen(t, tc.cfg), sidecar, tc.rec)
		if n := len(res.Listeners[0].GetFilterChains()); n != 2 {
			t.Errorf("%v: %d filter chains, want 2", tc.rec.Mode, n)
		}
	}
}

func TestExtProcFilter(t *testing.T) {
	t.Run("defaults", func(t *testing.T) {
		res := build(t, newGen(t, Config{}), sidecar, checkout(flowmodel.ModeLearn))
		ep := extProcOf(t, res)
		if ep.GetFailureModeAllow() {
			t.Error("failure_mode_allow is on by default")
		}
		if got := ep.GetMessageTimeout().AsDuration(); got != 200*time.Millisecond {
			t.Errorf("message_timeout = %v", got)
		}
		want := []string{"xds.node.id", "xds.node.metadata['NAMESPACE']", "xds.node.metadata['WORKLOAD_NAME']",
			"destination.address", "source.address", "connection.requested_server_name", "connection.uri_san_peer_certificate"}
		if !slices.Equal(ep.GetRequestAttributes(), want) {
			t.Errorf("request attributes = %v", ep.GetRequestAttributes())
		}
		if !slices.Equal(ep.GetResponseAttributes(), []string{"upstream.address"}) {
			t.Errorf("response attributes = %v", ep.GetResponseAttributes())
		}
		pm := ep.GetProcessingMode()
		if pm.GetRequestHeaderMode() != extprocv3.ProcessingMode_SEND || pm.GetResponseHeaderMode() != extprocv3.ProcessingMode_SEND ||
			pm.GetRequestBodyMode() != extprocv3.ProcessingMode_NONE || pm.GetResponseBodyMode() != extprocv3.ProcessingMode_NONE ||
			pm.GetRequestTrailerMode() != extprocv3.ProcessingMode_SKIP || pm.GetResponseTrailerMode() != extprocv3.ProcessingMode_SKIP {
			t.Errorf("processing mode = %v", pm)
		}
		gs := ep.GetGrpcService()
		if gs.GetEnvoyGrpc().GetClusterName() != ClusterExtProc {
			t.Errorf("ext_proc cluster = %q", gs.GetEnvoyGrpc().GetClusterName())
		}
		md := gs.GetInitialMetadata()
		if len(md) != 1 || md[0].GetKey() != ServiceMetadataKey || md[0].GetValue() != "shop/checkout" {
			t.Errorf("initial metadata = %v", md)
		}
		c := cluster(t, res, ClusterExtProc)
		sa := c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
		if c.GetType() != clusterv3.Cluster_STATIC || sa.GetAddress() != "127.0.0.1" || sa.GetPortValue() != 9001 {
			t.Errorf("ext_proc cluster = %v", c)
		}
		if _, ok := c.GetTypedExtensionProtocolOptions()[httpProtocolOptionsKey]; !ok {
			t.Error("ext_proc cluster does not speak HTTP/2")
		}
		als := cluster(t, res, ClusterAccessLog)
		if p := als.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress().GetPortValue(); p != 18000 {
			t.Errorf("access log port = %d", p)
		}
	})
	t.Run("configured", func(t *testing.T) {
		g := newGen(t, Config{
			ExtProcAddress:    "unix:///run/meshguard/extproc.sock",
			AccessLogAddress:  "meshguard.meshguard.svc:18000",
			FailureModeAllow:  true,
			MessageTimeout:    500 * time.Millisecond,
			ProcessingMode:    ProcessingMode{RequestBody: "buffered", ResponseTrailer: "SEND"},
			RequestAttributes: []string{"source.address"},
		})
		res := build(t, g, sidecar, checkout(flowmodel.ModeLearn))
		ep := extProcOf(t, res)
		if !ep.GetFailureModeAllow() || ep.GetMessageTimeout().AsDuration() != 500*time.Millisecond ||
			ep.GetProcessingMode().GetRequestBodyMode() != extprocv3.ProcessingMode_BUFFERED ||
			ep.GetProcessingMode().GetResponseTrailerMode() != extprocv3.ProcessingMode_SEND ||
			!slices.Equal(ep.GetRequestAttributes(), []string{"source.address"}) {
			t.Errorf("ext_proc = %v", ep)
		}
		pipe := cluster(t, res, ClusterExtProc).GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetPipe()
		if pipe.GetPath() != "/run/meshguard/extproc.sock" {
			t.Errorf("ext_proc pipe = %v", pipe)
		}
		if c := cluster(t, res, ClusterAccessLog); c.GetType() != clusterv3.Cluster_STRICT_DNS {
			t.Errorf("access log cluster type = %v, want STRICT_DNS", c.GetType())
		}
	})
	t.Run("access log disabled", func(t *testing.T) {
		res := build(t, newGen(t, Config{DisableAccessLog: true}), sidecar, checkout(flowmodel.ModeLearn))
		if c := cluster(t, res, ClusterAccessLog); c != nil {
			t.Error("access log cluster present")
		}
		if al := tcpProxyOf(t, res, "tcp").GetAccessLog(); len(al) != 0 {
			t.Errorf("tcp_proxy access log = %v", al)
		}
	})
}

func cluster(t *testing.T, res Resources, name string) *clusterv3.Cluster {
	t.Helper()
	for _, c := range res.Clusters {
		if c.GetName() == name {
			return c
		}
	}
	return nil
}

func TestBuildIsDeterministicAndValid(t *testing.T) {
	g := newGen(t, Config{RBACOnHTTP: true})
	for _, mode := range []flowmodel.Mode{flowmodel.ModeLearn, flowmodel.ModeMonitor, flowmodel.ModeEnforce, flowmodel.ModeQuarantine} {
		for _, id := range []nodeid.Identity{sidecar, gateway} {
			a := build(t, g, id, checkout(mode))
			b := build(t, g, id, checkout(mode))
			for i := range a.Listeners {
				if !proto.Equal(a.Listeners[i], b.Listeners[i]) {
					t.Errorf("%v %v: listeners differ between builds", mode, id.Role)
				}
			}
			n := validateDeep(t, a.Listeners[0])
			if n < 10 {
				t.Errorf("%v %v: validated only %d messages in the listener", mode, id.Role, n)
			}
		}
	}
}

func TestConfigCheck(t *testing.T) {
	_, err := Config{
		ExtProcAddress:   "nohost",
		AccessLogAddress: "unix://relative.sock",
		ListenerAddress:  "0.0.0.0:0",
		MessageTimeout:   -time.Second,
		ProcessingMode:   ProcessingMode{RequestHeader: "SENDS", RequestBody: "HALF"},
		GatewaySources:   map[string][]string{"a/b": {"10.0.0.0/33", "spiffe://td/ns/a/sa/b"}},
		ServerFirstPorts: []uint32{70000},
		TrustDomain:      "td/x",
	}.Check()
	if err == nil {
		t.Fatal("Check accepted a bad config")
	}
	for _, want := range []string{"ext_proc address", "access log address", "listener address", "message timeout",
		"request_header", "request_body", "gateway sources of \"a/b\"", "server-first port 70000", "trust domain"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	c, err := Config{}.Check()
	if err != nil {
		t.Fatal(err)
	}
	if c.ExtProcAddress != DefaultExtProcAddress || c.AccessLogAddress != DefaultAccessLogAddress || c.MessageTimeout != DefaultMessageTimeout ||
		c.PollInterval != DefaultPollInterval || c.TrustDomain != DefaultTrustDomain || c.ProcessingMode.RequestHeader != "SEND" {
		t.Errorf("defaults = %+v", c)
	}
	if _, err := NewGenerator(Config{ExtProcAddress: "bad"}); err == nil {
		t.Error("NewGenerator accepted a bad config")
	}
}

// TestGatewayDenyAllWhenEmpty: on a gateway, a service with no learned destination IP denies
// its sources everything in enforce, whatever DenyAllWhenEmpty says; in monitor the option
// makes that a shadow denial. Other sources are untouched.
func TestGatewayDenyAllWhenEmpty(t *testing.T) {
	empty := conn{src: netip.MustParseAddr("10.7.7.7"), dst: netip.MustParseAddrPort("192.0.2.200:9999"), peer: "spiffe://cluster.local/ns/ops/sa/empty"}
	other := empty
	other.peer = "spiffe://cluster.local/ns/ops/sa/other"
	for _, tt := range []struct {
		name             string
		mode             flowmodel.Mode
		deny             bool
		wantRules        bool // the service's sources are denied by the rules
		wantShadowDenied bool
	}{
		{"enforce", flowmodel.ModeEnforce, false, true, false},
		{"enforce, deny-all asked", flowmodel.ModeEnforce, true, true, false},
		{"monitor", flowmodel.ModeMonitor, false, false, false},
		{"monitor, deny-all asked", flowmodel.ModeMonitor, true, false, true},
		{"learn, deny-all asked", flowmodel.ModeLearn, true, false, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			res := build(t, newGen(t, Config{DenyAllWhenEmpty: tt.deny}), gateway, flowmodel.ServiceRecord{Name: "ops/empty", Mode: tt.mode})
			if len(res.Skipped) != 0 {
				t.Errorf("skipped %v", res.Skipped)
			}
			r := rbacOf(t, res, "tcp")
			if got := r.GetRules() != nil && !allowed(t, r.GetRules(), empty); got != tt.wantRules {
				t.Errorf("denied by the rules = %v, want %v", got, tt.wantRules)
			}
			if got := r.GetShadowRules() != nil && !allowed(t, r.GetShadowRules(), empty); got != tt.wantShadowDenied {
				t.Errorf("denied by the shadow rules = %v, want %v", got, tt.wantShadowDenied)
			}
			for _, rb := range []*rbacv3.RBAC{r.GetRules(), r.GetShadowRules()} {
				if rb != nil && !allowed(t, rb, other) {
					t.Error("another source is denied")
				}
			}
		})
	}
}

// TestAdversaryRequestHeaderMode covers a careful attacker's configuration trick (issue 10,
// fail closed as in case 3: every request is decided): a processing mode that does not send
// the request headers to ext_proc would leave every request undecided, or decided after it
// went out. Check refuses any request_header mode but SEND.
func TestAdversaryRequestHeaderMode(t *testing.T) {
	for _, tt := range []struct {
		name string
		mode string
		ok   bool
	}{
		{"default is SEND", "", true},
		{"SEND", "SEND", true},
		{"send, any case", "send", true},
		{"SKIP", "SKIP", false},
		{"skip, any case", "Skip", false},
		{"DEFAULT", "DEFAULT", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Config{ProcessingMode: ProcessingMode{RequestHeader: tt.mode}}.Check()
			if (err == nil) != tt.ok {
				t.Fatalf("Check(request_header %q) = %v, want ok %v", tt.mode, err, tt.ok)
			}
			if _, gerr := NewGenerator(Config{ProcessingMode: ProcessingMode{RequestHeader: tt.mode}}); (gerr == nil) != tt.ok {
				t.Fatalf("NewGenerator(request_header %q) = %v, want ok %v", tt.mode, gerr, tt.ok)
			}
			if !tt.ok {
				if !strings.Contains(err.Error(), "request_header") {
					t.Errorf("error %q does not name request_header", err)
				}
				return
			}
			res := build(t, newGen(t, Config{ProcessingMode: ProcessingMode{RequestHeader: tt.mode}}), sidecar, checkout(flowmodel.ModeEnforce))
			if got := extProcOf(t, res).GetProcessingMode().GetRequestHeaderMode(); got != extprocv3.ProcessingMode_SEND {
				t.Errorf("served request_header_mode = %v (config %+v), want SEND", got, c.ProcessingMode)
			}
		})
	}
}
