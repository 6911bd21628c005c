package accesslog

import (
	"context"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	datav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshguard/meshguard/flowmodel"
)

var t0 = time.Date(2026, 1, 2, 15, 4, 5, 123000000, time.UTC)

func sock(ip string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

// tcpEntry is a TLS connection the app opened to 203.0.113.7:443 with SNI api.example.com.
func tcpEntry() *datav3.TCPAccessLogEntry {
	return &datav3.TCPAccessLogEntry{
		CommonProperties: &datav3.AccessLogCommon{
			StartTime:               timestamppb.New(t0),
			DownstreamRemoteAddress: sock("10.0.0.2", 41000),
			DownstreamLocalAddress:  sock("203.0.113.7", 443),
			UpstreamRemoteAddress:   sock("203.0.113.7", 443),
			TlsProperties:           &datav3.TLSProperties{TlsSniHostname: "API.example.com"},
			Duration:                durationpb.New(1500 * time.Millisecond),
			ResponseFlags:           &datav3.ResponseFlags{DownstreamConnectionTermination: true},
		},
		ConnectionProperties: &datav3.ConnectionProperties{ReceivedBytes: 52_000_000, SentBytes: 4_096},
	}
}

func httpEntry() *datav3.HTTPAccessLogEntry {
	return &datav3.HTTPAccessLogEntry{
		CommonProperties: &datav3.AccessLogCommon{
			StartTime:               timestamppb.New(t0.Add(time.Second)),
			DownstreamRemoteAddress: sock("10.0.0.2", 41002),
			DownstreamLocalAddress:  sock("198.51.100.20", 80),
			UpstreamRemoteAddress:   sock("198.51.100.20", 80),
		},
		Request: &datav3.HTTPRequestProperties{
			RequestMethod:    corev3.RequestMethod_POST,
			Authority:        "Pay.Example.com:80",
			Path:             "/v1/charges?x=1",
			RequestBodyBytes: 1234,
			RequestHeaders:   map[string]string{"content-type": "application/json"},
		},
		Response: &datav3.HTTPResponseProperties{ResponseCode: wrapperspb.UInt32(200), ResponseBodyBytes: 567},
	}
}

func TestTCPFlow(t *testing.T) {
	refused := tcpEntry()
	refused.CommonProperties.UpstreamRemoteAddress = nil
	refused.CommonProperties.DownstreamLocalAddress = sock("192.0.2.66", 8443)
	refused.CommonProperties.TlsProperties = nil
	refused.CommonProperties.ConnectionTerminationDetails = "rbac_access_denied_matched_policy[none]"
	refused.CommonProperties.ResponseFlags = nil
	refused.ConnectionProperties = &datav3.ConnectionProperties{ReceivedBytes: 517}
	intermediate := tcpEntry()
	intermediate.CommonProperties.IntermediateLogEntry = true
	noDest := tcpEntry()
	noDest.CommonProperties.UpstreamRemoteAddress = nil
	noDest.CommonProperties.DownstreamLocalAddress = nil
	noDest.CommonProperties.TlsProperties = nil
	mapped := tcpEntry()
	mapped.CommonProperties.UpstreamRemoteAddress = sock("::ffff:203.0.113.7", 443)

	tests := []struct {
		name   string
		src    Source
		e      *datav3.TCPAccessLogEntry
		want   flowmodel.Flow
		rec    Record
		reason string
	}{
		{name: "tls connection", src: Source{Service: "shop/checkout"}, e: tcpEntry(),
			want: flowmodel.Flow{Time: t0, Service: "shop/checkout", Source: FlowSource,
				Destination:  flowmodel.Destination{IP: netip.MustParseAddr("203.0.113.7"), Port: 443, Host: "api.example.com"},
				Upstream:     netip.MustParseAddrPort("203.0.113.7:443"),
				RequestBytes: 52_000_000, ResponseBytes: 4_096},
			rec: Record{Kind: KindTCP, Duration: 1500 * time.Millisecond, ResponseFlags: []string{"DC"}}},
		{name: "refused connection falls back to the original destination", src: Source{Service: "shop/checkout"}, e: refused,
			want: flowmodel.Flow{Time: t0, Service: "shop/checkout", Source: FlowSource,
				Destination:  flowmodel.Destination{IP: netip.MustParseAddr("192.0.2.66"), Port: 8443},
				RequestBytes: 517},
			rec: Record{Kind: KindTCP, Duration: 1500 * time.Millisecond, TerminationDetails: "rbac_access_denied_matched_policy[none]"}},
		{name: "ipv4-mapped upstream", src: Source{Service: "s"}, e: mapped,
			want: flowmodel.Flow{Time: t0, Service: "s", Source: FlowSource,
				Destination:  flowmodel.Destination{IP: netip.MustParseAddr("203.0.113.7"), Port: 443, Host: "api.example.com"},
				Upstream:     netip.MustParseAddrPort("203.0.113.7:443"),
				RequestBytes: 52_000_000, ResponseBytes: 4_096},
			rec: Record{Kind: KindTCP, Duration: 1500 * time.Millisecond, ResponseFlags: []string{"DC"}}},
		{name: "gateway: source by IP", src: Source{Gateway: true}, e: tcpEntry(),
			want: flowmodel.Flow{Time: t0, Service: "10.0.0.2", Source: FlowSource,
				Destination:  flowmodel.Destination{IP: netip.MustParseAddr("203.0.113.7"), Port: 443, Host: "api.example.com"},
				Upstream:     netip.MustParseAddrPort("203.0.113.7:443"),
				RequestBytes: 52_000_000, ResponseBytes: 4_096},
			rec: Record{Kind: KindTCP, Duration: 1500 * time.Millisecond, ResponseFlags: []string{"DC"}}},
		{name: "intermediate entry", src: Source{Service: "s"}, e: intermediate, reason: DropIntermediate},
		{name: "no destination", src: Source{Service: "s"}, e: noDest, reason: DropNoDestination},
		{name: "no service", src: Source{}, e: &datav3.TCPAccessLogEntry{CommonProperties: &datav3.AccessLogCommon{UpstreamRemoteAddress: sock("203.0.113.7", 443)}}, reason: DropNoService},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, rec, reason := TCPFlow(tt.src, tt.e)
			if reason != tt.reason {
				t.Fatalf("reason = %q, want %q", reason, tt.reason)
			}
			if reason != "" {
				return
			}
			if !reflect.DeepEqual(f, tt.want) {
				t.Errorf("flow =\n%+v\nwant\n%+v", f, tt.want)
			}
			if !reflect.DeepEqual(rec, tt.rec) {
				t.Errorf("record = %+v, want %+v", rec, tt.rec)
			}
		})
	}
}

