package controlplane

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	datav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	netrbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/meshguard/meshguard/controlplane/accesslog"
	"github.com/meshguard/meshguard/controlplane/xds"
	"github.com/meshguard/meshguard/extproc/certs/certtest"
	"github.com/meshguard/meshguard/flowmodel"
)

const (
	checkoutIP = "203.0.113.7"   // learned by shop/checkout only
	ledgerIP   = "198.51.100.30" // learned by pay/ledger only
	gatewayID  = "spiffe://cluster.local/ns/istio-system/sa/istio-egressgateway-service-account"
)

func spiffe(ns, sa string) string { return "spiffe://cluster.local/ns/" + ns + "/sa/" + sa }

func sidecar(t *testing.T, ns, wl string) *corev3.Node {
	t.Helper()
	md, err := structpb.NewStruct(map[string]any{"NAMESPACE": ns, "WORKLOAD_NAME": wl})
	if err != nil {
		t.Fatal(err)
	}
	return &corev3.Node{Id: wl + "-1", Metadata: md}
}

// mtlsEnv is a control plane served with mutual TLS on loopback, over a model in which
// shop/checkout and pay/ledger each learned one destination and are enforced.
type mtlsEnv struct {
	ca    *certtest.CA
	cp    *Server
	model *flowmodel.Model
	addr  string
	// records are the access-log flows as the receiver handed them to the model.
	mu      sync.Mutex
	records []flowmodel.Flow
}

