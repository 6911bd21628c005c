package flowmodel

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

// noveltyFlow is a GET of svc to ip:port, named host ("" for none), at t0+at.
func noveltyFlow(svc, ip string, port uint16, host string, at time.Duration) *Flow {
	f := &Flow{Time: t0.Add(at), Service: svc, Method: "GET", Path: "/", Destination: Destination{Host: host, Port: port}}
	if ip != "" {
		f.Destination.IP = netip.MustParseAddr(ip)
	}
	return f
}

// noveltyResolver knows one more host of the vendor's domain.
var noveltyResolver = fakeResolver{"eu.vendor.example.com": {netip.MustParseAddr("203.0.113.99")}}

// noveltyModel is a model whose service "iot/cam" learned a cloud API by name, an NTP server
// by IP, and a DNS resolver, then monitors.
func noveltyModel(t *testing.T) *Model {
	t.Helper()
	m := mustModel(t, Config{LearnWindow: time.Hour, LearnMinRequests: 1, Disabled: destinationsOnly, Resolver: noveltyResolver})
	for i, f := range []*Flow{
		noveltyFlow("iot/cam", "203.0.113.10", 443, "api.vendor.example.com", 0),
		noveltyFlow("iot/cam", "198.51.100.20", 123, "", time.Minute),
		noveltyFlow("iot/cam", "192.0.2.53", 53, "", 2*time.Minute),
	} {
		if v := m.Decide(f); v.Mode != ModeLearn {
			t.Fatalf("learning flow %d: mode %s", i, v.Mode)
		}
	}
	setMode(t, m, "iot/cam", ModeMonitor)
	return m
}

// TestNewDestinationScoreOrder: every new destination alerts, and scores above any soft
// anomaly; among them, one far from what the service uses (a port it never used, a domain it
// never named) outranks one near it (another host of a domain it names, then another address
// of a network and port it uses).
func TestNewDestinationScoreOrder(t *testing.T) {
	cases := []struct {
		name string
		f    *Flow
	}{
		{"another host of the vendor's domain", noveltyFlow("iot/cam", "203.0.113.99", 443, "eu.vendor.example.com", time.Hour)},
		{"same /24 and port as the learned NTP server", noveltyFlow("iot/cam", "198.51.100.21", 123, "", time.Hour)},
		{"unknown domain on a known port", noveltyFlow("iot/cam", "192.0.2.200", 443, "cdn.other.example.net", time.Hour)},
		{"raw IP on a port never used", noveltyFlow("iot/cam", "100.64.7.7", 6667, "", time.Hour)},
	}
	prev := maxSoftScore
	for _, tc := range cases {
		m := noveltyModel(t) // a model each: fan-out must not carry over
		v := m.Decide(tc.f)
		if v.Action != Alert || !v.Reasons.Has(ReasonNewDestination) {
			t.Fatalf("%s: %s %s; want alerted as new_destination", tc.name, v.Action, reasons(v))
		}
		if !(v.Score > prev) || v.Score > 1 {
			t.Errorf("%s: score %v; want above %v (the case before it, or the soft cap) and at most 1", tc.name, v.Score, prev)
		}
		prev = v.Score
	}
}

// TestAdversaryBorrowedNamesAreNotNear: the name a workload writes is its own word. A
// host of a domain the service uses, at an IP its DNS answers do not hold, scores as an
// unknown domain would; a host the service uses, at an address nothing vouches for, scores
// no lower; and a host the resolver places elsewhere scores 1.
func TestAdversaryBorrowedNamesAreNotNear(t *testing.T) {
	score := func(f *Flow) float64 {
		t.Helper()
		v := noveltyModel(t).Decide(f)
		if v.Action != Alert || !v.Reasons.Has(ReasonNewDestination) {
			t.Fatalf("%+v: %s %s; want alerted as new_destination", f.Destination, v.Action, reasons(v))
		}
		return v.Score
	}
	unknown := score(noveltyFlow("iot/cam", "192.0.2.201", 443, "cdn.other.example.net", time.Hour))
	vouched := score(noveltyFlow("iot/cam", "203.0.113.99", 443, "eu.vendor.example.com", time.Hour))
	if !(vouched < unknown) {
		t.Fatalf("a vouched host of a known domain scores %v, an unknown domain %v; want it below", vouched, unknown)
	}
	for _, tc := range []struct {
		name string
		f    *Flow
		want float64
	}{
		{"a known domain's name, unresolved", noveltyFlow("iot/cam", "192.0.2.201", 443, "x.vendor.example.com", time.Hour), unknown},
		{"the known API's name at another address", noveltyFlow("iot/cam", "192.0.2.201", 443, "api.vendor.example.com", time.Hour), unknown},
		{"the vendor's other host at an address DNS does not give", noveltyFlow("iot/cam", "192.0.2.201", 443, "eu.vendor.example.com", time.Hour), 1},
	} {
		if got := score(tc.f); got < tc.want {
			t.Errorf("%s: score %v; want at least %v", tc.name, got, tc.want)
		}
	}
}

