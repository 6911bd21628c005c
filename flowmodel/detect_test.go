package flowmodel

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

// stream builds flows for one service and its destinations on event time.
type stream struct {
	m   *Model
	svc string
}

func (s stream) req(at time.Duration, ip, host, method, path string, body int64) *Flow {
	f := &Flow{Time: t0.Add(at), Service: s.svc, Method: method, Path: path, RequestBytes: body,
		HeaderKeys: []string{"accept", "content-type"}, ContentType: "application/json",
		Destination: Destination{Host: host, Port: 443}}
	if ip != "" {
		f.Destination.IP = netip.MustParseAddr(ip)
	}
	return f
}

func (s stream) decide(at time.Duration, ip, host, method, path string, body int64) Verdict {
	return s.m.Decide(s.req(at, ip, host, method, path, body))
}

func reasons(v Verdict) string { return strings.Join(v.Reasons.Strings(), ",") }

// learnAPI learns two endpoints on one host for 3 hours: item lookups every minute and an
// order every 10 minutes.
func learnAPI(t *testing.T, cfg Config) stream {
	t.Helper()
	if cfg.LearnWindow == 0 {
		cfg.LearnWindow = 3 * time.Hour
	}
	cfg.LearnMinRequests = 10
	cfg.ProbationInterval = time.Hour
	s := stream{m: mustModel(t, cfg), svc: "shop/checkout"}
	for i := range 181 {
		at := time.Duration(i) * time.Minute
		s.decide(at, "203.0.113.7", "api.example.com", "GET", fmt.Sprintf("/v1/items/%d", 1000+i), 0)
		if i%10 == 5 {
			s.decide(at+time.Second, "203.0.113.7", "api.example.com", "POST", "/v1/orders", 900+int64(i%100))
		}
	}
	if mode, _ := s.m.Mode(s.svc); mode != ModeMonitor {
		t.Fatalf("after learning: mode %s", mode)
	}
	return s
}

func TestShapesAfterLearning(t *testing.T) {
	s := learnAPI(t, Config{})
	h := 3 * time.Hour
	if v := s.decide(h+time.Minute, "203.0.113.7", "api.example.com", "GET", "/v1/items/77777", 0); v.Action != Allow {
		t.Fatalf("known shape with a new id: %+v %s", v, reasons(v))
	}
	export := func(at time.Duration) Verdict {
		return s.decide(at, "203.0.113.7", "api.example.com", "GET", "/internal/admin/export?limit=100000", 0)
	}
	// A new shape alerts, and repeating it within one interval teaches nothing (twenty
	// repeats in twenty seconds are also a rate spike).
	for i := range 20 {
		if v := export(h + 2*time.Minute + time.Duration(i)*time.Second); v.Action != Alert || !v.Reasons.Has(ReasonNewShape) {
			t.Fatalf("repeat %d of a new shape: %s %s", i, v.Action, reasons(v))
		}
	}
	// Seen in a second and a third distinct hour: it has served its probation.
	if v := export(h + 70*time.Minute); !v.Reasons.Has(ReasonNewShape) {
		t.Fatalf("second interval: %s", reasons(v))
	}
	if v := export(h + 130*time.Minute); !v.Reasons.Has(ReasonNewShape) {
		t.Fatalf("third interval (enters the baseline after this decision): %s", reasons(v))
	}
	v := export(h + 131*time.Minute)
	if v.Reasons.Has(ReasonNewShape) {
		t.Fatalf("after probation: %s", reasons(v))
	}
	r, _ := s.m.Service(s.svc)
	var got []string
	for _, sh := range r.Shapes {
		got = append(got, sh.Method+" "+sh.Path+" "+sh.Source)
	}
	want := []string{"GET /internal/admin/export probation", "GET /v1/items/{id} flow", "POST /v1/orders flow"}
	if !slices.Equal(got, want) {
		t.Fatalf("shapes %v, want %v", got, want)
	}
}

