package flowmodel

import (
	"encoding/json"
	"errors"
	"math"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestApproveKnown(t *testing.T) {
	res := fakeResolver{"api.example.com": {netip.MustParseAddr("203.0.113.5")}}
	m := mustModel(t, Config{Resolver: res})
	if _, err := m.ApproveKnown("ghost", Feedback{Destination: "api.example.com:443"}, nil); !errors.Is(err, ErrUnknownService) {
		t.Fatalf("unknown service: %v", err)
	}
	if m.HasService("ghost") {
		t.Fatal("approval created a service")
	}
	m.Decide(flow("svc", "198.51.100.1", 80, "", 0))
	m.SetMode("svc", ModeChange{Mode: ModeEnforce})
	a, err := m.ApproveKnown("svc", Feedback{Destination: "API.example.com.:443"}, []netip.Addr{netip.MustParseAddr("::ffff:192.0.2.7")})
	if err != nil {
		t.Fatal(err)
	}
	if a.Destination != "api.example.com:443" || strings.Join(a.Addresses, ",") != "192.0.2.7:443,203.0.113.5:443" || !a.Resolved {
		t.Fatalf("approval %+v", a)
	}
	for _, ip := range []string{"192.0.2.7", "203.0.113.5"} {
		f := flow("svc", ip, 443, "api.example.com", time.Second)
		if v := m.Decide(f); v.Reasons.Has(ReasonNewDestination) || v.Action == Block {
			t.Fatalf("%s after approval: %s %v", ip, v.Action, v.Reasons)
		}
	}
	if _, err := m.ApproveKnown("svc", Feedback{Destination: "192.0.2.1:443"}, []netip.Addr{netip.MustParseAddr("192.0.2.2")}); err == nil {
		t.Fatal("addresses with an IP destination accepted")
	}
}

// TestEncodable covers issue 10 case 6 at encoding: a record with times past year 9999,
// before the epoch and NaN numbers encodes as JSON, and the caller's slices are untouched.
func TestEncodable(t *testing.T) {
	y10k := time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)
	old := time.Date(1, 1, 2, 0, 0, 0, 0, time.UTC)
	dests := []DestinationRecord{{Destination: "a:1", FirstSeen: old, LastSeen: y10k}}
	r := ServiceRecord{Name: "s", Mode: ModeLearn, LastSeen: y10k, Destinations: dests,
		Shapes:      []ShapeRecord{{Destination: "a:1", Shape: "GET /", Weight: math.NaN(), LastSeen: y10k}},
		Calibration: &Calibration{Threshold: math.Inf(1), Histogram: []float64{1, math.NaN()}, Until: y10k}}
	if _, err := json.Marshal(r); err == nil {
		t.Fatal("the test record encodes as it is: the test tests nothing")
	}
	if n := r.Encodable(); n != 8 {
		t.Fatalf("changed %d values, want 8", n)
	}
	if _, err := json.Marshal(r); err != nil {
		t.Fatal(err)
	}
	if !dests[0].LastSeen.Equal(y10k) {
		t.Fatal("Encodable wrote the caller's slice")
	}
	if !r.Destinations[0].FirstSeen.Equal(MinEncodedTime) || !r.LastSeen.Equal(MaxEncodedTime) {
		t.Fatalf("clamped to %v, %v", r.Destinations[0].FirstSeen, r.LastSeen)
	}
}

// TestIPLiteralHostCountedOnce covers issue 11's review fix: a flow whose host is an IP
// literal (an access log's SNI, a Host header) is one destination, not an IP and a "host"
// spelled the same, listed and counted twice.
func TestIPLiteralHostCountedOnce(t *testing.T) {
	tests := []struct {
		name string
		d    Destination
		want string
	}{
		{"same IP", Destination{IP: netip.MustParseAddr("203.0.113.7"), Host: "203.0.113.7", Port: 443}, "203.0.113.7:443"},
		{"host only", Destination{Host: "203.0.113.8", Port: 443}, "203.0.113.8:443"},
		{"v6 host only", Destination{Host: "2001:db8::1", Port: 443}, "[2001:db8::1]:443"},
		{"other IP in host", Destination{IP: netip.MustParseAddr("203.0.113.9"), Host: "198.51.100.1", Port: 443}, "203.0.113.9:443"},
		{"hex-looking name", Destination{Host: "cafe.bad", Port: 443}, "cafe.bad:443"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// A name alone is taken as it comes here (as in a replay), so that the hex-looking
			// name is learned and shown to stay a name.
			m := mustModel(t, Config{TrustHostNames: true})
			m.Decide(&Flow{Service: "s", Time: time.Unix(1, 0), Destination: tt.d})
			m.Decide(&Flow{Service: "s", Time: time.Unix(2, 0), Destination: tt.d})
			r, _ := m.Service("s")
			if len(r.Destinations) != 1 || r.Destinations[0].Destination != tt.want || r.Destinations[0].Count != 2 {
				t.Fatalf("destinations %+v, want one %s counted 2", r.Destinations, tt.want)
			}
		})
	}
}
