package controlplane

import (
	"context"
	"net"
	"slices"
	"strconv"
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
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/meshguard/meshguard/controlplane/xds"
	"github.com/meshguard/meshguard/flowmodel"
)

func sock(ip string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

// waitListener reads ADS responses, ACKing each, until a listener arrives.
func waitListener(t *testing.T, stream discoverygrpc.AggregatedDiscoveryService_StreamAggregatedResourcesClient, node *corev3.Node) (*listenerv3.Listener, uint64) {
	t.Helper()
	type result struct {
		r   *discoverygrpc.DiscoveryResponse
		err error
	}
	for {
		ch := make(chan result, 1)
		go func() { r, err := stream.Recv(); ch <- result{r, err} }()
		var r *discoverygrpc.DiscoveryResponse
		select {
		case res := <-ch:
			if res.err != nil {
				t.Fatal(res.err)
			}
			r = res.r
		case <-time.After(5 * time.Second):
			t.Fatal("no listener within 5s")
		}
		if err := stream.Send(&discoverygrpc.DiscoveryRequest{Node: node, TypeUrl: r.GetTypeUrl(), VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce()}); err != nil {
			t.Fatal(err)
		}
		if r.GetTypeUrl() != resource.ListenerType {
			continue
		}
		m, err := r.GetResources()[0].UnmarshalNew()
		if err != nil {
			t.Fatal(err)
		}
		l := m.(*listenerv3.Listener)
		if err := l.ValidateAll(); err != nil {
			t.Fatal(err)
		}
		v, err := strconv.ParseUint(r.GetVersionInfo(), 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		return l, v
	}
}

func chainRBAC(t *testing.T, l *listenerv3.Listener, name string) *netrbacv3.RBAC {
	t.Helper()
	fc := l.GetDefaultFilterChain()
	if name != "tcp" {
		fc = nil
		for _, c := range l.GetFilterChains() {
			if c.GetName() == name {
				fc = c
			}
		}
	}
	for _, f := range fc.GetFilters() {
		if f.GetName() == wellknown.RoleBasedAccessControl {
			m, err := f.GetTypedConfig().UnmarshalNew()
			if err != nil {
				t.Fatal(err)
			}
			if err := m.(*netrbacv3.RBAC).ValidateAll(); err != nil {
				t.Fatal(err)
			}
			return m.(*netrbacv3.RBAC)
		}
	}
	return nil
}

// collect gathers the destination IPs and SNI names a permission tree mentions.
func collect(p *rbacv3.Permission, ips, snis *[]string) {
	switch r := p.GetRule().(type) {
	case *rbacv3.Permission_AndRules:
		for _, q := range r.AndRules.GetRules() {
			collect(q, ips, snis)
		}
	case *rbacv3.Permission_OrRules:
		for _, q := range r.OrRules.GetRules() {
			collect(q, ips, snis)
		}
	case *rbacv3.Permission_DestinationIp:
		*ips = append(*ips, r.DestinationIp.GetAddressPrefix())
	case *rbacv3.Permission_RequestedServerName:
		*snis = append(*snis, r.RequestedServerName.GetExact())
	}
}

// TestLearnFromAccessLogThenEnforce is the whole story: a sidecar's TLS and TCP connections
// reach meshguard only as access logs; they are learned; the operator enforces; the sidecar
// receives an RBAC allowing exactly those destinations.
func TestLearnFromAccessLogThenEnforce(t *testing.T) {
	model, err := flowmodel.New(flowmodel.Config{})
	if err != nil {
		t.Fatal(err)
	}
	cp, err := New(Config{XDS: xds.Config{PollInterval: time.Hour}}, model, nil)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	cp.Register(srv)
	go srv.Serve(lis)
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- cp.Run(ctx) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		cancel()
		if err := <-runDone; err != nil {
			t.Errorf("Run: %v", err)
		}
		srv.GracefulStop() // Run ended the ADS streams, so this returns
	})

	md, _ := structpb.NewStruct(map[string]any{"NAMESPACE": "shop", "WORKLOAD_NAME": "checkout"})
	node := &corev3.Node{Id: "checkout-1", Metadata: md}
	ads, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := ads.Send(&discoverygrpc.DiscoveryRequest{Node: node, TypeUrl: resource.ListenerType}); err != nil {
		t.Fatal(err)
	}
	l1, v1 := waitListener(t, ads, node)
	if chainRBAC(t, l1, "tcp") != nil || chainRBAC(t, l1, "tls") != nil {
		t.Fatal("RBAC while learning")
	}

	// Envoy's access logs: a TLS connection and a MySQL connection.
	als, err := alsv3.NewAccessLogServiceClient(conn).StreamAccessLogs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 1, 2, 15, 4, 5, 0, time.UTC)
	entry := func(ip string, port uint32, sni string) *datav3.TCPAccessLogEntry {
		return &datav3.TCPAccessLogEntry{
			CommonProperties: &datav3.AccessLogCommon{
				StartTime: timestamppb.New(t0), DownstreamRemoteAddress: sock("10.0.0.2", 40000),
				DownstreamLocalAddress: sock(ip, port), UpstreamRemoteAddress: sock(ip, port),
				TlsProperties: &datav3.TLSProperties{TlsSniHostname: sni},
			},
			ConnectionProperties: &datav3.ConnectionProperties{ReceivedBytes: 100, SentBytes: 200},
		}
	}
	if err := als.Send(&alsv3.StreamAccessLogsMessage{
		Identifier: &alsv3.StreamAccessLogsMessage_Identifier{Node: node, LogName: xds.AccessLogName},
		LogEntries: &alsv3.StreamAccessLogsMessage_TcpLogs{TcpLogs: &alsv3.StreamAccessLogsMessage_TCPAccessLogEntries{
			LogEntry: []*datav3.TCPAccessLogEntry{entry("203.0.113.7", 443, "api.example.com"), entry("198.51.100.30", 3306, "")},
		}},
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := als.CloseAndRecv(); err != nil {
		t.Fatal(err)
	}

	if err := model.SetMode("shop/checkout", flowmodel.ModeChange{Mode: flowmodel.ModeEnforce, By: "test", At: t0}); err != nil {
		t.Fatal(err)
	}
	cp.Notify()
	l2, v2 := waitListener(t, ads, node)
	if v2 <= v1 {
		t.Errorf("version %d after the mode change, want > %d", v2, v1)
	}
	for _, tc := range []struct {
		chain     string
		ips, snis []string
	}{
		{"tcp", []string{"198.51.100.30", "203.0.113.7"}, nil},
		{"tls", []string{"198.51.100.30", "203.0.113.7"}, []string{"", "api.example.com"}},
		{"server_first_3306", []string{"198.51.100.30", "203.0.113.7"}, nil},
	} {
		r := chainRBAC(t, l2, tc.chain)
		if r.GetRules() == nil {
			t.Fatalf("%s: no enforcing RBAC", tc.chain)
		}
		var ips, snis []string
		for _, p := range r.GetRules().GetPolicies()["meshguard:enforce:shop/checkout"].GetPermissions() {
			collect(p, &ips, &snis)
		}
		slices.Sort(ips)
		snis = slices.Compact(slices.Sorted(slices.Values(snis)))
		if !slices.Equal(ips, tc.ips) || !slices.Equal(snis, tc.snis) {
			t.Errorf("%s: RBAC names IPs %v SNIs %v, want %v %v", tc.chain, ips, snis, tc.ips, tc.snis)
		}
	}
	st := cp.Stats()
	if st.AccessLog.Flows != 2 || st.XDS.Pushes != 2 {
		t.Errorf("stats = %+v", st)
	}
}

func TestNewErrors(t *testing.T) {
	model, _ := flowmodel.New(flowmodel.Config{})
	if _, err := New(Config{XDS: xds.Config{ExtProcAddress: "nope"}}, model, nil); err == nil {
		t.Error("bad config accepted")
	}
	if _, err := New(Config{}, nil, nil); err == nil {
		t.Error("nil model accepted")
	}
}