func TestHTTPFlow(t *testing.T) {
	spiffe := httpEntry()
	spiffe.CommonProperties.TlsProperties = &datav3.TLSProperties{PeerCertificateProperties: &datav3.TLSProperties_CertificateProperties{
		SubjectAltName: []*datav3.TLSProperties_CertificateProperties_SubjectAltName{
			{San: &datav3.TLSProperties_CertificateProperties_SubjectAltName_Dns{Dns: "checkout.shop"}},
			{San: &datav3.TLSProperties_CertificateProperties_SubjectAltName_Uri{Uri: "spiffe://cluster.local/ns/shop/sa/checkout"}},
		},
	}}
	ipAuthority := httpEntry()
	ipAuthority.Request.Authority = "198.51.100.20"
	want := flowmodel.Flow{Time: t0.Add(time.Second), Service: "shop/checkout", Source: FlowSource,
		Destination: flowmodel.Destination{IP: netip.MustParseAddr("198.51.100.20"), Port: 80, Host: "pay.example.com"},
		Upstream:    netip.MustParseAddrPort("198.51.100.20:80"),
		Method:      "POST", Path: "/v1/charges?x=1", ContentType: "application/json",
		RequestBytes: 1234, ResponseBytes: 567, Status: 200}
	wantIP := want
	wantIP.Destination.Host = ""
	tests := []struct {
		name string
		src  Source
		e    *datav3.HTTPAccessLogEntry
		want flowmodel.Flow
	}{
		{"sidecar", Source{Service: "shop/checkout"}, httpEntry(), want},
		{"gateway: source by SPIFFE", Source{Gateway: true}, spiffe, want},
		{"IP authority has no host", Source{Service: "shop/checkout"}, ipAuthority, wantIP},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, rec, reason := HTTPFlow(tt.src, tt.e)
			if reason != "" {
				t.Fatalf("dropped: %s", reason)
			}
			if rec.Kind != KindHTTP {
				t.Errorf("kind = %v", rec.Kind)
			}
			if !reflect.DeepEqual(f, tt.want) {
				t.Errorf("flow =\n%+v\nwant\n%+v", f, tt.want)
			}
		})
	}
}

