package xds

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	netrbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshguard/meshguard/flowmodel"
)

// fakeBaselines is a hand-written Baselines whose records the test sets. It counts the
// controller's polls: without ServiceLookup, every poll with a node calls Services once.
type fakeBaselines struct {
	mu     sync.Mutex
	recs   []flowmodel.ServiceRecord
	polls  int
	signal chan struct{} // a token when polls moved; never blocks the controller
}

func (f *fakeBaselines) Services() []flowmodel.ServiceRecord {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.polls++
	select {
	case f.signalLocked() <- struct{}{}:
	default:
	}
	return slices.Clone(f.recs)
}

func (f *fakeBaselines) signalLocked() chan struct{} {
	if f.signal == nil {
		f.signal = make(chan struct{}, 1)
	}
	return f.signal
}

// waitPolls waits until the controller has started n more polls. Polls run one after the
// other, so once 2 more have started, a whole poll has read what set stored before.
func (f *fakeBaselines) waitPolls(t *testing.T, n int) {
	t.Helper()
	f.mu.Lock()
	target, signal := f.polls+n, f.signalLocked()
	f.mu.Unlock()
	timeout := time.After(10 * time.Second)
	for {
		f.mu.Lock()
		got := f.polls
		f.mu.Unlock()
		if got >= target {
			return
		}
		select {
		case <-signal:
		case <-timeout:
			t.Fatalf("%d polls within 10s, want %d", n-(target-got), n)
		}
	}
}

// logWatch is a slog.Handler that keeps the messages logged, for a test to wait on one.
type logWatch struct {
	mu     sync.Mutex
	msgs   []string
	signal chan struct{} // a token when a message came; never blocks the logger
}

func newLogWatch() *logWatch { return &logWatch{signal: make(chan struct{}, 1)} }

func (w *logWatch) Enabled(context.Context, slog.Level) bool { return true }
func (w *logWatch) WithAttrs([]slog.Attr) slog.Handler       { return w }
func (w *logWatch) WithGroup(string) slog.Handler            { return w }

func (w *logWatch) Handle(_ context.Context, r slog.Record) error {
	w.mu.Lock()
	w.msgs = append(w.msgs, r.Message)
	w.mu.Unlock()
	select {
	case w.signal <- struct{}{}:
	default:
	}
	return nil
}

func (w *logWatch) count(msg string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, m := range w.msgs {
		if m == msg {
			n++
		}
	}
	return n
}

// wait waits until msg has been logged n times in all.
func (w *logWatch) wait(t *testing.T, msg string, n int) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for w.count(msg) < n {
		select {
		case <-w.signal:
		case <-timeout:
			t.Fatalf("%q logged %d times within 10s, want %d", msg, w.count(msg), n)
		}
	}
}

func (f *fakeBaselines) set(recs ...flowmodel.ServiceRecord) {
	f.mu.Lock()
	f.recs = recs
	f.mu.Unlock()
}

// startXDS serves the controller's ADS on a loopback port and runs the controller.
func startXDS(t *testing.T, cfg Config, base Baselines) (*Controller, *grpc.ClientConn) {
	t.Helper()
	return startXDSLogging(t, cfg, base, nil)
}

// startXDSLogging is startXDS with the controller logging to log (nil: nowhere).
func startXDSLogging(t *testing.T, cfg Config, base Baselines, log *slog.Logger) (*Controller, *grpc.ClientConn) {
	t.Helper()
	c, err := NewController(cfg, base, log)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	c.Register(srv)
	go srv.Serve(lis)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		srv.Stop()
	})
	return c, conn
}

// adsClient speaks SotW ADS the way Envoy does: it subscribes, then ACKs every response.
type adsClient struct {
	t      *testing.T
	stream discoverygrpc.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	node   *corev3.Node
	resps  chan *discoverygrpc.DiscoveryResponse
	errs   chan error
	// close ends the stream (as an Envoy that goes away).
	close context.CancelFunc
}

func newADSClient(t *testing.T, conn *grpc.ClientConn, node *corev3.Node) *adsClient {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stream, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a := &adsClient{t: t, stream: stream, node: node, resps: make(chan *discoverygrpc.DiscoveryResponse, 16), errs: make(chan error, 1), close: cancel}
	go func() {
		for {
			r, err := stream.Recv()
			if err != nil {
				a.errs <- err
				return
			}
			a.resps <- r
		}
	}()
	return a
}

