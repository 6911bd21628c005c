package flowmodel

import (
	"testing"
	"time"
)

// TestRateStatesSavedWhenDue: the detectors' states ride on a save at most every
// rateSaveInterval of the service's clock while it has requests, at once after an operator's
// decision, and not at all for a service with no request since its last save.
func TestRateStatesSavedWhenDue(t *testing.T) {
	m := mustModel(t, Config{LearnWindow: time.Hour, LearnMinRequests: 1})
	s := stream{m: m, svc: "shop/api"}
	rates := func() *RateSnapshot {
		t.Helper()
		for _, r := range m.TakeChanges() {
			if r.Name == s.svc {
				return r.Rates
			}
		}
		return nil
	}
	s.decide(0, "203.0.113.7", "api.example.com", "GET", "/", 0)
	r := rates()
	if r == nil {
		t.Fatal("first save: no detector states")
	}
	if r.Service == nil || r.Seasonal == nil || len(r.Edges) != 1 { // the host entry: its IP shares its edge
		t.Fatalf("first save: %d edges; want the service's states and its destination's", len(r.Edges))
	}
	s.decide(time.Minute, "203.0.113.7", "api.example.com", "GET", "/", 0)
	if r := rates(); r != nil {
		t.Errorf("a minute later: states saved again")
	}
	if err := m.RejectRate(s.svc); err != nil {
		t.Fatal(err)
	}
	if r := rates(); r == nil {
		t.Errorf("after RejectRate: states not saved")
	}
	s.decide(rateSaveInterval+2*time.Minute, "203.0.113.7", "api.example.com", "GET", "/", 0)
	if r := rates(); r == nil {
		t.Errorf("after %s with requests: states not saved", rateSaveInterval)
	}
}