func startMTLS(t *testing.T, now time.Time) *mtlsEnv {
	t.Helper()
	model, err := flowmodel.New(flowmodel.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t0 := now.Add(-time.Hour)
	for _, l := range []struct{ svc, ip string }{{"shop/checkout", checkoutIP}, {"pay/ledger", ledgerIP}} {
		model.Decide(&flowmodel.Flow{Time: t0, Service: l.svc, Source: "test",
			Destination: flowmodel.Destination{IP: netip.MustParseAddr(l.ip), Port: 443}})
		if err := model.SetMode(l.svc, flowmodel.ModeChange{Mode: flowmodel.ModeEnforce, By: "test", At: t0}); err != nil {
			t.Fatal(err)
		}
	}
	e := &mtlsEnv{ca: certtest.NewCA(t, "mesh CA"), model: model}
	files := certtest.NewFiles(t.TempDir())
	files.Write(t, e.ca.Server(t, "meshguard"), e.ca)
	cfg := Config{
		Listen: "127.0.0.1:0",
		XDS:    xds.Config{PollInterval: time.Hour},
		TLS:    TLS{CertFile: files.Cert, KeyFile: files.Key, ClientCAFile: files.ClientCA},
		AccessLog: accesslog.Config{
			Now: func() time.Time { return now },
			OnRecord: func(r accesslog.Record) {
				e.mu.Lock()
				e.records = append(e.records, *r.Flow)
				e.mu.Unlock()
			},
		},
	}
	if e.cp, err = New(cfg, model, nil); err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.addr = lis.Addr().String()
	g := e.cp.NewGRPCServer()
	ctx, cancel := context.WithCancel(context.Background())
	runDone, serveDone := make(chan error, 1), make(chan error, 1)
	go func() { runDone <- e.cp.Run(ctx) }()
	go func() { serveDone <- e.cp.Serve(g, lis) }()
	t.Cleanup(func() {
		cancel()
		if err := <-runDone; err != nil {
			t.Errorf("Run: %v", err)
		}
		g.GracefulStop()
		if err := <-serveDone; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return e
}

// dial connects with TLS, presenting leaf (none when nil), trusting the mesh CA.
func (e *mtlsEnv) dial(t *testing.T, leaf *certtest.Leaf) *grpc.ClientConn {
	t.Helper()
	cfg := &tls.Config{RootCAs: e.ca.Pool(), ServerName: "localhost", MinVersion: tls.VersionTLS12}
	if leaf != nil {
		cfg.Certificates = []tls.Certificate{leaf.TLS(t)}
	}
	return dialWith(t, e.addr, credentials.NewTLS(cfg))
}

func dialWith(t *testing.T, addr string, creds credentials.TransportCredentials) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// recv receives one message within a generous deadline.
func recv[T any](t *testing.T, f func() (T, error)) (T, error) {
	t.Helper()
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	go func() { v, err := f(); ch <- result{v, err} }()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-time.After(10 * time.Second):
		t.Fatal("no answer within 10s")
		panic("unreachable")
	}
}

// adsListener opens an ADS stream as node and returns the listener it is served, every
// resource it was sent having passed ValidateAll; err is the stream's error instead.
func adsListener(t *testing.T, conn *grpc.ClientConn, node *corev3.Node) (*listenerv3.Listener, error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ads, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return nil, err
	}
	if err := ads.Send(&discoverygrpc.DiscoveryRequest{Node: node, TypeUrl: resource.ListenerType}); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return nextListener(t, ads, node)
}

func nextListener(t *testing.T, ads discoverygrpc.AggregatedDiscoveryService_StreamAggregatedResourcesClient, node *corev3.Node) (*listenerv3.Listener, error) {
	t.Helper()
	for {
		r, err := recv(t, ads.Recv)
		if err != nil {
			return nil, err
		}
		validateResources(t, r)
		if err := ads.Send(&discoverygrpc.DiscoveryRequest{Node: node, TypeUrl: r.GetTypeUrl(), VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce()}); err != nil {
			return nil, err
		}
		if r.GetTypeUrl() == resource.ListenerType {
			m, err := r.GetResources()[0].UnmarshalNew()
			if err != nil {
				t.Fatal(err)
			}
			return m.(*listenerv3.Listener), nil
		}
	}
}

// validateResources checks every resource of a response with ValidateAll.
func validateResources(t *testing.T, r *discoverygrpc.DiscoveryResponse) {
	t.Helper()
	for _, a := range r.GetResources() {
		m, err := a.UnmarshalNew()
		if err != nil {
			t.Fatal(err)
		}
		if v, ok := m.(interface{ ValidateAll() error }); !ok {
			t.Fatalf("%T has no ValidateAll", m)
		} else if err := v.ValidateAll(); err != nil {
			t.Fatalf("%s: %v", a.GetTypeUrl(), err)
		}
	}
}

// listenerPolicy gathers, over every RBAC filter of every chain, the policy names and the
// destination IPs they mention.
func listenerPolicy(t *testing.T, l *listenerv3.Listener) (names, ips []string) {
	t.Helper()
	for _, fc := range append(slices.Clone(l.GetFilterChains()), l.GetDefaultFilterChain()) {
		for _, f := range fc.GetFilters() {
			if f.GetName() != wellknown.RoleBasedAccessControl {
				continue
			}
			m, err := f.GetTypedConfig().UnmarshalNew()
			if err != nil {
				t.Fatal(err)
			}
			r := m.(*netrbacv3.RBAC)
			if err := r.ValidateAll(); err != nil {
				t.Fatal(err)
			}
			for _, rules := range []*netrbacv3.RBAC{r} {
				for _, pols := range []map[string]*rbacv3.Policy{rules.GetRules().GetPolicies(), rules.GetShadowRules().GetPolicies()} {
					for name, p := range pols {
						names = append(names, name)
						for _, perm := range p.GetPermissions() {
							collect(perm, &ips, new([]string))
						}
					}
				}
			}
		}
	}
	return slices.Compact(slices.Sorted(slices.Values(names))), slices.Compact(slices.Sorted(slices.Values(ips)))
}

// TestAdversaryADSServesOnlyOwnPolicy: two sidecars of different services, each with its
// own certificate, are each served only their own service's allow list; a gateway account
// sees both (issue 10 case 8: ADS answered one node with another service's learned IPs).
func TestAdversaryADSServesOnlyOwnPolicy(t *testing.T) {
	e := startMTLS(t, time.Now())
	for _, tc := range []struct {
		name      string
		id        string
		node      *corev3.Node
		see, hide []string
	}{
		{"checkout", spiffe("shop", "checkout"), sidecar(t, "shop", "checkout"), []string{checkoutIP}, []string{ledgerIP}},
		{"ledger", spiffe("pay", "ledger"), sidecar(t, "pay", "ledger"), []string{ledgerIP}, []string{checkoutIP}},
		{"gateway", gatewayID, &corev3.Node{Id: "router~10.0.0.9~istio-egressgateway-1.istio-system~istio-system.svc.cluster.local"},
			[]string{checkoutIP, ledgerIP}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := adsListener(t, e.dial(t, e.ca.ClientURI(t, tc.name, tc.id)), tc.node)
			if err != nil {
				t.Fatal(err)
			}
			names, ips := listenerPolicy(t, l)
			for _, ip := range tc.see {
				if !slices.Contains(ips, ip) {
					t.Errorf("%s not in the RBAC (%v, policies %v)", ip, ips, names)
				}
			}
			for _, ip := range tc.hide {
				if slices.Contains(ips, ip) {
					t.Errorf("served another service's IP %s (policies %v)", ip, names)
				}
			}
		})
	}
}

