package flowmodel

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshguard/meshguard/flowmodel/shape"
)

// The tests here play the compromised workload: it controls every byte of its requests
// (Host, headers, path, times of access-log entries) and wants one request out to an address
// of its choosing. Each names the case of issue 10 it covers.

// fakeClock is a settable server clock.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// countingResolver answers from a table and counts the lookups (each of which, in
// resolve.FreshOnly, starts a background refresh on a miss).
type countingResolver struct {
	table   map[string][]netip.Addr
	lookups atomic.Int64
}

func (r *countingResolver) Lookup(host string) ([]netip.Addr, bool) {
	r.lookups.Add(1)
	a, ok := r.table[host]
	return a, ok
}

func addrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParseAddr(s)
	}
	return out
}

// TestAdversaryDestinationNotEstablished covers issue 10 case 1: in the egress-gateway layout
// there is no destination.address, so the workload names the destination through Host. A
// flow whose destination cannot be established (no IP and no host, a host whose name does
// not resolve, a host the resolver has no fresh answer for yet, no resolver at all) is
// blocked in enforce and quarantine with unknown_destination, alerted in monitor, and never
// learned in learn mode.
func TestAdversaryDestinationNotEstablished(t *testing.T) {
	res := &countingResolver{table: map[string][]netip.Addr{"api.example.com": addrs("203.0.113.10")}}
	dests := []struct {
		name     string
		resolver Resolver
		d        Destination
	}{
		{"no destination at all", res, Destination{Port: 443}},
		{"host that does not resolve", res, Destination{Host: "evil2.example", Port: 443}},
		{"learned host, no resolver", nil, Destination{Host: "api.example.com", Port: 443}},
		{"learned host, no fresh answer", &countingResolver{}, Destination{Host: "api.example.com", Port: 443}},
	}
	want := map[Mode]Action{ModeLearn: Alert, ModeMonitor: Alert, ModeEnforce: Block, ModeQuarantine: Block}
	for _, dd := range dests {
		for _, mode := range []Mode{ModeLearn, ModeMonitor, ModeEnforce, ModeQuarantine} {
			t.Run(fmt.Sprintf("%s/%s", dd.name, mode), func(t *testing.T) {
				m := mustModel(t, Config{Resolver: dd.resolver})
				// The service learned api.example.com at 203.0.113.10 (sidecar layout).
				m.Decide(flow("s", "203.0.113.10", 443, "api.example.com", 0))
				if err := m.SetMode("s", ModeChange{Mode: mode, Allow: []string{"api.example.com"}}); err != nil {
					t.Fatal(err)
				}
				before, _ := m.Service("s")
				f := &Flow{Time: t0.Add(time.Minute), Service: "s", Destination: dd.d, Method: "GET", Path: "/"}
				v := m.Decide(f)
				if v.Action != want[mode] || !v.Reasons.Has(ReasonUnknownDestination) {
					t.Fatalf("got %s %v, want %s with unknown_destination", v.Action, v.Reasons.Strings(), want[mode])
				}
				after, _ := m.Service("s")
				if len(after.Destinations) != len(before.Destinations) || after.LearnRequests != before.LearnRequests {
					t.Errorf("the flow was learned: %v", after.Destinations)
				}
			})
		}
	}
	// A replay of recorded events may take host names on trust (TrustHostNames); serve
	// never does.
	m := mustModel(t, Config{TrustHostNames: true})
	m.Decide(flow("s", "", 443, "api.example.com", 0))
	setMode(t, m, "s", ModeEnforce)
	if v := m.Decide(flow("s", "", 443, "api.example.com", time.Minute)); v.Action != Allow {
		t.Errorf("replay, learned host by name: %s %v", v.Action, v.Reasons.Strings())
	}
	if v := m.Decide(flow("s", "", 443, "evil.example", time.Minute)); v.Action != Block || !v.Reasons.Has(ReasonNewDestination) {
		t.Errorf("replay, new host by name: %s %v", v.Action, v.Reasons.Strings())
	}

	// A service with nothing but flows without destination is not created.
	m = mustModel(t, Config{DefaultMode: ModeEnforce})
	if v := m.Decide(&Flow{Time: t0, Service: "ghost"}); v.Action != Block || !v.Reasons.Has(ReasonUnknownDestination) {
		t.Errorf("untracked service, no destination: %s %v", v.Action, v.Reasons.Strings())
	}
	if _, ok := m.Mode("ghost"); ok {
		t.Error("a flow without destination created a service")
	}
}