func TestShapeFeedback(t *testing.T) {
	s := learnAPI(t, Config{})
	h := 3 * time.Hour
	const dest = "api.example.com:443"
	del := func(at time.Duration) Verdict {
		return s.decide(at, "203.0.113.7", "api.example.com", "DELETE", "/v1/orders/42", 0)
	}
	if v := del(h); reasons(v) != "new_shape" {
		t.Fatalf("new shape: %s", reasons(v))
	}
	text := "DELETE /v1/orders/{id} q:[] h:[accept,content-type] ct:application/json b:0"
	if err := s.m.Reject(s.svc, Feedback{Destination: dest, Shape: text, By: "alice", At: t0}); err != nil {
		t.Fatal(err)
	}
	for i := range 5 { // five distinct hours: a rejected shape never serves probation
		if v := del(h + time.Duration(i)*time.Hour); reasons(v) != "new_shape" {
			t.Fatalf("rejected shape, hour %d: %s", i, reasons(v))
		}
	}
	if err := s.m.Approve(s.svc, Feedback{Destination: dest, Shape: text, By: "bob", At: t0}); err != nil {
		t.Fatal(err)
	}
	if v := del(h + 6*time.Hour); v.Action != Allow {
		t.Fatalf("approved shape: %s %s", v.Action, reasons(v))
	}
	r, _ := s.m.Service(s.svc)
	if len(r.Feedback) != 2 || r.Feedback[0].Action != "reject" || r.Feedback[0].By != "alice" || r.Feedback[1].By != "bob" {
		t.Fatalf("feedback %+v", r.Feedback)
	}
	if err := s.m.Approve(s.svc, Feedback{Destination: dest, Shape: "not a shape"}); err == nil {
		t.Fatal("a malformed shape was accepted")
	}
}

func TestRateSpike(t *testing.T) {
	// A worker that calls its API about 5 times an hour for two days, then 50 times an hour.
	m := mustModel(t, Config{LearnWindow: 48 * time.Hour, LearnMinRequests: 10})
	s := stream{m: m, svc: "jobs/worker"}
	at := time.Duration(0)
	for at <= 48*time.Hour {
		s.decide(at, "192.0.2.10", "boxes.example.com", "POST", "/v1/moves", 100)
		at += 12 * time.Minute
	}
	if mode, _ := m.Mode(s.svc); mode != ModeMonitor {
		t.Fatalf("mode %s", mode)
	}
	var first time.Duration = -1
	for i := range 150 { // 3 hours at 50 an hour
		v := s.decide(at+time.Duration(i)*72*time.Second, "192.0.2.10", "boxes.example.com", "POST", "/v1/moves", 100)
		if v.Reasons.Has(ReasonRateSpike) {
			first = time.Duration(i) * 72 * time.Second
			break
		}
		if v.Action != Allow {
			t.Fatalf("before the spike was seen: %s", reasons(v))
		}
	}
	if first < 0 || first > 30*time.Minute {
		t.Fatalf("rate spike flagged after %v, want within 30 minutes", first)
	}
}

func TestVolumeSpike(t *testing.T) {
	m := mustModel(t, Config{LearnWindow: 6 * time.Hour, LearnMinRequests: 10})
	s := stream{m: m, svc: "billing/invoicer"}
	at := time.Duration(0)
	for at < 6*time.Hour {
		s.decide(at, "192.0.2.80", "storage.example.com", "PUT", "/bucket/invoice-1", 10_000+int64(at/time.Minute)%3000)
		at += 2 * time.Minute
	}
	// The first flow at the end of the window is judged, not learned (issue 11): it must be
	// of a learned shape to pass.
	if v := s.decide(at, "192.0.2.80", "storage.example.com", "PUT", "/bucket/invoice-1", 12_000); v.Action != Allow {
		t.Fatalf("ordinary upload: %s", reasons(v))
	}
	v := s.decide(at+2*time.Minute, "192.0.2.80", "storage.example.com", "PUT", "/bucket/invoice-3", 50<<20)
	if !v.Reasons.Has(ReasonVolumeSpike) || v.Action != Alert {
		t.Fatalf("50 MiB upload: %s %s", v.Action, reasons(v))
	}
}