func (a *adsClient) send(typeURL, version, nonce string, names ...string) {
	a.t.Helper()
	if err := a.stream.Send(&discoverygrpc.DiscoveryRequest{
		Node: a.node, TypeUrl: typeURL, VersionInfo: version, ResponseNonce: nonce, ResourceNames: names,
	}); err != nil {
		a.t.Fatalf("send %s: %v", typeURL, err)
	}
}

// next returns the next response of typeURL, ACKing every response it reads.
func (a *adsClient) next(typeURL string, names ...string) *discoverygrpc.DiscoveryResponse {
	a.t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case r := <-a.resps:
			if r.GetTypeUrl() == typeURL {
				a.send(r.GetTypeUrl(), r.GetVersionInfo(), r.GetNonce(), names...)
				return r
			}
			var keep []string
			if r.GetTypeUrl() == resource.RouteType {
				keep = []string{RouteName}
			}
			a.send(r.GetTypeUrl(), r.GetVersionInfo(), r.GetNonce(), keep...)
		case err := <-a.errs:
			a.t.Fatalf("stream: %v", err)
		case <-timeout:
			a.t.Fatalf("no %s response within 5s", typeURL)
		}
	}
}

// quiet reports whether no response of typeURL arrives within d (ACKing others).
func (a *adsClient) quiet(typeURL string, d time.Duration) bool {
	a.t.Helper()
	timeout := time.After(d)
	for {
		select {
		case r := <-a.resps:
			a.send(r.GetTypeUrl(), r.GetVersionInfo(), r.GetNonce())
			if r.GetTypeUrl() == typeURL {
				return false
			}
		case <-timeout:
			return true
		}
	}
}

func unpack[T proto.Message](t *testing.T, r *discoverygrpc.DiscoveryResponse) []T {
	t.Helper()
	var out []T
	for _, a := range r.GetResources() {
		m, err := a.UnmarshalNew()
		if err != nil {
			t.Fatal(err)
		}
		validateDeep(t, m)
		out = append(out, m.(T))
	}
	return out
}

func versionOf(t *testing.T, r *discoverygrpc.DiscoveryResponse) uint64 {
	t.Helper()
	v, err := strconv.ParseUint(r.GetVersionInfo(), 10, 64)
	if err != nil {
		t.Fatalf("version %q is not a number", r.GetVersionInfo())
	}
	return v
}

func sidecarNode(t *testing.T) *corev3.Node {
	t.Helper()
	md, err := structpb.NewStruct(map[string]any{"NAMESPACE": "shop", "WORKLOAD_NAME": "checkout"})
	if err != nil {
		t.Fatal(err)
	}
	return &corev3.Node{Id: "sidecar~10.0.0.2~checkout-7d9f8c6b5-zx9wq.shop~shop.svc.cluster.local", Metadata: md}
}

func listenerRBAC(t *testing.T, l *listenerv3.Listener, chainName string) *netrbacv3.RBAC {
	t.Helper()
	return rbacOf(t, Resources{Listeners: []*listenerv3.Listener{l}}, chainName)
}