// TestAdversaryGatewayHostGoesWhereDNSSays covers issue 10 cases 1 and 12 in the gateway
// layout: a host-only flow goes to the host's fresh DNS answers. A learned host passes only
// while the resolver has a fresh answer; a cache miss (the answer expired, a lookup starts in
// the background) blocks until the answer is back; nothing is learned of a host-only flow
// without answers.
func TestAdversaryGatewayHostGoesWhereDNSSays(t *testing.T) {
	res := &countingResolver{table: map[string][]netip.Addr{"api.example.com": addrs("203.0.113.10", "203.0.113.11")}}
	m := mustModel(t, Config{Resolver: res, Disabled: destinationsOnly})
	gw := func(at time.Duration, host string) *Flow { return flow("gw/client", "", 443, host, at) }
	if v := m.Decide(gw(0, "api.example.com")); v.Action != Allow {
		t.Fatalf("learning with a fresh answer: %s %v", v.Action, v.Reasons.Strings())
	}
	if v := m.Decide(gw(time.Second, "unresolved.example")); !v.Reasons.Has(ReasonUnknownDestination) {
		t.Fatalf("learning without an answer: %s %v", v.Action, v.Reasons.Strings())
	}
	setMode(t, m, "gw/client", ModeEnforce)
	if v := m.Decide(gw(time.Minute, "api.example.com")); v.Action != Allow {
		t.Errorf("learned host with fresh answers: %s %v", v.Action, v.Reasons.Strings())
	}
	if v := m.Decide(gw(time.Minute, "unresolved.example")); v.Action != Block || !v.Reasons.Has(ReasonUnknownDestination) {
		t.Errorf("a host seen (but not learned) while learning: %s %v", v.Action, v.Reasons.Strings())
	}
	n := res.lookups.Load()
	delete(res.table, "api.example.com") // the answer expired: a miss
	if v := m.Decide(gw(2*time.Minute, "api.example.com")); v.Action != Block || !v.Reasons.Has(ReasonUnknownDestination) {
		t.Errorf("learned host, cache miss: %s %v; want blocked until DNS answers", v.Action, v.Reasons.Strings())
	}
	if res.lookups.Load() == n {
		t.Error("a miss did not ask the resolver (which starts the background lookup)")
	}
	res.table["api.example.com"] = addrs("198.51.100.99")
	if v := m.Decide(gw(3*time.Minute, "api.example.com")); v.Action != Allow {
		t.Errorf("learned host, answered again: %s %v", v.Action, v.Reasons.Strings())
	}
}

// TestAdversaryHostHeaderPicksPrefix covers issue 10 case 12 with its example: after
// learning api.payments.example at 203.0.113.10-12, a request to 203.0.113.77 (the
// attacker's server in the same shared /24) with that Host is blocked in enforce, with or
// without a resolver; it passes only if the name's fresh DNS answers include that IP.
func TestAdversaryHostHeaderPicksPrefix(t *testing.T) {
	for _, tc := range []struct {
		name string
		res  Resolver
		want Action
	}{
		{"no resolver", nil, Block},
		{"resolver without an answer", fakeResolver{}, Block},
		{"answers without .77", fakeResolver{"api.payments.example": addrs("203.0.113.10", "203.0.113.11", "203.0.113.12")}, Block},
		{"answers with .77", fakeResolver{"api.payments.example": addrs("203.0.113.77")}, Allow},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := mustModel(t, Config{Resolver: tc.res})
			for i, ip := range []string{"203.0.113.10", "203.0.113.11", "203.0.113.12"} {
				m.Decide(flow("pay/api", ip, 443, "api.payments.example", time.Duration(i)*time.Second))
			}
			setMode(t, m, "pay/api", ModeEnforce)
			v := m.Decide(flow("pay/api", "203.0.113.77", 443, "api.payments.example", time.Minute))
			if v.Action != tc.want {
				t.Fatalf("203.0.113.77 with Host api.payments.example: %s %v, want %s", v.Action, v.Reasons.Strings(), tc.want)
			}
			if v := m.Decide(flow("pay/api", "203.0.113.11", 443, "api.payments.example", time.Minute)); v.Action != Allow {
				t.Errorf("learned IP: %s %v", v.Action, v.Reasons.Strings())
			}
		})
	}
}