func TestBurst(t *testing.T) {
	m := mustModel(t, Config{LearnWindow: 3 * time.Hour, LearnMinRequests: 10, Disabled: Reasons(0).With(ReasonRateSpike)})
	s := stream{m: m, svc: "shop/cart"}
	at := time.Duration(0)
	for at < 3*time.Hour {
		s.decide(at, "10.96.0.20", "inventory.shop.svc", "GET", "/items/1", 0)
		at += 30 * time.Second
	}
	if v := s.decide(at, "10.96.0.20", "inventory.shop.svc", "GET", "/items/2", 0); v.Action != Allow {
		t.Fatalf("ordinary call: %s", reasons(v))
	}
	flagged := 0
	for i := range 300 { // 300 calls in one minute
		v := s.decide(at+time.Minute+time.Duration(i)*100*time.Millisecond, "10.96.0.20", "inventory.shop.svc", "GET", "/items/3", 0)
		if v.Reasons.Has(ReasonBurst) {
			flagged++
		}
	}
	if flagged < 200 {
		t.Fatalf("burst flagged on %d of 300 calls in one minute", flagged)
	}
}

// destinationsOnly turns off the scored detectors, for tests of the destination checks.
var destinationsOnly = Reasons(0).With(ReasonNewShape).With(ReasonRareShape).With(ReasonRateSpike).With(ReasonBurst).With(ReasonVolumeSpike)

// TestHostsMoveWhereDNSSays: a learned host reached at an IP it was not learned at is known
// only when the IP is among the host's fresh DNS answers. Its learned prefixes are kept (and
// survive a restore) but vouch for nothing without DNS.
func TestHostsMoveWhereDNSSays(t *testing.T) {
	res := fakeResolver{"api.example.com": {netip.MustParseAddr("203.0.113.99"), netip.MustParseAddr("2001:db8:1:ff::1")}}
	for _, tc := range []struct {
		name     string
		resolver Resolver
		ip       string
		want     Action
	}{
		{"in DNS, same /24", res, "203.0.113.99", Allow},
		{"in DNS, same /48", res, "2001:db8:1:ff::1", Allow},
		{"not in DNS, same /24", res, "203.0.113.98", Block},
		{"no resolver, same /24", nil, "203.0.113.99", Block},
		{"no resolver, same /48", nil, "2001:db8:1:ff::1", Block},
		{"no resolver, learned IP", nil, "203.0.113.7", Allow},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := mustModel(t, Config{Disabled: destinationsOnly, Resolver: tc.resolver})
			s := stream{m: m, svc: "shop/checkout"}
			s.decide(0, "203.0.113.7", "api.example.com", "GET", "/", 0)
			s.decide(time.Second, "2001:db8:1:2::7", "api.example.com", "GET", "/", 0)
			setMode(t, m, s.svc, ModeEnforce)
			if v := s.decide(time.Hour, tc.ip, "api.example.com", "GET", "/", 0); v.Action != tc.want {
				t.Errorf("%s: %s %s, want %s", tc.ip, v.Action, reasons(v), tc.want)
			}
			r, _ := m.Service(s.svc)
			m2 := mustModel(t, Config{Disabled: destinationsOnly, Resolver: tc.resolver})
			if err := m2.Restore(r); err != nil {
				t.Fatal(err)
			}
			if v := m2.Decide(s.req(2*time.Hour, tc.ip, "api.example.com", "GET", "/", 0)); v.Action != tc.want {
				t.Errorf("after restore: %s %s, want %s", v.Action, reasons(v), tc.want)
			}
			if got := fmt.Sprint(r.Destinations[len(r.Destinations)-1].Prefixes); tc.want == Allow && got == "[]" {
				t.Errorf("prefixes not kept: %v", r.Destinations)
			}
		})
	}
}

// fakeResolver answers from a fixed table.
type fakeResolver map[string][]netip.Addr

func (r fakeResolver) Lookup(host string) ([]netip.Addr, bool) {
	a, ok := r[host]
	return a, ok
}