// TestADSModeChange is the end-to-end path with the real model: a sidecar learns over
// ADS, its service is put in enforce, and the sidecar receives an RBAC with what it learned,
// at a higher version.
func TestADSModeChange(t *testing.T) {
	model, err := flowmodel.New(flowmodel.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 1, 2, 15, 4, 5, 0, time.UTC)
	for i, d := range []string{"203.0.113.7:443", "198.51.100.20:5432"} {
		ap := netip.MustParseAddrPort(d)
		model.Decide(&flowmodel.Flow{Time: t0.Add(time.Duration(i) * time.Second), Service: "shop/checkout",
			Destination: flowmodel.Destination{IP: ap.Addr(), Port: ap.Port(), Host: "api.example.com"}, Source: "test"})
	}
	logs := newLogWatch()
	c, cc := startXDSLogging(t, Config{PollInterval: time.Hour, FirstVersion: 100}, model, slog.New(logs))
	ads := newADSClient(t, cc, sidecarNode(t))

	ads.send(resource.ClusterType, "", "")
	cr := ads.next(resource.ClusterType)
	clusters := unpack[*clusterv3.Cluster](t, cr)
	var names []string
	for _, cl := range clusters {
		names = append(names, cl.GetName())
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{ClusterAccessLog, ClusterExtProc, ClusterOriginalDst}) {
		t.Fatalf("clusters = %v", names)
	}
	v1 := versionOf(t, cr)
	if v1 < 100 {
		t.Errorf("first version %d, want >= 100", v1)
	}

	ads.send(resource.ListenerType, "", "")
	lr := ads.next(resource.ListenerType)
	ls := unpack[*listenerv3.Listener](t, lr)
	if len(ls) != 1 || ls[0].GetName() != ListenerName {
		t.Fatalf("listeners = %v", ls)
	}
	if r := listenerRBAC(t, ls[0], "tcp"); r != nil {
		t.Fatalf("learning service has an RBAC: %v", r)
	}
	ads.send(resource.RouteType, "", "", RouteName)
	rr := ads.next(resource.RouteType, RouteName)
	if routes := unpack[*routev3.RouteConfiguration](t, rr); len(routes) != 1 || routes[0].GetName() != RouteName {
		t.Fatalf("routes = %v", routes)
	}

	// Nothing changes: nothing is pushed.
	c.Notify()
	if !ads.quiet(resource.ListenerType, 200*time.Millisecond) {
		t.Error("listener pushed again without a change")
	}

	if err := model.SetMode("shop/checkout", flowmodel.ModeChange{Mode: flowmodel.ModeEnforce, By: "test", At: t0}); err != nil {
		t.Fatal(err)
	}
	c.Notify()
	lr2 := ads.next(resource.ListenerType)
	if v2 := versionOf(t, lr2); v2 <= v1 {
		t.Errorf("version after the mode change %d, want > %d", v2, v1)
	}
	l2 := unpack[*listenerv3.Listener](t, lr2)[0]
	res := Resources{Listeners: []*listenerv3.Listener{l2}}
	for _, tc := range []struct {
		chain string
		c     conn
		want  bool
	}{
		{"tcp", tcpTo("203.0.113.7:443"), true},
		{"tcp", tcpTo("198.51.100.20:5432"), true},
		{"tcp", tcpTo("198.51.100.21:5432"), false},
		{"tls", tlsTo("203.0.113.7:443", "api.example.com"), true},
		{"tls", tlsTo("203.0.113.7:443", "exfil.example.org"), false},
		{"tls", tlsTo("192.0.2.66:443", "api.example.com"), false},
	} {
		r := rbacOf(t, res, tc.chain)
		if r.GetRules() == nil {
			t.Fatalf("%s: no enforcing RBAC after the mode change", tc.chain)
		}
		if got := allowed(t, r.GetRules(), tc.c); got != tc.want {
			t.Errorf("%s allowed(%v %q) = %v, want %v", tc.chain, tc.c.dst, tc.c.sni, got, tc.want)
		}
	}
	st := c.Stats()
	if st.Pushes != 2 || st.Nodes != 1 || st.Version != versionOf(t, lr2) || st.Nacks != 0 {
		t.Errorf("stats = %+v", st)
	}

	// Envoy rejecting a config is counted.
	ads.stream.Send(&discoverygrpc.DiscoveryRequest{Node: ads.node, TypeUrl: resource.ListenerType,
		VersionInfo: strconv.FormatUint(v1, 10), ResponseNonce: lr2.GetNonce(), ErrorDetail: statusMsg("bad listener")})
	logs.wait(t, "xds: envoy rejected configuration", 1) // logged after it is counted
	if c.Stats().Nacks != 1 {
		t.Errorf("nacks = %d, want 1", c.Stats().Nacks)
	}
}