// TestAdversaryDomainFronting covers issue 10 case 1's "a learned host matches only with an
// IP among its answers": the workload sends the Host of one learned name to the learned IP
// of another; with a resolver that says the name lives elsewhere it is host_ip_mismatch,
// blocked in enforce.
func TestAdversaryDomainFronting(t *testing.T) {
	res := fakeResolver{"a.example": addrs("192.0.2.1"), "b.example": addrs("192.0.2.2")}
	m := mustModel(t, Config{Resolver: res, Disabled: destinationsOnly})
	m.Decide(flow("s", "192.0.2.1", 443, "a.example", 0))
	m.Decide(flow("s", "192.0.2.2", 443, "b.example", time.Second))
	setMode(t, m, "s", ModeEnforce)
	v := m.Decide(flow("s", "192.0.2.2", 443, "a.example", time.Minute))
	if v.Action != Block || !v.Reasons.Has(ReasonHostIPMismatch) {
		t.Fatalf("Host a.example to b.example's IP: %s %v", v.Action, v.Reasons.Strings())
	}
	if v := m.Decide(flow("s", "192.0.2.1", 443, "a.example", time.Minute)); v.Action != Allow {
		t.Errorf("a.example at its own IP: %s %v", v.Action, v.Reasons.Strings())
	}
}

// TestAdversaryQuarantineAllowByHostAlone covers issue 10 case 2: a quarantine allow entry
// naming a host matches that Host only at an IP among the host's fresh DNS answers (or,
// host-only in a gateway, when the name resolves); "host@ip" pins a host to one IP and works
// without a resolver; IP entries match IPs. The admin API's old format ("host:port", "ip",
// without port for any port) keeps working, and entries survive a save and restore.
func TestAdversaryQuarantineAllowByHostAlone(t *testing.T) {
	res := fakeResolver{"vault.internal": addrs("10.0.0.80"), "api.example.com": addrs("203.0.113.7")}
	allow := []string{"vault.internal:8200", "10.0.0.53", "api.example.com@203.0.113.7", "pinned.example:443@198.51.100.5"}
	cases := []struct {
		name string
		f    *Flow
		res  Resolver
		want Action
	}{
		{"host entry at the attacker's IP", flow("s", "198.51.100.66", 8200, "vault.internal", 0), res, Block},
		{"host entry at its DNS answer", flow("s", "10.0.0.80", 8200, "vault.internal", 0), res, Allow},
		{"host entry on another port", flow("s", "10.0.0.80", 443, "vault.internal", 0), res, Block},
		{"host entry, gateway, resolves", flow("s", "", 8200, "vault.internal", 0), res, Allow},
		{"host entry without resolver", flow("s", "10.0.0.80", 8200, "vault.internal", 0), nil, Block},
		{"host entry, gateway, no resolver", flow("s", "", 8200, "vault.internal", 0), nil, Block},
		{"pinned at its IP, no resolver", flow("s", "198.51.100.5", 443, "pinned.example", 0), nil, Allow},
		{"pinned at another IP", flow("s", "198.51.100.6", 443, "pinned.example", 0), res, Block},
		{"pinned, other port", flow("s", "198.51.100.5", 8443, "pinned.example", 0), nil, Block},
		{"pinned, gateway, answers hold the pin", flow("s", "", 443, "api.example.com", 0), res, Allow},
		{"IP entry", flow("s", "10.0.0.53", 53, "", 0), nil, Allow},
		{"IP entry with any Host", flow("s", "10.0.0.53", 53, "whatever.example", 0), nil, Allow},
		{"the pinned IP under another Host", flow("s", "198.51.100.5", 443, "evil.example", 0), nil, Block},
		{"IP entry's Host in a gateway", flow("s", "", 53, "10-0-0-53.evil.example", 0), res, Block},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := mustModel(t, Config{Resolver: tc.res})
			if err := m.SetMode("s", ModeChange{Mode: ModeQuarantine, Allow: allow}); err != nil {
				t.Fatal(err)
			}
			r, _ := m.Service("s")
			m2 := mustModel(t, Config{Resolver: tc.res})
			if err := m2.Restore(r); err != nil {
				t.Fatal(err)
			}
			for i, mm := range []*Model{m, m2} {
				f := *tc.f
				if v := mm.Decide(&f); v.Action != tc.want {
					t.Errorf("model %d: %s %v, want %s (allow list %v)", i, v.Action, v.Reasons.Strings(), tc.want, r.QuarantineAllow)
				}
			}
		})
	}
	m := mustModel(t, Config{})
	for _, bad := range []string{"@1.2.3.4", "10.0.0.1@10.0.0.2", "host@not-an-ip", "bad host!"} {
		if err := m.SetMode("s", ModeChange{Mode: ModeQuarantine, Allow: []string{bad}}); err == nil {
			t.Errorf("allow entry %q accepted", bad)
		}
	}
}

