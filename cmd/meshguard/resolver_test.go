package main

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/meshguard/meshguard/flowmodel/resolve"
)

// TestHostResolverGivesOnlyFreshAnswers: the model takes what hostResolver says as
// evidence that a host name resolves to an address, so a stale answer, which resolve still
// returns while it refreshes it, must not count; nor must a name that does not exist.
func TestHostResolverGivesOnlyFreshAnswers(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a, err := dns.NewRR("api.example.com. 30 IN A 203.0.113.7")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		resp := new(dns.Msg)
		resp.SetReply(req)
		switch q := req.Question[0]; {
		case q.Name != "api.example.com.":
			resp.Rcode = dns.RcodeNameError
		case q.Qtype == dns.TypeA:
			resp.Answer = []dns.RR{a}
		}
		_ = w.WriteMsg(resp)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go func() { _ = srv.ActivateAndServe() }()
	<-started
	t.Cleanup(func() { _ = srv.Shutdown() }) // an error once the test has shut it down

	var mu sync.Mutex
	now := time.Date(2026, 1, 2, 15, 4, 5, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	r, err := resolve.New(resolve.Config{Servers: []string{pc.LocalAddr().String()}, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	h := hostResolver{r, clock}

	ctx := context.Background()
	for _, name := range []string{"api.example.com", "nope.example.com"} {
		if _, err := r.Resolve(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	if addrs, ok := h.Lookup("api.example.com"); !ok || !slices.Equal(addrs, []netip.Addr{netip.MustParseAddr("203.0.113.7")}) {
		t.Fatalf("fresh answer: %v, %v; want [203.0.113.7], true", addrs, ok)
	}
	if addrs, ok := h.Lookup("nope.example.com"); ok {
		t.Errorf("a name that does not exist: %v, true", addrs)
	}

	// Past the TTL, within resolve's MaxStale: resolve returns the old answer, we do not.
	// The server is gone, so the refresh resolve starts cannot make the answer fresh again.
	if err := srv.Shutdown(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	now = now.Add(31 * time.Second)
	mu.Unlock()
	if ans, ok := r.Lookup("api.example.com"); !ok || ans.Fresh(clock()) {
		t.Fatalf("resolve.Lookup past the TTL = %+v, %v; the test wants a stale answer", ans, ok)
	}
	if addrs, ok := h.Lookup("api.example.com"); ok {
		t.Errorf("stale answer given as evidence: %v", addrs)
	}
}
