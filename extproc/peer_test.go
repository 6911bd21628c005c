package extproc

import (
	"context"
	"errors"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/meshguard/meshguard/extproc/envoysim"
	"github.com/meshguard/meshguard/flowmodel"
	"google.golang.org/grpc/peer"
)

// modeDecider is a fakeDecider whose services are all in one mode.
type modeDecider struct {
	fakeDecider
	mode flowmodel.Mode
}

func (d *modeDecider) Mode(string) (flowmodel.Mode, bool) { return d.mode, true }

// recordingAuthorizer refuses every service but allowed, and records what it was asked.
type recordingAuthorizer struct {
	allowed string
	mu      sync.Mutex
	calls   []Identity
	noPeer  int // calls whose context carried no connection peer
}

func (a *recordingAuthorizer) authorize(ctx context.Context, id Identity) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls = append(a.calls, id)
	if _, ok := peer.FromContext(ctx); !ok {
		a.noPeer++
	}
	if id.Service != a.allowed {
		return errors.New("not this client's service")
	}
	return nil
}

func (a *recordingAuthorizer) asked() ([]Identity, int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.calls), a.noPeer
}

// TestAdversaryForgedStreamIdentity covers issue 10 cases 8 and 11 on ext_proc: a pod that
// reaches meshguard's ext_proc port opens its own stream and names another service (by
// x-meshguard-service, by node attributes, or by a forged downstream certificate) with a
// destination of its choosing, to teach that service's baseline in learn or count probation
// in monitor. When the authorizer refuses the client, the request is blocked as
// identity_mismatch in every mode (alerted in observability mode, where nothing can be
// blocked), the decider is never asked and nothing is observed: nothing is learned.
func TestAdversaryForgedStreamIdentity(t *testing.T) {
	victim := "shop/payments"
	forged := func(how string) envoysim.Request {
		r := sidecarRequest("203.0.113.77")
		r.Attributes = map[string]string{AttrDestination: "203.0.113.77:443"}
		switch how {
		case "metadata":
			r.Metadata = map[string]string{ServiceMetadataKey: victim}
		case "node":
			r.Attributes[AttrNodeNamespace], r.Attributes[AttrNodeWorkload] = "shop", "payments"
		case "peer-san":
			r.Attributes[AttrPeerURISAN] = "spiffe://cluster.local/ns/shop/sa/payments"
		}
		r.ResponseAttributes = map[string]string{AttrUpstreamAddress: "203.0.113.77:443"}
		return r
	}
	for _, mode := range []flowmodel.Mode{flowmodel.ModeLearn, flowmodel.ModeMonitor, flowmodel.ModeEnforce, flowmodel.ModeQuarantine} {
		for _, how := range []string{"metadata", "node", "peer-san"} {
			for _, observability := range []bool{false, true} {
				name := mode.String() + "/" + how
				if observability {
					name += "/observability"
				}
				t.Run(name, func(t *testing.T) {
					d := &modeDecider{mode: mode}
					auth := &recordingAuthorizer{allowed: "shop/checkout"}
					metrics, reg := newMetrics(t)
					c := startServer(t, d, Config{Logger: quietLogger, Metrics: metrics, AuthorizePeer: auth.authorize})
					r := forged(how)
					r.ObservabilityMode = observability
					want := "block"
					if observability {
						want = "alert"
						if _, err := envoysim.Do(context.Background(), c, r, 5*time.Second); err != nil {
							t.Fatal(err)
						}
						waitFor(t, 10*time.Second, func() bool {
							return metricValue(t, reg, "meshguard_decision_reasons_total", "verdict", want, "reason", "identity_mismatch") == 1
						}, "the observability-mode decision")
					} else {
						got, body := verdictOf(t, c, r)
						if got != want || !slices.Contains(body.Reasons, "identity_mismatch") {
							t.Fatalf("verdict %s %v, want %s identity_mismatch", got, body.Reasons, want)
						}
					}
					calls, noPeer := auth.asked()
					if len(calls) != 1 || calls[0] != (Identity{Service: victim, Source: IdentitySource(how)}) || noPeer != 0 {
						t.Fatalf("authorizer asked %v (%d without a peer), want once for %s from %s with the peer", calls, noPeer, victim, how)
					}
					if decided, observed := d.flows(); len(decided) != 0 || len(observed) != 0 {
						t.Fatalf("decider asked %d times, observed %d flows: a refused identity taught the model", len(decided), len(observed))
					}
				})
			}
		}
	}
}

// TestPeerAuthorizedOncePerStream: an identity the authorizer accepts is decided as usual,
// and the authorizer is asked once per stream and identity, not once per request_headers.
func TestPeerAuthorizedOncePerStream(t *testing.T) {
	d := &fakeDecider{verdict: blockNew}
	auth := &recordingAuthorizer{allowed: "shop/checkout"}
	c := startServer(t, d, Config{Logger: quietLogger, AuthorizePeer: auth.authorize})
	if got, _ := verdictOf(t, c, sidecarRequest("api.example.com")); got != "allow" {
		t.Fatalf("own identity: %s, want allow", got)
	}
	msg := func(r envoysim.Request) *extprocv3.ProcessingRequest {
		return &extprocv3.ProcessingRequest{
			Request:    &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{Headers: envoysim.HeaderMap(r.Headers)}},
			Attributes: envoysim.Attributes(r.Attributes),
		}
	}
	resps, err := rawStream(t, c, msg(sidecarRequest("api.example.com")), msg(sidecarRequest("evil.example")))
	if err != nil {
		t.Fatal(err)
	}
	if len(resps) != 2 || resps[0].GetRequestHeaders() == nil || resps[1].GetImmediateResponse() == nil {
		t.Fatalf("responses %v, want CONTINUE then the decider's 403", resps)
	}
	if calls, _ := auth.asked(); len(calls) != 2 {
		t.Fatalf("authorizer asked %d times for 2 streams, want 2: %v", len(calls), calls)
	}
	if decided, _ := d.flows(); len(decided) != 3 {
		t.Fatalf("decided %d requests, want 3", len(decided))
	}
}