// oversized returns the three requests of issue 10 case 5, made distinct by i: 1,100 header
// names (35 KB), a 5,000-segment path, and 500 long header names with long query keys.
func oversized(i int) []*Flow {
	names := func(n, size int) []string {
		out := make([]string, n)
		for j := range out {
			out[j] = fmt.Sprintf("x-h%d-%d-%s", i, j, strings.Repeat("a", size))
		}
		return out
	}
	var q strings.Builder
	for j := range 300 {
		fmt.Fprintf(&q, "&key%d_%d_%s=v", i, j, strings.Repeat("k", 40))
	}
	return []*Flow{
		{Service: "big", Method: "GET", Path: "/", HeaderKeys: names(1100, 20)},
		{Service: "big", Method: "GET", Path: strings.Repeat(fmt.Sprintf("/seg%d", i), 5000)},
		{Service: "big", Method: "POST", Path: "/upload?" + q.String()[1:], HeaderKeys: names(500, 200), ContentType: strings.Repeat("x", 5000)},
	}
}

// TestAdversaryOversizedShape covers issue 10 case 5: requests with 1,100 header names, a
// 5,000-segment path or 500 header names are cut before they reach the model, flagged
// oversized_shape, and make shapes of bounded text (so no store key grows past what a
// store can hold); a new oversized shape is blocked in enforce. The heap the model takes
// stays under a ceiling however many such requests come, and one service's shapes are capped
// (MaxShapesPerService).
func TestAdversaryOversizedShape(t *testing.T) {
	m := mustModel(t, Config{MaxShapesPerService: 300})
	at := t0
	decide := func(f *Flow) Verdict {
		at = at.Add(time.Second)
		f.Time = at
		f.Destination = Destination{IP: netip.MustParseAddr("203.0.113.7"), Port: 443, Host: "api.example.com"}
		f.RequestBytes = -1
		return m.Decide(f)
	}
	for _, f := range oversized(0) {
		if v := decide(f); v.Action != Alert || !v.Reasons.Has(ReasonOversizedShape) {
			t.Fatalf("learning an oversized request: %s %v", v.Action, v.Reasons.Strings())
		}
	}
	r, _ := m.Service("big")
	if len(r.Shapes) != 3 {
		t.Fatalf("%d shapes learned, want 3", len(r.Shapes))
	}
	for _, s := range r.Shapes {
		if len(s.Shape) > shape.MaxText {
			t.Errorf("shape text of %d bytes, over %d: %.200s", len(s.Shape), shape.MaxText, s.Shape)
		}
		if !strings.Contains(s.Shape, shape.ExcessPrefix) {
			t.Errorf("shape without its excess summary: %.200s", s.Shape)
		}
		// The text is the shape: it parses back to the same key (approve and restore work).
		p, err := shape.Parse(s.Shape)
		if err != nil {
			t.Errorf("shape does not parse: %v", err)
		} else if p.String() != s.Shape {
			t.Errorf("shape does not round-trip:\n%.300s\n%.300s", s.Shape, p.String())
		}
	}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > 3*shape.MaxText+4096 {
		t.Errorf("record of 3 shapes is %d bytes", len(b))
	}
	// Approving a cut shape works (its text is a shape).
	if err := m.Approve("big", Feedback{Destination: "api.example.com:443", Shape: r.Shapes[0].Shape}); err != nil {
		t.Errorf("approve a cut shape: %v", err)
	}

	setMode(t, m, "big", ModeEnforce)
	if v := decide(oversized(1)[1]); v.Action != Block || !v.Reasons.Has(ReasonOversizedShape) || !v.Reasons.Has(ReasonNewShape) {
		t.Errorf("new oversized shape in enforce: %s %v", v.Action, v.Reasons.Strings())
	}
	if v := decide(oversized(0)[1]); v.Action != Alert || !v.Reasons.Has(ReasonOversizedShape) {
		t.Errorf("learned oversized shape in enforce: %s %v; want alerted, not blocked", v.Action, v.Reasons.Strings())
	}

	// Memory: many distinct oversized requests while learning cost no more than the caps.
	setMode(t, m, "big", ModeLearn)
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	base := heap()
	round := func(from, to int) {
		for i := from; i < to; i++ {
			for _, f := range oversized(i) {
				decide(f)
			}
		}
	}
	round(2, 400)
	first := heap()
	round(400, 800)
	second := heap()
	const ceiling = 16 << 20 // uncut, 520 shape texts of 100 KB would take 52 MB
	t.Logf("heap: %d MiB before, %.1f MiB after 1,194 oversized requests, %.1f MiB after 1,200 more",
		base>>20, float64(first)/(1<<20), float64(second)/(1<<20))
	if first > base+ceiling || second > base+ceiling {
		t.Errorf("heap grew by %d then %d bytes, over the %d ceiling", int64(first-base), int64(second-base), ceiling)
	}
	if grow := int64(second) - int64(first); grow > 8<<20 {
		t.Errorf("heap kept growing with more oversized requests: +%d bytes", grow)
	}
	r, _ = m.Service("big")
	if len(r.Shapes) > 300 {
		t.Errorf("service keeps %d shapes, over its cap of 300", len(r.Shapes))
	}
}