// TestAdversaryScanRanksFirst: a compromised device sweeping addresses (a horizontal port
// scan, or a worm trying a C2 list) meets a new destination with every flow; its fan-out
// drives the scores to 1, above a single new address on a port the device already uses, and
// a later flow of the scan never scores below an earlier one while the sweep goes on.
func TestAdversaryScanRanksFirst(t *testing.T) {
	m := noveltyModel(t)
	one := m.Decide(noveltyFlow("iot/cam", "198.51.100.99", 123, "", time.Hour))
	m = noveltyModel(t)
	var last Verdict
	for i := range 40 {
		f := noveltyFlow("iot/cam", fmt.Sprintf("100.64.%d.%d", i/200, 1+i%200), 23, "", time.Hour+time.Duration(i)*time.Second)
		v := m.Decide(f)
		if v.Action != Alert || !v.Reasons.Has(ReasonNewDestination) {
			t.Fatalf("scan flow %d: %s %s; want alerted", i, v.Action, reasons(v))
		}
		if i > 0 && v.Score < last.Score {
			t.Fatalf("scan flow %d scores %v, below the flow before it (%v)", i, v.Score, last.Score)
		}
		last = v
	}
	if last.Score != 1 || !(last.Score > one.Score) {
		t.Errorf("after 40 addresses in 40s the scan scores %v, a lone new NTP address %v; want 1 and above", last.Score, one.Score)
	}
	// A beacon to one new address does not fan out: calling it again and again stays where
	// its first call was.
	m = noveltyModel(t)
	first := m.Decide(noveltyFlow("iot/cam", "100.64.1.1", 8080, "", time.Hour))
	for i := range 30 {
		v := m.Decide(noveltyFlow("iot/cam", "100.64.1.1", 8080, "", time.Hour+time.Duration(i+1)*time.Second))
		if v.Score != first.Score {
			t.Fatalf("beacon call %d scores %v, first call %v; want the same", i, v.Score, first.Score)
		}
	}
}

// TestNoveltySurvivesRestore: what the baseline says of nearby destinations is rebuilt from
// the stored destinations, so a restart does not turn every new address of a known network
// into a far one.
func TestNoveltySurvivesRestore(t *testing.T) {
	m := noveltyModel(t)
	near := noveltyFlow("iot/cam", "198.51.100.21", 123, "", time.Hour)
	want := m.Decide(near).Score
	m2 := mustModel(t, Config{LearnWindow: time.Hour, LearnMinRequests: 1, Disabled: destinationsOnly, Resolver: noveltyResolver})
	for _, r := range m.Services() {
		if err := m2.Restore(r); err != nil {
			t.Fatal(err)
		}
	}
	if got := m2.Decide(noveltyFlow("iot/cam", "198.51.100.21", 123, "", time.Hour)).Score; got != want {
		t.Errorf("after restore the near address scores %v, before %v", got, want)
	}
}

// TestAdversaryNearbySetsAreBounded: a service that learns thousands of destinations (ports,
// domains, networks) keeps bounded sets; once a set overflows it stops saying "never used".
func TestAdversaryNearbySetsAreBounded(t *testing.T) {
	m := mustModel(t, Config{LearnWindow: time.Hour, LearnMinRequests: 1, Disabled: destinationsOnly})
	for i := range 2000 {
		f := noveltyFlow("iot/cam", fmt.Sprintf("10.%d.%d.1", i/250, i%250), uint16(1000+i), fmt.Sprintf("h%d.d%d.com", i, i), time.Duration(i)*time.Millisecond)
		m.Decide(f)
	}
	s := m.lookup("iot/cam", false)
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.near.ports) > maxNearPorts || len(s.near.domains) > maxNearDomains || len(s.near.nets) > maxNearNets {
		t.Fatalf("nearby sets grew to %d ports, %d domains, %d nets", len(s.near.ports), len(s.near.domains), len(s.near.nets))
	}
	if s.near.full != nearPorts|nearDomains|nearNets {
		t.Errorf("full = %b; want every set marked full", s.near.full)
	}
}