// TestAdversaryEmptyAllowListDeniesAll covers a careful attacker's trick (issue 10, fail closed
// as in case 1): a service in enforce with no learned destination IP must not be open at L4.
// An enforce service whose baseline empties is pushed a deny-all (never kept on stale rules,
// never left without RBAC), and a new sidecar of an enforce service with nothing learned gets a
// deny-all on its first push.
func TestAdversaryEmptyAllowListDeniesAll(t *testing.T) {
	base := &fakeBaselines{}
	base.set(flowmodel.ServiceRecord{Name: "shop/checkout", Mode: flowmodel.ModeEnforce, Destinations: dests("203.0.113.7:443")})
	_, cc := startXDS(t, Config{PollInterval: 20 * time.Millisecond}, base)
	ads := newADSClient(t, cc, sidecarNode(t))
	ads.send(resource.ListenerType, "", "")
	l := unpack[*listenerv3.Listener](t, ads.next(resource.ListenerType))[0]
	if r := listenerRBAC(t, l, "tcp").GetRules(); r == nil || !allowed(t, r, tcpTo("203.0.113.7:443")) {
		t.Fatal("enforce service without an enforcing RBAC allowing what it learned")
	}

	base.set(flowmodel.ServiceRecord{Name: "shop/checkout", Mode: flowmodel.ModeEnforce})
	l = unpack[*listenerv3.Listener](t, ads.next(resource.ListenerType))[0]
	for _, p := range []string{"tcp", "tls"} {
		r := listenerRBAC(t, l, p).GetRules()
		if r == nil || allowed(t, r, tcpTo("203.0.113.7:443")) || allowed(t, r, tlsTo("203.0.113.7:443", "")) {
			t.Errorf("%s: emptied enforce baseline pushed %v, want a deny-all", p, r)
		}
	}

	// The baseline comes back: the RBAC follows it.
	base.set(flowmodel.ServiceRecord{Name: "shop/checkout", Mode: flowmodel.ModeEnforce, Destinations: dests("203.0.113.8:443")})
	l = unpack[*listenerv3.Listener](t, ads.next(resource.ListenerType))[0]
	r := listenerRBAC(t, l, "tcp").GetRules()
	if !allowed(t, r, tcpTo("203.0.113.8:443")) || allowed(t, r, tcpTo("203.0.113.7:443")) {
		t.Error("RBAC does not follow the new baseline")
	}

	// A new service in enforce with nothing learned: denied everything from the first push.
	base.set(flowmodel.ServiceRecord{Name: "shop/new", Mode: flowmodel.ModeEnforce})
	other := newADSClient(t, cc, svcNode(t, "shop", "new", "new-1"))
	other.send(resource.ListenerType, "", "")
	l = unpack[*listenerv3.Listener](t, other.next(resource.ListenerType))[0]
	for _, p := range []string{"tcp", "tls"} {
		r := listenerRBAC(t, l, p).GetRules()
		if r == nil || allowed(t, r, tcpTo("203.0.113.7:443")) || allowed(t, r, tlsTo("198.51.100.1:443", "api.example.com")) {
			t.Errorf("%s: new enforce service with nothing learned got %v, want a deny-all", p, r)
		}
	}
}

// svcNode is a sidecar node of service ns/name.
func svcNode(t *testing.T, ns, name, id string) *corev3.Node {
	t.Helper()
	md, err := structpb.NewStruct(map[string]any{"NAMESPACE": ns, "WORKLOAD_NAME": name})
	if err != nil {
		t.Fatal(err)
	}
	return &corev3.Node{Id: id, Metadata: md}
}

// refused waits for the stream to end with code, failing if it is served a response first.
func (a *adsClient) refused(code codes.Code) {
	a.t.Helper()
	select {
	case r := <-a.resps:
		a.t.Fatalf("served %s version %s, want the stream refused with %v", r.GetTypeUrl(), r.GetVersionInfo(), code)
	case err := <-a.errs:
		if status.Code(err) != code {
			a.t.Fatalf("stream ended with %v, want %v", err, code)
		}
	case <-time.After(5 * time.Second):
		a.t.Fatalf("stream neither served nor refused within 5s")
	}
}

// waitFor polls cond until it holds, for at most 10s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 30s", what)
		}
		time.Sleep(5 * time.Millisecond) // polling with a deadline, not a synchronisation
	}
}