// TestAdversaryClientClock covers issue 10 case 6: event times (from access-log entries)
// more than MaxClockSkew ahead of the server clock, or before the epoch, are clamped to the
// server clock and counted; a new destination dated 25 h, 50 h, 75 h ahead, or dated days in
// the past and then now, is not carried through probation; year-10000 times do not reach
// the records (which must stay JSON-encodable).
func TestAdversaryClientClock(t *testing.T) {
	clk := &fakeClock{now: t0}
	newModel := func() *Model {
		m := mustModel(t, Config{Now: clk.Now, Disabled: destinationsOnly, Probation: 3, ProbationInterval: 24 * time.Hour})
		m.Decide(flow("s", "203.0.113.7", 443, "", 0))
		setMode(t, m, "s", ModeMonitor)
		return m
	}
	newDest := func(at time.Duration) *Flow { return flow("s", "198.51.100.9", 443, "", at) }
	t.Run("future", func(t *testing.T) {
		m := newModel()
		for _, at := range []time.Duration{0, 25 * time.Hour, 50 * time.Hour, 75 * time.Hour, 100 * time.Hour} {
			if v := m.Decide(newDest(at)); !v.Reasons.Has(ReasonNewDestination) {
				t.Fatalf("dated +%v: %s %v; probation must run on the server clock", at, v.Action, v.Reasons.Strings())
			}
		}
		if n := m.ClampedTimes(); n != 4 {
			t.Errorf("clamped %d times, want 4", n)
		}
		if r, _ := m.Service("s"); r.LastSeen.After(clk.Now()) {
			t.Errorf("last seen %v, after the server clock %v", r.LastSeen, clk.Now())
		}
	})
	t.Run("past", func(t *testing.T) {
		// A service whose every time comes from the client (access logs only) starts its
		// clock days in the past, then walks it forward in seconds of server time.
		m := mustModel(t, Config{Now: clk.Now, Disabled: destinationsOnly, Probation: 3, ProbationInterval: 24 * time.Hour})
		m.Decide(flow("s", "203.0.113.7", 443, "", -100*time.Hour))
		setMode(t, m, "s", ModeMonitor)
		for _, at := range []time.Duration{-96 * time.Hour, -72 * time.Hour, -48 * time.Hour, -24 * time.Hour, 0} {
			if v := m.Decide(newDest(at)); !v.Reasons.Has(ReasonNewDestination) {
				t.Fatalf("dated %v: %s %v; past dates must not compress probation", at, v.Action, v.Reasons.Strings())
			}
		}
		if n := m.ClampedTimes(); n != 0 {
			t.Errorf("clamped %d past times (within the sane window), want 0", n)
		}
	})
	t.Run("probation still passes on the server clock", func(t *testing.T) {
		m := newModel()
		var v Verdict
		for day := range 4 {
			v = m.Decide(newDest(time.Duration(day) * 24 * time.Hour))
			clk.Advance(24 * time.Hour)
		}
		clk.now = t0
		if v.Action != Allow {
			t.Errorf("three days of real time: %s %v; want passed probation", v.Action, v.Reasons.Strings())
		}
	})
	t.Run("out of range", func(t *testing.T) {
		m := newModel()
		for _, tm := range []time.Time{{}, time.Unix(0, 0), time.Unix(-86400, 0), time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC), t0.Add(6 * time.Minute)} {
			f := newDest(0)
			f.Time = tm
			m.Decide(f)
			if !f.Time.Equal(clk.Now()) {
				t.Errorf("time %v decided as %v, want the server clock", tm, f.Time)
			}
		}
		f := newDest(4 * time.Minute) // within the skew: taken as it comes
		m.Decide(f)
		if !f.Time.Equal(t0.Add(4 * time.Minute)) {
			t.Errorf("time within the skew changed to %v", f.Time)
		}
		if n := m.ClampedTimes(); n != 5 {
			t.Errorf("clamped %d times, want 5", n)
		}
		if _, err := json.Marshal(m.Services()); err != nil {
			t.Errorf("records do not encode: %v", err)
		}
	})
	t.Run("learning ends on the server clock", func(t *testing.T) {
		m := mustModel(t, Config{Now: clk.Now, LearnWindow: 24 * time.Hour, LearnMinRequests: 1})
		m.Decide(flow("l", "203.0.113.7", 443, "", 0))
		m.Decide(flow("l", "203.0.113.7", 443, "", -48*time.Hour))
		v := m.Decide(flow("l", "198.51.100.9", 443, "", 30*time.Hour))
		if v.Mode != ModeLearn {
			t.Errorf("a flow dated 30 h ahead ended learning: %+v", v)
		}
	})
}