// TestAdversaryForgedNode: a client whose certificate is shop/checkout's claims other nodes
// on ADS (SotW and delta, at the first request or later on the stream) and on the
// access-log service: every claim is refused with PermissionDenied, nothing of pay/ledger's
// policy is sent, and nothing reaches pay/ledger's baseline (issue 10 case 8: a forged node
// added destinations to another service's baseline).
func TestAdversaryForgedNode(t *testing.T) {
	e := startMTLS(t, time.Now())
	conn := e.dial(t, e.ca.ClientURI(t, "checkout", spiffe("shop", "checkout")))
	ledger := sidecar(t, "pay", "ledger")
	forged := map[string]*corev3.Node{
		"other service":            ledger,
		"same namespace":           sidecar(t, "shop", "cart"),
		"istio id":                 {Id: "sidecar~10.0.0.3~ledger-7d4b9c8f6d-x2x9z.pay~pay.svc.cluster.local"},
		"gateway role":             {Id: "router~10.0.0.3~checkout-1.shop~shop.svc.cluster.local"},
		"no identity":              {Id: "anything"},
		"metadata and id disagree": {Id: "sidecar~10.0.0.3~ledger-1.pay~pay.svc.cluster.local", Metadata: sidecar(t, "shop", "checkout").Metadata},
	}
	for name, node := range forged {
		t.Run("ads/"+name, func(t *testing.T) {
			l, err := adsListener(t, conn, node)
			if status.Code(err) != codes.PermissionDenied {
				t.Fatalf("listener %v, err %v; want PermissionDenied", l.GetName(), err)
			}
		})
		t.Run("delta/"+name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			d, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := d.Send(&discoverygrpc.DeltaDiscoveryRequest{Node: node, TypeUrl: resource.ListenerType}); err != nil && !errors.Is(err, io.EOF) {
				t.Fatal(err)
			}
			r, err := recv(t, d.Recv)
			if status.Code(err) != codes.PermissionDenied {
				t.Fatalf("delta response %v, err %v; want PermissionDenied", r, err)
			}
		})
		t.Run("als/"+name, func(t *testing.T) {
			err := sendALS(t, conn, nil, tcpLogs(node, tcpEntry(time.Now(), "192.0.2.99", nil)))
			if status.Code(err) != codes.PermissionDenied {
				t.Fatalf("ALS err %v; want PermissionDenied", err)
			}
		})
	}

	t.Run("ads/switch node on the stream", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		own := sidecar(t, "shop", "checkout")
		ads, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := ads.Send(&discoverygrpc.DiscoveryRequest{Node: own, TypeUrl: resource.ListenerType}); err != nil {
			t.Fatal(err)
		}
		if _, err := nextListener(t, ads, own); err != nil {
			t.Fatal(err)
		}
		if err := ads.Send(&discoverygrpc.DiscoveryRequest{Node: ledger, TypeUrl: resource.ClusterType}); err != nil && !errors.Is(err, io.EOF) {
			t.Fatal(err)
		}
		for {
			r, err := recv(t, ads.Recv)
			if err != nil {
				if status.Code(err) != codes.PermissionDenied {
					t.Fatalf("err %v; want PermissionDenied", err)
				}
				break
			}
			if strings.Contains(r.String(), ledgerIP) {
				t.Fatalf("served pay/ledger's IP after the switch")
			}
		}
	})

	t.Run("delta/own node, then none", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		d, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Send(&discoverygrpc.DeltaDiscoveryRequest{Node: sidecar(t, "shop", "checkout"), TypeUrl: resource.ClusterType}); err != nil {
			t.Fatal(err)
		}
		r, err := recv(t, d.Recv)
		if err != nil {
			t.Fatal(err)
		}
		// Envoy names its node on the first request only.
		if err := d.Send(&discoverygrpc.DeltaDiscoveryRequest{TypeUrl: resource.ListenerType, ResponseNonce: r.GetNonce()}); err != nil {
			t.Fatal(err)
		}
		for {
			r, err := recv(t, d.Recv)
			if err != nil {
				t.Fatal(err)
			}
			if r.GetTypeUrl() == resource.ListenerType {
				if s := r.String(); !strings.Contains(s, checkoutIP) || strings.Contains(s, ledgerIP) {
					t.Fatalf("delta listener does not hold exactly checkout's policy")
				}
				break
			}
		}
	})

	t.Run("als/stream service of another service", func(t *testing.T) {
		md := metadata.Pairs(accesslog.ServiceMetadataKey, "pay/ledger")
		err := sendALS(t, conn, md, tcpLogs(sidecar(t, "shop", "checkout"), tcpEntry(time.Now(), "192.0.2.99", nil)))
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("ALS err %v; want PermissionDenied", err)
		}
	})

	if r, _ := e.model.Service("pay/ledger"); slices.ContainsFunc(r.Destinations, func(d flowmodel.DestinationRecord) bool {
		return strings.Contains(d.Destination, "192.0.2.99")
	}) {
		t.Errorf("a forged entry reached pay/ledger's baseline: %v", r.Destinations)
	}
	if _, ok := e.model.Service("shop/cart"); ok {
		t.Error("a forged entry created shop/cart")
	}
	st := e.cp.Stats()
	if st.AccessLog.Refused == 0 || st.XDS.Refused == 0 || st.AccessLog.Flows != 0 {
		t.Errorf("stats: %+v", st)
	}
}

