package flowmodel

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 2, 15, 0, 0, 0, time.UTC)

func flow(svc, ip string, port uint16, host string, at time.Duration) *Flow {
	f := &Flow{Time: t0.Add(at), Service: svc, Destination: Destination{Port: port, Host: host}, Method: "GET", Path: "/"}
	if ip != "" {
		f.Destination.IP = NormalizeIP(netip.MustParseAddr(ip))
	}
	return f
}

// mustModel returns a model of c. Without a clock of its own, the test replays events (days
// of event time in milliseconds), so event time paces probation and learning.
func mustModel(t testing.TB, c Config) *Model {
	t.Helper()
	if c.Now == nil {
		c.EventClock = true
	}
	m, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func setMode(t testing.TB, m *Model, svc string, mode Mode) {
	t.Helper()
	if err := m.SetMode(svc, ModeChange{Mode: mode, By: "test", At: t0}); err != nil {
		t.Fatal(err)
	}
}

func TestModes(t *testing.T) {
	learned := []*Flow{
		flow("shop/checkout", "203.0.113.7", 443, "api.example.com", 0),
		flow("shop/checkout", "2001:db8::7", 443, "", time.Second),
		flow("shop/checkout", "", 8080, "inventory.shop.svc", 2*time.Second),
	}
	tests := []struct {
		name    string
		mode    Mode
		flow    *Flow
		action  Action
		reasons []string
	}{
		{"learn allows new", ModeLearn, flow("shop/checkout", "198.51.100.1", 443, "", 0), Allow, nil},
		{"monitor allows known", ModeMonitor, flow("shop/checkout", "203.0.113.7", 443, "api.example.com", 0), Allow, nil},
		{"monitor alerts new IP", ModeMonitor, flow("shop/checkout", "198.51.100.1", 443, "", 0), Alert, []string{"new_destination"}},
		{"enforce allows known IP without host", ModeEnforce, flow("shop/checkout", "203.0.113.7", 443, "", 0), Allow, nil},
		{"enforce blocks new IP", ModeEnforce, flow("shop/checkout", "198.51.100.1", 443, "", 0), Block, []string{"new_destination"}},
		{"enforce blocks known IP on new port", ModeEnforce, flow("shop/checkout", "203.0.113.7", 22, "", 0), Block, []string{"new_destination"}},
		{"enforce blocks known host sent to unknown IP", ModeEnforce, flow("shop/checkout", "198.51.100.1", 443, "api.example.com", 0), Block, []string{"new_destination"}},
		{"enforce allows IPv4-mapped IPv6 of a learned IPv4", ModeEnforce, flow("shop/checkout", "::ffff:203.0.113.7", 443, "", 0), Allow, nil},
		{"enforce allows learned IPv6", ModeEnforce, flow("shop/checkout", "2001:db8::7", 443, "", 0), Allow, nil},
		{"enforce allows host in another case", ModeEnforce, flow("shop/checkout", "", 8080, NormalizeHost("Inventory.Shop.SVC"), 0), Allow, nil},
		{"enforce blocks unknown host", ModeEnforce, flow("shop/checkout", "", 8080, "evil.example", 0), Block, []string{"new_destination"}},
		{"enforce blocks known host without fresh DNS answers", ModeEnforce, flow("shop/checkout", "", 8080, "gone.shop.svc", 0), Block, []string{"unknown_destination"}},
		{"monitor alerts host without fresh DNS answers", ModeMonitor, flow("shop/checkout", "", 8080, "nxdomain.example", 0), Alert, []string{"unknown_destination"}},
		{"quarantine blocks host without fresh DNS answers", ModeQuarantine, flow("shop/checkout", "", 8080, "nxdomain.example", 0), Block, []string{"quarantined", "unknown_destination"}},
		{"quarantine blocks known", ModeQuarantine, flow("shop/checkout", "203.0.113.7", 443, "api.example.com", 0), Block, []string{"quarantined"}},
		{"other service unaffected", ModeEnforce, flow("shop/cart", "203.0.113.7", 443, "", 0), Block, []string{"new_destination"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Host-only flows (an egress gateway) go to the host's fresh DNS answers.
			res := fakeResolver{"inventory.shop.svc": {netip.MustParseAddr("10.96.0.20")}, "evil.example": {netip.MustParseAddr("198.51.100.66")}}
			m := mustModel(t, Config{Resolver: res})
			for _, f := range learned {
				if v := m.Decide(f); v.Action != Allow || v.Mode != ModeLearn {
					t.Fatalf("learning: got %+v", v)
				}
			}
			setMode(t, m, "shop/checkout", tt.mode)
			setMode(t, m, "shop/cart", ModeEnforce)
			v := m.Decide(tt.flow)
			if v.Action != tt.action {
				t.Errorf("action = %s, want %s", v.Action, tt.action)
			}
			if got := fmt.Sprint(v.Reasons.Strings()); got != fmt.Sprint(append([]string{}, tt.reasons...)) {
				t.Errorf("reasons = %s, want %v", got, tt.reasons)
			}
			if (v.Score > 0) != (tt.action != Allow) {
				t.Errorf("score %v for action %s", v.Score, v.Action)
			}
		})
	}
}

func TestMonitorAndEnforceDoNotLearn(t *testing.T) {
	for _, mode := range []Mode{ModeMonitor, ModeEnforce} {
		m := mustModel(t, Config{})
		setMode(t, m, "s", mode)
		for i := range 3 {
			if v := m.Decide(flow("s", "198.51.100.1", 443, "", time.Duration(i)*time.Second)); v.Action == Allow {
				t.Fatalf("%s: repeat %d of a new destination allowed: attacker repetition must not teach", mode, i)
			}
		}
	}
}

func TestPromotionNeedsWindowAndRequests(t *testing.T) {
	tests := []struct {
		name     string
		requests int
		span     time.Duration
		promoted bool
	}{
		{"enough time, too few requests", 5, 2 * time.Hour, false},
		{"enough requests, too little time", 50, 30 * time.Minute, false},
		{"both", 10, time.Hour, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := mustModel(t, Config{LearnWindow: time.Hour, LearnMinRequests: 10, AfterLearning: ModeEnforce})
			for i := 0; i < tt.requests; i++ {
				at := tt.span * time.Duration(i) / time.Duration(max(tt.requests-1, 1))
				m.Decide(flow("s", "203.0.113.7", 443, "", at))
			}
			mode, _ := m.Mode("s")
			if got := mode == ModeEnforce; got != tt.promoted {
				t.Fatalf("mode = %s, promoted want %v", mode, tt.promoted)
			}
			if tt.promoted {
				r, _ := m.Service("s")
				if r.ModeSetBy != "auto" || !r.ModeChanged.Equal(t0.Add(tt.span)) {
					t.Errorf("promotion recorded as %q at %v", r.ModeSetBy, r.ModeChanged)
				}
				if v := m.Decide(flow("s", "198.51.100.9", 443, "", tt.span+time.Second)); v.Action != Block {
					t.Errorf("after promotion to enforce, new IP got %s", v.Action)
				}
			}
		})
	}
}