// TestAdversaryMaxServices covers issue 10 case 11: at MaxServices a new service is not
// allowed untracked but gets AtMaxServices (block by default, or alert); an operator's
// quarantine of any service, tracked or not, takes effect.
func TestAdversaryMaxServices(t *testing.T) {
	for _, tc := range []struct {
		action Action
		want   Action
	}{{0, Block}, {Block, Block}, {Alert, Alert}} {
		t.Run(tc.want.String(), func(t *testing.T) {
			m := mustModel(t, Config{MaxServices: 2, AtMaxServices: tc.action})
			m.Decide(flow("a", "203.0.113.7", 443, "", 0))
			m.Decide(flow("b", "203.0.113.7", 443, "", 0))
			v := m.Decide(flow("c", "203.0.113.7", 443, "", 0))
			if v.Action != tc.want || !v.Reasons.Has(ReasonNewDestination) {
				t.Fatalf("third service at the cap: %s %v, want %s", v.Action, v.Reasons.Strings(), tc.want)
			}
			if _, ok := m.Mode("c"); ok {
				t.Fatal("a service beyond the cap was tracked")
			}
			// An undecidable request of a new service (a destination that cannot be
			// established, disagreeing identities) fares no better than a well-formed one.
			for _, rs := range []Reasons{Reasons(0).With(ReasonUnknownDestination), Reasons(0).With(ReasonIdentityMismatch)} {
				if v := m.Undecidable("c", rs); v.Action != tc.want {
					t.Errorf("undecidable %v of a service beyond the cap: %s, want %s", rs.Strings(), v.Action, tc.want)
				}
			}
			if err := m.SetMode("c", ModeChange{Mode: ModeQuarantine, Allow: []string{"10.0.0.53"}, By: "operator"}); err != nil {
				t.Fatalf("quarantine beyond the cap refused: %v", err)
			}
			if v := m.Decide(flow("c", "203.0.113.7", 443, "", time.Second)); v.Action != Block || !v.Reasons.Has(ReasonQuarantined) {
				t.Errorf("quarantined service beyond the cap: %s %v", v.Action, v.Reasons.Strings())
			}
			if v := m.Decide(flow("c", "10.0.0.53", 53, "", time.Second)); v.Action != Allow {
				t.Errorf("quarantine allow list beyond the cap: %s %v", v.Action, v.Reasons.Strings())
			}
			// A tracked service can be quarantined at the cap as well, and other modes stay capped.
			if err := m.SetMode("a", ModeChange{Mode: ModeQuarantine}); err != nil {
				t.Error(err)
			}
			if err := m.SetMode("d", ModeChange{Mode: ModeEnforce}); err == nil {
				t.Error("enforce of a new service beyond the cap accepted")
			}
		})
	}
	// An alerting max-services action never weakens an enforcing default mode.
	for _, def := range []Mode{ModeEnforce, ModeQuarantine} {
		m := mustModel(t, Config{MaxServices: 1, AtMaxServices: Alert, DefaultMode: def})
		m.Decide(flow("a", "203.0.113.7", 443, "", 0))
		if v := m.Decide(flow("c", "203.0.113.7", 443, "", 0)); v.Action != Block {
			t.Errorf("default mode %s, beyond the cap: %s %v", def, v.Action, v.Reasons.Strings())
		}
	}
	if _, err := New(Config{AtMaxServices: Action(9)}); err == nil {
		t.Error("bad max-services action accepted")
	}
	for _, s := range []string{"block", "alert"} {
		if _, err := ParseAtMaxServices(s); err != nil {
			t.Error(err)
		}
	}
	if _, err := ParseAtMaxServices("allow"); err == nil {
		t.Error("max-services action allow accepted")
	}
}