func tcpLogs(node *corev3.Node, entries ...*datav3.TCPAccessLogEntry) *alsv3.StreamAccessLogsMessage {
	m := &alsv3.StreamAccessLogsMessage{
		LogEntries: &alsv3.StreamAccessLogsMessage_TcpLogs{TcpLogs: &alsv3.StreamAccessLogsMessage_TCPAccessLogEntries{LogEntry: entries}},
	}
	if node != nil {
		m.Identifier = &alsv3.StreamAccessLogsMessage_Identifier{Node: node, LogName: xds.AccessLogName}
	}
	return m
}

// tcpEntry is a connection to ip:443 started at t0; peerSAN, when set, is the downstream
// peer certificate's URI SAN (what a gateway would report of its source).
func tcpEntry(t0 time.Time, ip string, ts *timestamppb.Timestamp, peerSAN ...string) *datav3.TCPAccessLogEntry {
	if ts == nil {
		ts = timestamppb.New(t0)
	}
	c := &datav3.AccessLogCommon{
		StartTime: ts, DownstreamRemoteAddress: sock("10.0.0.2", 40000),
		DownstreamLocalAddress: sock(ip, 443), UpstreamRemoteAddress: sock(ip, 443),
	}
	for _, s := range peerSAN {
		c.TlsProperties = &datav3.TLSProperties{PeerCertificateProperties: &datav3.TLSProperties_CertificateProperties{
			SubjectAltName: []*datav3.TLSProperties_CertificateProperties_SubjectAltName{{San: &datav3.TLSProperties_CertificateProperties_SubjectAltName_Uri{Uri: s}}},
		}}
	}
	return &datav3.TCPAccessLogEntry{CommonProperties: c, ConnectionProperties: &datav3.ConnectionProperties{ReceivedBytes: 1, SentBytes: 1}}
}