func TestRegistrable(t *testing.T) {
	for _, tc := range []struct{ host, want string }{
		{"api.example.com", "example.com"},
		{"example.com", "example.com"},
		{"a.b.foo.co.uk", "foo.co.uk"},
		{"com", ""},
		{"co.uk", ""},
		{"kubernetes.default.svc.cluster.local", ""}, // unlisted TLD: no evidence
		{"payments-db.pay.svc", ""},
		{"metadata.google.internal", ""},
		{"vault.service.consul", ""},
		{"", ""},
	} {
		got, ok := registrable(tc.host)
		if got != tc.want || ok != (tc.want != "") {
			t.Errorf("registrable(%q) = %q, %v; want %q", tc.host, got, ok, tc.want)
		}
	}
}

// TestAdversaryNeighboursMustBeVouchedFor: what makes a new destination "near" is what the
// service learned or an operator approved. A C2 domain admitted by probation (three days of
// alerts) does not make its next host near; a rejected host's domain stops being near; a
// cluster's service names (an unlisted TLD) are never one domain; and, where recorded names
// are trusted (a replay), a known name at an address it was never seen at is still not near.
func TestAdversaryNeighboursMustBeVouchedFor(t *testing.T) {
	trusted := func(t *testing.T) *Model {
		m := mustModel(t, Config{LearnWindow: time.Hour, LearnMinRequests: 1, Disabled: destinationsOnly, TrustHostNames: true})
		m.Decide(noveltyFlow("iot/cam", "203.0.113.10", 443, "api.vendor.example.com", 0))
		m.Decide(noveltyFlow("iot/cam", "10.96.0.10", 443, "inventory.shop.svc.cluster.local", time.Minute))
		setMode(t, m, "iot/cam", ModeMonitor)
		return m
	}
	score := func(m *Model, f *Flow) float64 {
		t.Helper()
		v := m.Decide(f)
		if !v.Reasons.Has(ReasonNewDestination) {
			t.Fatalf("%+v: %s; want new_destination", f.Destination, reasons(v))
		}
		return v.Score
	}
	far := score(trusted(t), noveltyFlow("iot/cam", "198.51.100.1", 443, "x.unrelated.net", 2*time.Hour))
	near := score(trusted(t), noveltyFlow("iot/cam", "198.51.100.1", 443, "eu.vendor.example.com", 2*time.Hour))
	if !(near < far) {
		t.Fatalf("a vouched host of the learned domain scores %v, an unrelated one %v; want it below", near, far)
	}

	t.Run("probation", func(t *testing.T) {
		m := trusted(t)
		for day := range 3 {
			m.Decide(noveltyFlow("iot/cam", "192.0.2.66", 443, "a.c2.example.net", time.Hour+time.Duration(day)*24*time.Hour))
		}
		if v := m.Decide(noveltyFlow("iot/cam", "192.0.2.66", 443, "a.c2.example.net", 75*time.Hour)); v.Reasons.Has(ReasonNewDestination) {
			t.Fatalf("a.c2.example.net not admitted by probation: %s", reasons(v))
		}
		if got := score(m, noveltyFlow("iot/cam", "192.0.2.67", 443, "b.c2.example.net", 76*time.Hour)); got < far {
			t.Errorf("a sibling of a host admitted by probation scores %v; want at least %v (not near)", got, far)
		}
	})
	t.Run("rejected", func(t *testing.T) {
		m := trusted(t)
		if err := m.Reject("iot/cam", Feedback{Destination: "api.vendor.example.com:443", By: "test"}); err != nil {
			t.Fatal(err)
		}
		if got := score(m, noveltyFlow("iot/cam", "198.51.100.1", 443, "eu.vendor.example.com", 2*time.Hour)); got < far {
			t.Errorf("a sibling of a rejected host scores %v; want at least %v (not near)", got, far)
		}
	})
	t.Run("cluster names", func(t *testing.T) {
		if got := score(trusted(t), noveltyFlow("iot/cam", "10.96.7.7", 443, "kubernetes.default.svc.cluster.local", 2*time.Hour)); got < far {
			t.Errorf("another cluster service scores %v; want at least %v (not near)", got, far)
		}
	})
	t.Run("known name elsewhere", func(t *testing.T) {
		if got := score(trusted(t), noveltyFlow("iot/cam", "198.51.100.1", 443, "api.vendor.example.com", 2*time.Hour)); got < far {
			t.Errorf("the learned host at an address never seen scores %v; want at least %v (not near)", got, far)
		}
	})
}