func TestSetLearnRestartsWindow(t *testing.T) {
	m := mustModel(t, Config{LearnWindow: time.Hour, LearnMinRequests: 1})
	m.Decide(flow("s", "203.0.113.7", 443, "", 0))
	setMode(t, m, "s", ModeLearn)
	m.Decide(flow("s", "203.0.113.7", 443, "", 2*time.Hour))
	if mode, _ := m.Mode("s"); mode != ModeLearn {
		t.Fatalf("mode %s: the window must restart when an operator sets learn", mode)
	}
	m.Decide(flow("s", "203.0.113.7", 443, "", 3*time.Hour))
	if mode, _ := m.Mode("s"); mode != ModeMonitor {
		t.Fatalf("mode %s after a full new window", mode)
	}
}

func TestQuarantineAllowList(t *testing.T) {
	m := mustModel(t, Config{Resolver: fakeResolver{"vault.internal": {netip.MustParseAddr("10.0.0.80")}}})
	if err := m.SetMode("s", ModeChange{Mode: ModeQuarantine, Allow: []string{"vault.internal:8200", "10.0.0.53"}}); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		f    *Flow
		want Action
	}{
		{flow("s", "", 8200, "vault.internal", 0), Allow},
		{flow("s", "", 443, "vault.internal", 0), Block},
		{flow("s", "10.0.0.53", 53, "", 0), Allow},
		{flow("s", "10.0.0.54", 53, "", 0), Block},
		{flow("s", "10.0.0.80", 8200, "vault.internal", 0), Allow},
		{flow("s", "10.0.0.81", 8200, "vault.internal", 0), Block},
	} {
		if v := m.Decide(tt.f); v.Action != tt.want {
			t.Errorf("%s: %s, want %s", tt.f.Destination, v.Action, tt.want)
		}
	}
	if err := m.SetMode("s", ModeChange{Mode: ModeQuarantine, Allow: []string{"bad host!"}}); err == nil {
		t.Error("bad allow entry accepted")
	}
}

func TestInvalidFlows(t *testing.T) {
	m := mustModel(t, Config{})
	for _, f := range []*Flow{
		{Time: t0, Service: "", Destination: Destination{Host: "x", Port: 1}},
		{Time: t0, Service: "s"},
	} {
		v := m.Decide(f)
		want, action := ReasonInvalidRequest, Block // no service: fail closed
		if f.Service != "" {
			// In the service's (default) mode, learn: alerted, never learned.
			want, action = ReasonUnknownDestination, Alert
		}
		if v.Action != action || !v.Reasons.Has(want) {
			t.Errorf("%+v: got %+v, want %s %s", f, v, action, want)
		}
	}
	if got := len(m.Services()); got != 0 {
		t.Errorf("invalid flows created %d services", got)
	}
}