// sendALS sends msgs on one access-log stream and returns the stream's result.
func sendALS(t *testing.T, conn *grpc.ClientConn, md metadata.MD, msgs ...*alsv3.StreamAccessLogsMessage) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if md != nil {
		ctx = metadata.NewOutgoingContext(ctx, md)
	}
	s, err := alsv3.NewAccessLogServiceClient(conn).StreamAccessLogs(ctx)
	if err != nil {
		return err
	}
	for _, m := range msgs {
		if err := s.Send(m); err != nil {
			break // the server ended the stream: its status comes from CloseAndRecv
		}
	}
	_, err = s.CloseAndRecv()
	return err
}

// TestAdversaryAccessLogOwnServiceOnly: a sidecar's access-log stream names other services
// every way an entry can (a downstream peer SPIFFE ID, a later identifier of another node):
// every flow still lands in its own service, and pay/ledger's baseline is untouched (issue 10
// case 8: access-log entries only update the node's own service).
func TestAdversaryAccessLogOwnServiceOnly(t *testing.T) {
	now := time.Now().Truncate(time.Second)
	e := startMTLS(t, now)
	conn := e.dial(t, e.ca.ClientURI(t, "checkout", spiffe("shop", "checkout")))
	err := sendALS(t, conn, nil,
		tcpLogs(sidecar(t, "shop", "checkout"), tcpEntry(now, "192.0.2.10", nil, spiffe("pay", "ledger"))),
		tcpLogs(sidecar(t, "pay", "ledger"), tcpEntry(now, "192.0.2.11", nil)),
	)
	if err != nil {
		t.Fatal(err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.records) != 2 {
		t.Fatalf("%d flows, want 2", len(e.records))
	}
	for _, f := range e.records {
		if f.Service != "shop/checkout" {
			t.Errorf("flow to %s credited to %s", f.Destination.IP, f.Service)
		}
	}
	r, _ := e.model.Service("pay/ledger")
	if len(r.Destinations) != 1 {
		t.Errorf("pay/ledger destinations changed: %v", r.Destinations)
	}
}

// TestAdversaryAccessLogTimes: entries dated far ahead of the server clock or before the
// epoch are clamped to the server clock and counted, never taken as they come (issue 10
// case 6 via the access-log service).
func TestAdversaryAccessLogTimes(t *testing.T) {
	now := time.Now().Truncate(time.Second)
	e := startMTLS(t, now)
	conn := e.dial(t, e.ca.ClientURI(t, "checkout", spiffe("shop", "checkout")))
	for _, tc := range []struct {
		name    string
		ts      *timestamppb.Timestamp
		want    time.Time
		clamped string
	}{
		{"year 10000", &timestamppb.Timestamp{Seconds: 253402300800 + 86400}, now, accesslog.ClampFuture},
		{"25h ahead", timestamppb.New(now.Add(25 * time.Hour)), now, accesslog.ClampFuture},
		{"before the epoch", timestamppb.New(time.Date(1960, 1, 1, 0, 0, 0, 0, time.UTC)), now, accesslog.ClampBeforeEpoch},
		{"within the skew", timestamppb.New(now.Add(time.Minute)), now.Add(time.Minute), ""},
		{"an hour ago", timestamppb.New(now.Add(-time.Hour)), now.Add(-time.Hour), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := e.cp.Stats().AccessLog.Clamped[tc.clamped]
			e.mu.Lock()
			e.records = nil
			e.mu.Unlock()
			if err := sendALS(t, conn, nil, tcpLogs(sidecar(t, "shop", "checkout"), tcpEntry(now, "192.0.2.20", tc.ts))); err != nil {
				t.Fatal(err)
			}
			e.mu.Lock()
			defer e.mu.Unlock()
			if len(e.records) != 1 || !e.records[0].Time.Equal(tc.want) {
				t.Fatalf("flows %v, want one at %s", e.records, tc.want)
			}
			if after := e.cp.Stats().AccessLog.Clamped[tc.clamped]; tc.clamped != "" && after != before+1 {
				t.Errorf("clamped[%s] = %d, want %d", tc.clamped, after, before+1)
			}
		})
	}
	if r, _ := e.model.Service("shop/checkout"); r.LastSeen.After(now.Add(accesslog.DefaultMaxClockSkew)) {
		t.Errorf("the model's clock went to %s", r.LastSeen)
	}
}