func TestResponseFlags(t *testing.T) {
	got := ResponseFlags(&datav3.ResponseFlags{UpstreamConnectionFailure: true, NoRouteFound: true,
		UnauthorizedDetails: &datav3.ResponseFlags_Unauthorized{}, DownstreamRemoteReset: true})
	if want := []string{"UF", "NR", "UAEX", "DRR"}; !slices.Equal(got, want) {
		t.Errorf("flags = %v, want %v", got, want)
	}
	if ResponseFlags(nil) != nil || ResponseFlags(&datav3.ResponseFlags{}) != nil {
		t.Error("no flags should be nil")
	}
}

// recorder is a hand-written Learner that keeps copies of what it is given.
type recorder struct {
	mu       sync.Mutex
	decided  []flowmodel.Flow
	observed []flowmodel.Flow
	verdict  flowmodel.Verdict
}

func (r *recorder) Decide(f *flowmodel.Flow) flowmodel.Verdict {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.decided = append(r.decided, *f)
	return r.verdict
}

func (r *recorder) Observe(f *flowmodel.Flow) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.observed = append(r.observed, *f)
}

func startALS(t *testing.T, l Learner, cfg Config) (*Receiver, alsv3.AccessLogServiceClient) {
	t.Helper()
	r, err := NewReceiver(l, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	r.Register(srv)
	go srv.Serve(lis)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(); srv.Stop() })
	return r, alsv3.NewAccessLogServiceClient(conn)
}

// sendLogs streams msgs as Envoy does and waits for the server to close the stream.
func sendLogs(t *testing.T, ctx context.Context, c alsv3.AccessLogServiceClient, msgs ...*alsv3.StreamAccessLogsMessage) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	stream, err := c.StreamAccessLogs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		if err := stream.Send(m); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := stream.CloseAndRecv(); err != nil {
		t.Fatal(err)
	}
}

func identifier(t *testing.T, id string, meta map[string]any) *alsv3.StreamAccessLogsMessage_Identifier {
	t.Helper()
	n := &corev3.Node{Id: id}
	if meta != nil {
		s, err := structpb.NewStruct(meta)
		if err != nil {
			t.Fatal(err)
		}
		n.Metadata = s
	}
	return &alsv3.StreamAccessLogsMessage_Identifier{Node: n, LogName: "meshguard"}
}

func tcpLogs(es ...*datav3.TCPAccessLogEntry) *alsv3.StreamAccessLogsMessage_TcpLogs {
	return &alsv3.StreamAccessLogsMessage_TcpLogs{TcpLogs: &alsv3.StreamAccessLogsMessage_TCPAccessLogEntries{LogEntry: es}}
}

func httpLogs(es ...*datav3.HTTPAccessLogEntry) *alsv3.StreamAccessLogsMessage_HttpLogs {
	return &alsv3.StreamAccessLogsMessage_HttpLogs{HttpLogs: &alsv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: es}}
}