// TestAdversaryNodeKeyExhaustion covers issue 10 case 8 (xDS open to forged node claims) and
// case 11 (limits that open the door): a client that may claim any node fills
// Config.MaxNodeKeys with forged services. Keys of closed streams are dropped with their
// snapshots, so a real service connecting afterwards still gets its own RBAC; while the
// forged streams are held open at the cap, a new node is refused (ResourceExhausted,
// counted, logged once), never served a snapshot without RBAC.
func TestAdversaryNodeKeyExhaustion(t *testing.T) {
	const maxKeys = 6
	base := &fakeBaselines{}
	base.set(
		flowmodel.ServiceRecord{Name: "shop/checkout", Mode: flowmodel.ModeEnforce, Destinations: dests("203.0.113.7:443")},
		flowmodel.ServiceRecord{Name: "shop/late", Mode: flowmodel.ModeEnforce, Destinations: dests("198.51.100.9:443")},
	)
	logs := newLogWatch()
	c, cc := startXDSLogging(t, Config{PollInterval: 20 * time.Millisecond, MaxNodeKeys: maxKeys}, base, slog.New(logs))
	const capMsg = "xds: node keys at their cap: refusing streams of new services until a key frees"

	forge := func(i int) *adsClient {
		t.Helper()
		a := newADSClient(t, cc, svcNode(t, "forged", "svc-"+strconv.Itoa(i), "forged-"+strconv.Itoa(i)))
		a.send(resource.ListenerType, "", "")
		a.next(resource.ListenerType)
		return a
	}
	checkOwnRBAC := func(a *adsClient, allow, deny string) {
		t.Helper()
		a.send(resource.ListenerType, "", "")
		l := unpack[*listenerv3.Listener](t, a.next(resource.ListenerType))[0]
		for _, p := range []string{"tcp", "tls"} {
			r := listenerRBAC(t, l, p).GetRules()
			if r == nil || !allowed(t, r, tcpTo(allow)) || allowed(t, r, tcpTo(deny)) {
				t.Fatalf("%s: %s served %v, want its own enforcing RBAC", p, a.node.GetId(), r)
			}
		}
	}

	// Fill every key with forged claims, then go away.
	var forged []*adsClient
	for i := range maxKeys {
		forged = append(forged, forge(i))
	}
	if n := c.Stats().Nodes; n != maxKeys {
		t.Fatalf("nodes = %d with %d forged streams open", n, maxKeys)
	}
	for _, a := range forged {
		a.close()
	}
	waitFor(t, "forged keys dropped", func() bool { return c.Stats().Nodes == 0 })
	waitFor(t, "forged snapshots cleared", func() bool {
		for i := range maxKeys {
			if _, err := c.Cache().GetSnapshot(keySidecarPfx + "forged/svc-" + strconv.Itoa(i)); err == nil {
				return false
			}
		}
		return true
	})

	// The real service still gets its own RBAC.
	real := newADSClient(t, cc, sidecarNode(t))
	checkOwnRBAC(real, "203.0.113.7:443", "203.0.113.8:443")

	// Now hold the forged streams open at the cap: a new node is refused, never served.
	forged = forged[:0]
	for i := range maxKeys - 1 {
		forged = append(forged, forge(100+i))
	}
	refused := c.Stats().Refused
	late := newADSClient(t, cc, svcNode(t, "shop", "late", "late-1"))
	late.send(resource.ListenerType, "", "")
	late.refused(codes.ResourceExhausted)
	late2 := newADSClient(t, cc, svcNode(t, "shop", "late", "late-2"))
	late2.send(resource.ListenerType, "", "")
	late2.refused(codes.ResourceExhausted)
	// The same on the delta protocol.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	delta, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := delta.Send(&discoverygrpc.DeltaDiscoveryRequest{Node: svcNode(t, "shop", "late", "late-delta"), TypeUrl: resource.ListenerType}); err != nil {
		t.Fatal(err)
	}
	deltaErr := make(chan error, 1)
	go func() {
		r, err := delta.Recv()
		if err == nil {
			err = fmt.Errorf("served %d resources at version %q", len(r.GetResources()), r.GetSystemVersionInfo())
		}
		deltaErr <- err
	}()
	select {
	case err := <-deltaErr:
		if status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("delta stream at the cap: %v, want ResourceExhausted", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("delta stream neither served nor refused within 5s")
	}
	if got := c.Stats().Refused - refused; got != 3 {
		t.Errorf("refused = %d more, want 3", got)
	}
	if n := logs.count(capMsg); n != 1 {
		t.Errorf("cap warning logged %d times, want once", n)
	}
	// Another sidecar of a service that has a key shares it: not refused.
	checkOwnRBAC(newADSClient(t, cc, svcNode(t, "shop", "checkout", "checkout-2")), "203.0.113.7:443", "203.0.113.8:443")

	// One forged stream goes away: its key frees and the new service gets its own RBAC.
	forged[0].close()
	waitFor(t, "a key freed", func() bool { return c.Stats().Nodes < maxKeys })
	checkOwnRBAC(newADSClient(t, cc, svcNode(t, "shop", "late", "late-3")), "198.51.100.9:443", "203.0.113.7:443")
}