// TestAdversaryTransport: clients that do not bring what the listener requires get nothing:
// plaintext to the TLS listener, TLS without a client certificate, a certificate from another
// CA, a certificate of another trust domain, and plaintext to a server wired without the
// control plane's credentials (issue 10 case 8: plaintext accepted while TLS was set).
func TestAdversaryTransport(t *testing.T) {
	e := startMTLS(t, time.Now())
	own := sidecar(t, "shop", "checkout")
	other := certtest.NewCA(t, "other CA")
	for _, tc := range []struct {
		name string
		conn *grpc.ClientConn
		code codes.Code
	}{
		{"plaintext", dialWith(t, e.addr, insecure.NewCredentials()), codes.Unavailable},
		{"no client certificate", e.dial(t, nil), codes.Unavailable},
		{"other CA", e.dial(t, other.ClientURI(t, "checkout", spiffe("shop", "checkout"))), codes.Unavailable},
		{"other trust domain", e.dial(t, e.ca.ClientURI(t, "checkout", "spiffe://evil.local/ns/shop/sa/checkout")), codes.Unauthenticated},
		{"no SPIFFE ID", e.dial(t, e.ca.Client(t, "checkout")), codes.Unauthenticated},
		{"own certificate", e.dial(t, e.ca.ClientURI(t, "checkout", spiffe("shop", "checkout"))), codes.OK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := adsListener(t, tc.conn, own)
			if status.Code(err) != tc.code {
				t.Errorf("ADS: %v, want %s", err, tc.code)
			}
			err = sendALS(t, tc.conn, nil, tcpLogs(own, tcpEntry(time.Now(), "192.0.2.30", nil)))
			if status.Code(err) != tc.code {
				t.Errorf("ALS: %v, want %s", err, tc.code)
			}
		})
	}

	t.Run("miswired plaintext server", func(t *testing.T) {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		g := grpc.NewServer()
		e.cp.Register(g)
		go g.Serve(lis)
		defer g.Stop()
		conn := dialWith(t, lis.Addr().String(), insecure.NewCredentials())
		if _, err := adsListener(t, conn, own); status.Code(err) != codes.Unauthenticated {
			t.Errorf("ADS: %v, want Unauthenticated", err)
		}
		if err := sendALS(t, conn, nil, tcpLogs(own, tcpEntry(time.Now(), "192.0.2.31", nil))); status.Code(err) != codes.Unauthenticated {
			t.Errorf("ALS: %v, want Unauthenticated", err)
		}
	})
}

// TestAdversaryExposedListener: without mutual TLS, the control plane refuses to listen
// beyond loopback, in Check and on the listener actually bound (issue 10 case 8: xDS and ALS
// listened on 0.0.0.0 without a word).
func TestAdversaryExposedListener(t *testing.T) {
	model, _ := flowmodel.New(flowmodel.Config{})
	cp, err := New(Config{XDS: xds.Config{PollInterval: time.Hour}}, model, nil)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Skipf("cannot listen on 0.0.0.0: %v", err)
	}
	defer lis.Close()
	g := cp.NewGRPCServer()
	defer g.Stop()
	if err := cp.Serve(g, lis); err == nil || !strings.Contains(err.Error(), "insecure-listen") {
		t.Fatalf("Serve on %s = %v, want a refusal", lis.Addr(), err)
	}
	loop, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer loop.Close()
	if err := cp.CheckListener(loop); err != nil {
		t.Errorf("loopback refused: %v", err)
	}
	ins, err := New(Config{InsecureListen: true, Listen: "0.0.0.0:18000"}, model, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := ins.CheckListener(lis); err != nil {
		t.Errorf("insecure-listen: %v", err)
	}
}