func TestHostIPMismatch(t *testing.T) {
	res := fakeResolver{
		"api.example.com":  {netip.MustParseAddr("198.51.100.20")},
		"cdn.example.net":  {netip.MustParseAddr("192.0.2.1")},
		"evil.example.org": {netip.MustParseAddr("192.0.2.200")},
	}
	m := mustModel(t, Config{Resolver: res, Disabled: destinationsOnly})
	s := stream{m: m, svc: "shop/checkout"}
	s.decide(0, "203.0.113.7", "api.example.com", "GET", "/", 0)
	setMode(t, m, s.svc, ModeEnforce)
	for _, tc := range []struct {
		name, ip, host string
		want           Action
		reasons        string
	}{
		{"learned host where DNS says it is", "198.51.100.20", "api.example.com", Allow, ""},
		{"learned host sent to an IP it does not resolve to", "192.0.2.200", "api.example.com", Block, "new_destination,host_ip_mismatch"},
		{"known IP with a foreign Host header", "203.0.113.7", "evil.example.org", Block, "host_ip_mismatch"},
		{"unknown name not in DNS yet", "203.0.113.7", "unresolved.example.com", Allow, ""},
	} {
		v := s.decide(time.Hour, tc.ip, tc.host, "GET", "/", 0)
		if v.Action != tc.want || reasons(v) != tc.reasons {
			t.Errorf("%s: %s %q, want %s %q", tc.name, v.Action, reasons(v), tc.want, tc.reasons)
		}
	}
}

func TestDestinationProbationInMonitorOnly(t *testing.T) {
	for _, mode := range []Mode{ModeMonitor, ModeEnforce} {
		m := mustModel(t, Config{Disabled: destinationsOnly})
		s := stream{m: m, svc: "shop/checkout"}
		s.decide(0, "203.0.113.7", "api.example.com", "GET", "/", 0)
		setMode(t, m, s.svc, mode)
		// A hundred requests in one day, then one on each of two more days.
		for i := range 100 {
			s.decide(time.Hour+time.Duration(i)*time.Minute, "192.0.2.50", "new.example.com", "GET", "/", 0)
		}
		s.decide(25*time.Hour, "192.0.2.50", "new.example.com", "GET", "/", 0)
		s.decide(49*time.Hour, "192.0.2.50", "new.example.com", "GET", "/", 0)
		v := s.decide(49*time.Hour+time.Minute, "192.0.2.50", "new.example.com", "GET", "/", 0)
		known := !v.Reasons.Has(ReasonNewDestination)
		if known != (mode == ModeMonitor) {
			t.Errorf("%s: after three distinct days the destination is known=%v (%s)", mode, known, reasons(v))
		}
	}
}