// TestDeltaGateway: a gateway on the delta protocol gets per-source RBAC.
func TestDeltaGateway(t *testing.T) {
	base := &fakeBaselines{}
	base.set(
		flowmodel.ServiceRecord{Name: "shop/checkout", Mode: flowmodel.ModeEnforce, Destinations: dests("203.0.113.7:443")},
		flowmodel.ServiceRecord{Name: "shop/cart", Mode: flowmodel.ModeLearn},
	)
	_, cc := startXDS(t, Config{PollInterval: time.Hour}, base)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	md, _ := structpb.NewStruct(map[string]any{"MESHGUARD_ROLE": "gateway"})
	if err := stream.Send(&discoverygrpc.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "egress-1", Metadata: md}, TypeUrl: resource.ListenerType}); err != nil {
		t.Fatal(err)
	}
	type result struct {
		r   *discoverygrpc.DeltaDiscoveryResponse
		err error
	}
	got := make(chan result, 1)
	go func() { r, err := stream.Recv(); got <- result{r, err} }()
	var resp *discoverygrpc.DeltaDiscoveryResponse
	select {
	case res := <-got:
		if res.err != nil {
			t.Fatal(res.err)
		}
		resp = res.r
	case <-time.After(5 * time.Second):
		t.Fatal("no delta response")
	}
	if len(resp.GetResources()) != 1 {
		t.Fatalf("%d resources", len(resp.GetResources()))
	}
	m, err := resp.GetResources()[0].GetResource().UnmarshalNew()
	if err != nil {
		t.Fatal(err)
	}
	validateDeep(t, m)
	res := Resources{Listeners: []*listenerv3.Listener{m.(*listenerv3.Listener)}}
	rules := rbacOf(t, res, "tcp").GetRules()
	checkout := conn2("spiffe://cluster.local/ns/shop/sa/checkout")
	if !allowed(t, rules, checkout("203.0.113.7:443")) || allowed(t, rules, checkout("203.0.113.9:443")) {
		t.Error("gateway RBAC does not enforce checkout's baseline")
	}
	if !allowed(t, rules, conn2("spiffe://cluster.local/ns/shop/sa/cart")("203.0.113.9:443")) {
		t.Error("gateway RBAC blocks a learning source")
	}
}

func conn2(peer string) func(string) conn {
	return func(dst string) conn { c := tcpTo(dst); c.peer = peer; return c }
}

func TestNewControllerErrors(t *testing.T) {
	if _, err := NewController(Config{ListenerAddress: "x"}, &fakeBaselines{}, nil); err == nil {
		t.Error("bad config accepted")
	}
	if _, err := NewController(Config{}, nil, nil); err == nil {
		t.Error("nil baselines accepted")
	}
}

func statusMsg(msg string) *rpcstatus.Status { return &rpcstatus.Status{Code: 3, Message: msg} }

// TestLearningChangesBuildNothing: a learning baseline grows at every poll, but nothing a
// node is told depends on it, so the controller neither builds nor pushes again.
func TestLearningChangesBuildNothing(t *testing.T) {
	base := &fakeBaselines{}
	base.set(flowmodel.ServiceRecord{Name: "shop/checkout", Mode: flowmodel.ModeLearn, Destinations: dests("203.0.113.1:443")})
	c, cc := startXDS(t, Config{PollInterval: 10 * time.Millisecond}, base)
	ads := newADSClient(t, cc, sidecarNode(t))
	ads.send(resource.ListenerType, "", "")
	ads.next(resource.ListenerType)
	for i := range 20 {
		base.set(flowmodel.ServiceRecord{Name: "shop/checkout", Mode: flowmodel.ModeLearn, Destinations: dests("203.0.113." + strconv.Itoa(i+2) + ":443")})
		base.waitPolls(t, 2) // a whole poll has seen this change
	}
	if st := c.Stats(); st.Builds != 1 || st.Pushes != 1 {
		t.Errorf("stats = %+v, want one build and one push", st)
	}
	base.set(flowmodel.ServiceRecord{Name: "shop/checkout", Mode: flowmodel.ModeMonitor, Destinations: dests("203.0.113.1:443")})
	l := unpack[*listenerv3.Listener](t, ads.next(resource.ListenerType))[0]
	if r := listenerRBAC(t, l, "tcp"); r.GetShadowRules() == nil || r.GetRules() != nil {
		t.Errorf("monitor RBAC = %v, want shadow rules only", r)
	}
}