func TestConfigCheckListen(t *testing.T) {
	dir := t.TempDir()
	mtls := TLS{CertFile: dir + "/c", KeyFile: dir + "/k", ClientCAFile: dir + "/ca"}
	for _, tc := range []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"default", Config{}, true},
		{"loopback v6", Config{Listen: "[::1]:18000"}, true},
		{"localhost", Config{Listen: "localhost:18000"}, true},
		{"unix", Config{Listen: "unix:///run/meshguard/xds.sock"}, true},
		{"relative unix", Config{Listen: "unix://xds.sock"}, false},
		{"all interfaces", Config{Listen: "0.0.0.0:18000"}, false},
		{"empty host", Config{Listen: ":18000"}, false},
		{"a name", Config{Listen: "meshguard.example:18000"}, false},
		{"pod IP", Config{Listen: "10.0.0.5:18000"}, false},
		{"TLS without client CA", Config{Listen: "0.0.0.0:18000", TLS: TLS{CertFile: "c", KeyFile: "k"}}, false},
		{"mutual TLS", Config{Listen: "0.0.0.0:18000", TLS: mtls}, true},
		{"insecure-listen", Config{Listen: "0.0.0.0:18000", InsecureListen: true}, true},
		{"cert without key", Config{TLS: TLS{CertFile: "c"}}, false},
		{"client CA without cert", Config{TLS: TLS{ClientCAFile: "ca"}}, false},
		{"mutual TLS without trust domain", Config{TLS: mtls, XDS: xds.Config{TrustDomain: "-"}}, false},
		{"bad service account", Config{ServiceAccounts: map[string][]string{"shop": {"x"}}}, false},
		{"negative reload", Config{TLS: TLS{ReloadInterval: -time.Second}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := tc.cfg.Check(); (err == nil) != tc.ok {
				t.Errorf("Check = %v, want ok %v", err, tc.ok)
			}
		})
	}
}

// TestTLSTurnsOnAccessLogTLS: with TLS on the control plane, the Envoys it configures reach
// its access-log service over TLS (else their logs would be refused).
func TestTLSTurnsOnAccessLogTLS(t *testing.T) {
	c, err := Config{TLS: TLS{CertFile: "c", KeyFile: "k", ClientCAFile: "ca"}}.Check()
	if err != nil {
		t.Fatal(err)
	}
	if !c.XDS.UpstreamTLS.AccessLog || c.XDS.UpstreamTLS.CertificateSecret != xds.DefaultCertificateSecret {
		t.Errorf("upstream TLS = %+v", c.XDS.UpstreamTLS)
	}
	if c, _ := (Config{}).Check(); c.XDS.UpstreamTLS.AccessLog {
		t.Error("access-log TLS without TLS")
	}
}

// TestTLSReload: the listener's files are reloaded while it serves (here a client CA
// rotation): a client of the new CA gets in without a restart, as with extproc/certs.
func TestTLSReload(t *testing.T) {
	model, _ := flowmodel.New(flowmodel.Config{})
	oldCA, newCA := certtest.NewCA(t, "old CA"), certtest.NewCA(t, "new CA")
	files := certtest.NewFiles(t.TempDir())
	server := oldCA.Server(t, "meshguard")
	files.Write(t, server, oldCA)
	reloads := make(chan error, 16) // each attempt to load changed files
	cp, err := New(Config{
		XDS: xds.Config{PollInterval: time.Hour},
		TLS: TLS{CertFile: files.Cert, KeyFile: files.Key, ClientCAFile: files.ClientCA, ReloadInterval: 20 * time.Millisecond,
			OnReload: func(err error) { reloads <- err }},
	}, model, nil)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := cp.NewGRPCServer()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cp.Run(ctx) }()
	go cp.Serve(g, lis)
	t.Cleanup(func() { cancel(); <-done; g.Stop() })

	own := sidecar(t, "shop", "checkout")
	client := newCA.ClientURI(t, "checkout", spiffe("shop", "checkout"))
	dial := func() *grpc.ClientConn {
		return dialWith(t, lis.Addr().String(), credentials.NewTLS(&tls.Config{
			RootCAs: oldCA.Pool(), ServerName: "localhost", Certificates: []tls.Certificate{client.TLS(t)},
		}))
	}
	if _, err := adsListener(t, dial(), own); err == nil {
		t.Fatal("a client of a CA not yet trusted got in")
	}
	files.Write(t, server, newCA) // swapped in at once, as a Kubernetes secret volume does
	select {
	case err := <-reloads:
		if err != nil {
			t.Fatalf("reload of the new client CA: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the new client CA was not loaded within 10s")
	}
	if _, err := adsListener(t, dial(), own); err != nil {
		t.Fatalf("a client of the new CA refused once it is loaded: %v", err)
	}
}