func TestAlertBudgetCalibration(t *testing.T) {
	// Two services learn for a day. "quiet" always makes the same calls; "noisy" also calls a
	// new endpoint every 20 minutes. The noisy one's threshold rises so that its kind of noise
	// stays within the budget, and it raises fewer new_shape alerts than it would at 0.5.
	m := mustModel(t, Config{LearnWindow: 24 * time.Hour, LearnMinRequests: 10})
	quiet, noisy := stream{m: m, svc: "a/quiet"}, stream{m: m, svc: "a/noisy"}
	for i := range 24 * 60 {
		at := time.Duration(i) * time.Minute
		quiet.decide(at, "192.0.2.1", "api.example.com", "GET", "/v1/x", 0)
		noisy.decide(at, "192.0.2.1", "api.example.com", "GET", "/v1/x", 0)
		if i%20 == 0 {
			noisy.decide(at+time.Second, "192.0.2.1", "api.example.com", "GET", fmt.Sprintf("/v1/report-%c%c", 'a'+i/20%26, 'a'+i/520), 0)
		}
	}
	quiet.decide(24*time.Hour, "192.0.2.1", "api.example.com", "GET", "/v1/x", 0)
	noisy.decide(24*time.Hour, "192.0.2.1", "api.example.com", "GET", "/v1/x", 0)
	rq, _ := m.Service("a/quiet")
	rn, _ := m.Service("a/noisy")
	if rq.Mode != ModeMonitor || rn.Mode != ModeMonitor {
		t.Fatalf("modes %s %s", rq.Mode, rn.Mode)
	}
	if rq.Calibration.Threshold > 0.55 {
		t.Errorf("quiet service threshold %v, want near the 0.5 alarm level", rq.Calibration.Threshold)
	}
	if rn.Calibration.Threshold <= rq.Calibration.Threshold {
		t.Errorf("noisy threshold %v not above quiet %v", rn.Calibration.Threshold, rq.Calibration.Threshold)
	}
	// A new endpoint on the quiet service alerts; the noisy one's usual churn does not.
	if v := quiet.decide(25*time.Hour, "192.0.2.1", "api.example.com", "GET", "/v1/report-zz", 0); !v.Reasons.Has(ReasonNewShape) {
		t.Errorf("quiet service, new endpoint: %s", reasons(v))
	}
	alerts := 0
	for i := range 72 { // another day of churn
		v := noisy.decide(25*time.Hour+time.Duration(i)*20*time.Minute, "192.0.2.1", "api.example.com", "GET", fmt.Sprintf("/v1/report-%d", i), 0)
		if v.Reasons.Has(ReasonNewShape) {
			alerts++
		}
	}
	if alerts > 2 {
		t.Errorf("noisy service raised %d new_shape alerts on a day of its usual churn, budget 1/day", alerts)
	}
}

func TestShapesAndFeedbackSurviveTheStore(t *testing.T) {
	s := learnAPI(t, Config{})
	const dest = "api.example.com:443"
	if err := s.m.Reject(s.svc, Feedback{Destination: "192.0.2.66:443", By: "alice"}); err != nil {
		t.Fatal(err)
	}
	st := newMemStore()
	p := &Persister{Model: s.m, Store: st}
	if err := p.Flush(); err != nil {
		t.Fatal(err)
	}
	m2 := mustModel(t, Config{LearnWindow: 3 * time.Hour, LearnMinRequests: 10, ProbationInterval: time.Hour})
	if _, err := m2.Load(st); err != nil {
		t.Fatal(err)
	}
	s2 := stream{m: m2, svc: s.svc}
	h := 4 * time.Hour
	if v := s2.decide(h, "203.0.113.7", "api.example.com", "POST", "/v1/orders", 950); v.Reasons.Has(ReasonNewShape) || v.Reasons.Has(ReasonNewDestination) {
		t.Fatalf("learned shape after restore: %s", reasons(v))
	}
	if v := s2.decide(h, "203.0.113.7", "api.example.com", "PATCH", "/v1/orders", 950); !v.Reasons.Has(ReasonNewShape) {
		t.Fatalf("new shape after restore: %s", reasons(v))
	}
	// The rejection survived: the destination never passes probation.
	for d := range 4 {
		s2.decide(h+time.Duration(d)*24*time.Hour, "192.0.2.66", "", "GET", "/", 0)
	}
	if v := s2.decide(h+100*time.Hour, "192.0.2.66", "", "GET", "/", 0); !v.Reasons.Has(ReasonNewDestination) {
		t.Fatalf("rejected destination after restore: %s", reasons(v))
	}
	r, _ := m2.Service(s.svc)
	if len(r.Shapes) != 2 || r.Shapes[0].Destination != dest {
		t.Fatalf("restored shapes %+v", r.Shapes)
	}
}

func TestReplayIsDeterministic(t *testing.T) {
	run := func() []Verdict {
		s := learnAPI(t, Config{})
		var out []Verdict
		for i := range 200 {
			at := 3*time.Hour + time.Duration(i)*17*time.Second
			out = append(out, s.decide(at, "203.0.113.7", "api.example.com", "GET", fmt.Sprintf("/v1/items/%d", i%7), int64(i)))
			out = append(out, s.decide(at, "198.51.100.1", "", "POST", "/x", 10))
		}
		return out
	}
	a, b := run(), run()
	if !slices.Equal(a, b) {
		t.Fatal("two runs of the same events gave different verdicts")
	}
}