// TestAdversaryHeldAllowedStreamsDoNotStarve covers issue 10 case 7's second half: a
// service that keeps allowed requests open (its upstream, or the workload itself, holds the
// response headers back) holds no max-streams slot once each request is decided, so with
// max-streams 2 and two such requests open, another service's request is still decided; and
// the held streams are still served when their responses come.
func TestAdversaryHeldAllowedStreamsDoNotStarve(t *testing.T) {
	metrics, reg := newMetrics(t)
	d := &fakeDecider{verdict: blockNew}
	c := startServer(t, d, Config{Logger: quietLogger, MaxStreams: 2, Metrics: metrics})
	attacker := sidecarRequest("api.example.com")
	attacker.Attributes[AttrNodeNamespace], attacker.Attributes[AttrNodeWorkload] = "shop", "greedy"
	held := make([]extprocv3.ExternalProcessor_ProcessClient, 3)
	for i := range held {
		held[i] = openDecidingStream(t, c, attacker)
		if r, err := held[i].Recv(); err != nil || r.GetRequestHeaders() == nil {
			t.Fatalf("held stream %d: %v %v, want CONTINUE", i, r, err)
		}
	}
	if n := metricValue(t, reg, "meshguard_extproc_streams_active"); n != 3 {
		t.Fatalf("streams_active %v, want the 3 held streams", n)
	}
	for _, host := range []string{"api.example.com", "evil.example"} {
		res, err := envoysim.Do(context.Background(), c, sidecarRequest(host), 5*time.Second)
		if err != nil {
			t.Fatalf("shop/checkout to %s with 3 allowed streams held: %v", host, err)
		}
		if blocked := res.Immediate != nil; blocked != (host == "evil.example") {
			t.Fatalf("shop/checkout to %s: blocked %v", host, blocked)
		}
	}
	if n := metricValue(t, reg, "meshguard_extproc_streams_rejected_total"); n != 0 {
		t.Fatalf("streams_rejected_total %v, want 0", n)
	}
	for i, h := range held {
		if err := h.Send(&extprocv3.ProcessingRequest{
			Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{
				Headers: envoysim.HeaderMap([]envoysim.Header{{Key: ":status", Value: "200"}})}},
			Attributes: envoysim.Attributes(map[string]string{AttrUpstreamAddress: "203.0.113.7:443"}),
		}); err != nil {
			t.Fatal(err)
		}
		if r, err := h.Recv(); err != nil || r.GetResponseHeaders() == nil {
			t.Fatalf("held stream %d's response: %v %v", i, r, err)
		}
	}
	_, observed := d.flows()
	var greedy int
	for _, f := range observed {
		if f.Service == "shop/greedy" && f.Upstream.IsValid() && f.Status == 200 {
			greedy++
		}
	}
	if greedy != len(held) {
		t.Fatalf("observed %d held responses of shop/greedy, want %d: %v", greedy, len(held), observed)
	}
}

// TestAdversaryWaitingStreamsHoldLittle covers the memory half of issue 10 case 7's
// held-stream trick: streams waiting for their response hold no max-streams slot, so what
// each one keeps must be small however large its request was. 64 allowed requests with
// 512 KiB of headers each (32 MiB in all) are held open after their CONTINUE: the heap
// keeps a small fraction of that, not the requests.
func TestAdversaryWaitingStreamsHoldLittle(t *testing.T) {
	const (
		streams = 64
		pad     = 512 << 10
	)
	d := &fakeDecider{verdict: blockNew}
	c := startServer(t, d, Config{Logger: quietLogger})
	big := sidecarRequest("api.example.com")
	big.Headers = append(slices.Clone(big.Headers), envoysim.Header{Key: "x-pad", Value: strings.Repeat("a", pad)})
	big.Attributes[AttrRequestedServer] = strings.Repeat("b", 64<<10)
	heap := func() uint64 {
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	before := heap()
	held := make([]extprocv3.ExternalProcessor_ProcessClient, streams)
	for i := range held {
		held[i] = openDecidingStream(t, c, big)
		if r, err := held[i].Recv(); err != nil || r.GetRequestHeaders() == nil {
			t.Fatalf("stream %d: %v %v, want CONTINUE", i, r, err)
		}
	}
	after := heap()
	grown := int64(after) - int64(before)
	if limit := int64(streams * pad / 4); grown > limit {
		t.Fatalf("heap grew by %d KiB for %d waiting streams, want under %d KiB: waiting streams keep their requests", grown>>10, streams, limit>>10)
	}
	t.Logf("heap grew by %d KiB for %d waiting streams of %d KiB requests", grown>>10, streams, pad>>10)
	runtime.KeepAlive(held)
}