// A hostile service scanning many distinct IPs: memory stays bounded by the per-service cap
// and, once enforced, every scan request is blocked.
func TestScanIsBoundedAndBlocked(t *testing.T) {
	const maxDest = 1000
	m := mustModel(t, Config{MaxDestinations: maxDest})
	rng := rand.New(rand.NewPCG(1, 2))
	randomIP := func() string {
		return netip.AddrFrom4([4]byte{byte(rng.IntN(223) + 1), byte(rng.IntN(256)), byte(rng.IntN(256)), byte(rng.IntN(256))}).String()
	}
	// Scanning while learning: the baseline keeps the most recent maxDest only.
	for i := range 20_000 {
		m.Decide(flow("scanner", randomIP(), 443, "", time.Duration(i)*time.Millisecond))
	}
	r, _ := m.Service("scanner")
	if len(r.Destinations) != maxDest {
		t.Fatalf("learned %d destinations, cap %d", len(r.Destinations), maxDest)
	}
	setMode(t, m, "scanner", ModeEnforce)
	blocked := 0
	const scan = 200_000
	for i := range scan {
		ip := randomIP()
		if v := m.Decide(flow("scanner", ip, 8443, "", time.Hour+time.Duration(i)*time.Millisecond)); v.Action == Block {
			blocked++
		}
	}
	if blocked != scan {
		t.Fatalf("blocked %d of %d scan requests", blocked, scan)
	}
	r, _ = m.Service("scanner")
	if len(r.Destinations) != maxDest {
		t.Fatalf("enforce mode grew the baseline to %d", len(r.Destinations))
	}
	changes := m.TakeChanges()
	if len(changes) != 1 || len(changes[0].Destinations)+len(changes[0].Removed) > 20_000+maxDest {
		t.Fatalf("unexpected change set size")
	}
}

func TestMaxServices(t *testing.T) {
	m := mustModel(t, Config{MaxServices: 2, DefaultMode: ModeEnforce})
	m.Decide(flow("a", "203.0.113.1", 1, "", 0))
	m.Decide(flow("b", "203.0.113.1", 1, "", 0))
	v := m.Decide(flow("c", "203.0.113.1", 1, "", 0))
	if v.Action != Block || len(m.Services()) != 2 {
		t.Fatalf("service beyond cap: %+v, %d services", v, len(m.Services()))
	}
	if err := m.SetMode("d", ModeChange{Mode: ModeLearn}); err == nil {
		t.Fatal("SetMode beyond the cap must fail")
	}
}

func TestChangesAndRestore(t *testing.T) {
	m := mustModel(t, Config{MaxDestinations: 2})
	m.Decide(flow("s", "203.0.113.1", 443, "", 0))
	m.Decide(flow("s", "203.0.113.2", 443, "", time.Second))
	ch := m.TakeChanges()
	if len(ch) != 1 || len(ch[0].Destinations) != 2 || len(ch[0].Removed) != 0 {
		t.Fatalf("first changes: %+v", ch)
	}
	if again := m.TakeChanges(); len(again) != 0 {
		t.Fatalf("changes taken twice: %+v", again)
	}
	// A third destination evicts the least recently used one.
	m.Decide(flow("s", "203.0.113.3", 443, "", 2*time.Second))
	ch = m.TakeChanges()
	if len(ch) != 1 || len(ch[0].Destinations) != 1 || fmt.Sprint(ch[0].Removed) != "[203.0.113.1:443]" {
		t.Fatalf("eviction changes: %+v", ch)
	}

	full, _ := m.Service("s")
	m2 := mustModel(t, Config{MaxDestinations: 2})
	if err := m2.Restore(full); err != nil {
		t.Fatal(err)
	}
	setMode(t, m2, "s", ModeEnforce)
	for ip, want := range map[string]Action{"203.0.113.1": Block, "203.0.113.2": Allow, "203.0.113.3": Allow} {
		if v := m2.Decide(flow("s", ip, 443, "", time.Hour)); v.Action != want {
			t.Errorf("restored model: %s → %s, want %s", ip, v.Action, want)
		}
	}
}

func TestConfigCheck(t *testing.T) {
	if _, err := New(Config{AfterLearning: ModeLearn}); err == nil {
		t.Error("after-learning learn accepted")
	}
	if _, err := New(Config{MaxDestinations: -1, MaxServices: -1}); err == nil {
		t.Error("negative caps accepted")
	}
	c, err := Config{LearnWindow: -1, LearnMinRequests: -1}.Check()
	if err != nil || c.LearnWindow != 0 || c.LearnMinRequests != 0 {
		t.Errorf("negative means zero: %+v %v", c, err)
	}
}