// TestAdversaryFirstFlowAfterWindowIsJudged covers issue 11's "judge after the window": the
// first flow once learning is due to end (a C2 beacon to a new IP) is decided in the
// promoted mode and never enters the baseline.
func TestAdversaryFirstFlowAfterWindowIsJudged(t *testing.T) {
	for _, after := range []Mode{ModeMonitor, ModeEnforce} {
		m := mustModel(t, Config{LearnWindow: time.Hour, LearnMinRequests: 2, AfterLearning: after})
		m.Decide(flow("s", "203.0.113.7", 443, "", 0))
		m.Decide(flow("s", "203.0.113.7", 443, "", 30*time.Minute))
		v := m.Decide(flow("s", "198.51.100.66", 443, "", time.Hour))
		if v.Mode != after || v.Action == Allow || !v.Reasons.Has(ReasonNewDestination) {
			t.Errorf("%s: first flow at the window's end: %+v, want judged", after, v)
		}
		r, _ := m.Service("s")
		if slices.ContainsFunc(r.Destinations, func(d DestinationRecord) bool { return strings.HasPrefix(d.Destination, "198.51.100.66") }) {
			t.Errorf("%s: the C2 destination entered the baseline", after)
		}
		if r.LearnRequests != 2 {
			t.Errorf("%s: %d learned requests, want 2", after, r.LearnRequests)
		}
	}
}

// TestAdversaryHostAndIPForms covers the careful attacker's next try after issue 10 cases 2
// and 12: mixed-case and trailing-dot hosts and IPv4-mapped IPv6 addresses are the same
// destinations as their plain forms, for the baseline and for a quarantine allow list (a
// caller that did not normalise them gets them normalised).
func TestAdversaryHostAndIPForms(t *testing.T) {
	res := fakeResolver{"api.example.com": addrs("203.0.113.7")}
	m := mustModel(t, Config{Resolver: res, Disabled: destinationsOnly})
	m.Decide(flow("s", "203.0.113.7", 443, "api.example.com", 0))
	setMode(t, m, "s", ModeEnforce)
	raw := func(ip, host string) *Flow {
		f := flow("s", "", 443, host, time.Minute)
		if ip != "" {
			f.Destination.IP = netip.MustParseAddr(ip) // not normalised
		}
		return f
	}
	for _, tc := range []struct {
		f    *Flow
		want Action
	}{
		{raw("::ffff:203.0.113.7", "API.Example.COM."), Allow},
		{raw("::ffff:198.51.100.66", "API.Example.COM."), Block},
		{raw("", "API.EXAMPLE.COM."), Allow},
	} {
		if v := m.Decide(tc.f); v.Action != tc.want {
			t.Errorf("enforce %v: %s %v, want %s", tc.f.Destination, v.Action, v.Reasons.Strings(), tc.want)
		}
	}
	if err := m.SetMode("s", ModeChange{Mode: ModeQuarantine, Allow: []string{"API.Example.com.:443", "::ffff:10.0.0.53"}}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		f    *Flow
		want Action
	}{
		{raw("::ffff:203.0.113.7", "api.example.com."), Allow},
		{raw("198.51.100.66", "API.EXAMPLE.COM"), Block},
		{raw("::ffff:10.0.0.53", ""), Allow},
	} {
		tc.f.Destination.Port = 443
		if v := m.Decide(tc.f); v.Action != tc.want {
			t.Errorf("quarantine %v: %s %v, want %s", tc.f.Destination, v.Action, v.Reasons.Strings(), tc.want)
		}
	}
}