func TestStreamOverGRPC(t *testing.T) {
	rec := &recorder{verdict: flowmodel.Verdict{Action: flowmodel.Block, Mode: flowmodel.ModeEnforce}}
	var mu sync.Mutex
	var records []Record
	r, client := startALS(t, rec, Config{OnRecord: func(r Record) {
		mu.Lock()
		r.Flow = nil // valid only during the call
		records = append(records, r)
		mu.Unlock()
	}})

	// A sidecar identified by its node: the first message carries the identifier.
	sendLogs(t, context.Background(), client,
		&alsv3.StreamAccessLogsMessage{
			Identifier: identifier(t, "sidecar~10.0.0.2~checkout-7d9f8c6b5-zx9wq.shop~shop.svc.cluster.local", map[string]any{"NAMESPACE": "shop", "WORKLOAD_NAME": "checkout"}),
			LogEntries: tcpLogs(tcpEntry()),
		},
		&alsv3.StreamAccessLogsMessage{LogEntries: httpLogs(httpEntry())},
	)
	// A stream named by gRPC metadata wins over its node.
	ctx := metadata.AppendToOutgoingContext(context.Background(), ServiceMetadataKey, "shop/cart")
	sendLogs(t, ctx, client, &alsv3.StreamAccessLogsMessage{Identifier: identifier(t, "x", map[string]any{"NAMESPACE": "a", "WORKLOAD_NAME": "b"}), LogEntries: tcpLogs(tcpEntry())})
	// A gateway: entries identified one by one; one without any identity is dropped.
	anon := tcpEntry()
	anon.CommonProperties.DownstreamRemoteAddress = nil
	sendLogs(t, context.Background(), client, &alsv3.StreamAccessLogsMessage{Identifier: identifier(t, "egress", map[string]any{"MESHGUARD_ROLE": "gateway", "NAMESPACE": "istio-system", "WORKLOAD_NAME": "egress"}), LogEntries: tcpLogs(tcpEntry(), anon)})

	rec.mu.Lock()
	defer rec.mu.Unlock()
	var services []string
	for _, f := range rec.decided {
		services = append(services, f.Service)
		if f.Destination.IP != netip.MustParseAddr("203.0.113.7") || f.Destination.Host != "api.example.com" || f.RequestBytes != 52_000_000 || f.Source != FlowSource || !f.Time.Equal(t0) {
			t.Errorf("decided flow %+v", f)
		}
	}
	if want := []string{"shop/checkout", "shop/cart", "10.0.0.2"}; !slices.Equal(services, want) {
		t.Errorf("decided services = %v, want %v", services, want)
	}
	if len(rec.observed) != 1 || rec.observed[0].Service != "shop/checkout" || rec.observed[0].Upstream != netip.MustParseAddrPort("198.51.100.20:80") || rec.observed[0].Method != "POST" {
		t.Errorf("observed = %+v", rec.observed)
	}
	st := r.Stats()
	if st.Streams != 3 || st.Entries[KindTCP] != 4 || st.Entries[KindHTTP] != 1 || st.Flows != 4 || st.Dropped[DropNoService] != 1 {
		t.Errorf("stats = %+v", st)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(records) != 4 || !records[0].Decided || records[0].Verdict.Action != flowmodel.Block || records[1].Decided || records[1].Kind != KindHTTP {
		t.Errorf("records = %+v", records)
	}
}

func TestDecideHTTP(t *testing.T) {
	rec := &recorder{}
	_, client := startALS(t, rec, Config{DecideHTTP: true})
	sendLogs(t, metadata.AppendToOutgoingContext(context.Background(), ServiceMetadataKey, "shop/checkout"), client,
		&alsv3.StreamAccessLogsMessage{LogEntries: httpLogs(httpEntry())})
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.decided) != 1 || len(rec.observed) != 0 {
		t.Errorf("decided %d observed %d, want 1 0", len(rec.decided), len(rec.observed))
	}
}

// TestLearnsTCPWithModel: TCP and TLS destinations reach the real model's baseline.
func TestLearnsTCPWithModel(t *testing.T) {
	model, err := flowmodel.New(flowmodel.Config{})
	if err != nil {
		t.Fatal(err)
	}
	_, client := startALS(t, model, Config{})
	plain := tcpEntry()
	plain.CommonProperties.TlsProperties = nil
	plain.CommonProperties.UpstreamRemoteAddress = sock("198.51.100.30", 3306)
	sendLogs(t, metadata.AppendToOutgoingContext(context.Background(), ServiceMetadataKey, "shop/checkout"), client,
		&alsv3.StreamAccessLogsMessage{LogEntries: tcpLogs(tcpEntry(), plain)})
	svc, ok := model.Service("shop/checkout")
	if !ok {
		t.Fatal("service not learned")
	}
	var got []string
	for _, d := range svc.Destinations {
		got = append(got, d.Destination)
		if d.Source != FlowSource {
			t.Errorf("%s source = %q", d.Destination, d.Source)
		}
	}
	if want := []string{"198.51.100.30:3306", "203.0.113.7:443", "api.example.com:443"}; !slices.Equal(got, want) {
		t.Errorf("destinations = %v, want %v", got, want)
	}
	if !svc.FirstSeen.Equal(t0) {
		t.Errorf("first seen %v, want the entry's start time %v", svc.FirstSeen, t0)
	}
}

func TestNewReceiverNilLearner(t *testing.T) {
	if _, err := NewReceiver(nil, Config{}, nil); err == nil {
		t.Error("nil learner accepted")
	}
}
