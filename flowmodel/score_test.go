package flowmodel

import (
	"testing"
	"time"
)

// TestScoreOrder: a soft anomaly on a known destination, however strong, scores below a new
// destination, so that ranking flows by score puts every never-seen destination first
// (issue 11: meshguard must not rank worse than a first-seen destination detector).
func TestScoreOrder(t *testing.T) {
	m := mustModel(t, Config{LearnWindow: 3 * time.Hour, LearnMinRequests: 10, Disabled: Reasons(0).With(ReasonRateSpike)})
	s := stream{m: m, svc: "shop/cart"}
	at := time.Duration(0)
	for at < 3*time.Hour {
		s.decide(at, "10.96.0.20", "inventory.shop.svc", "GET", "/items/1", 0)
		at += 30 * time.Second
	}
	if v := s.decide(at, "10.96.0.20", "inventory.shop.svc", "GET", "/items/1", 0); v.Action != Allow {
		t.Fatalf("ordinary call: %s", reasons(v))
	}
	// 3000 calls in one minute to the known destination: the burst detector saturates.
	maxSoft, bursts := 0.0, 0
	for i := range 3000 {
		v := s.decide(at+time.Minute+time.Duration(i)*20*time.Millisecond, "10.96.0.20", "inventory.shop.svc", "GET", "/items/1", 0)
		if v.Reasons.Has(ReasonBurst) {
			bursts++
		}
		if v.Reasons.Has(ReasonNewDestination) || v.Score > maxSoftScore || v.Score < 0 {
			t.Fatalf("call %d to a known destination: score %v, %s; want at most %v", i, v.Score, reasons(v), maxSoftScore)
		}
		maxSoft = max(maxSoft, v.Score)
	}
	if bursts == 0 || maxSoft != maxSoftScore {
		t.Fatalf("burst flagged %d times, highest score %v; want a saturated burst capped at %v", bursts, maxSoft, maxSoftScore)
	}
	v := s.decide(at+2*time.Minute, "192.0.2.99", "", "GET", "/items/1", 0)
	if !v.Reasons.Has(ReasonNewDestination) || v.Score > 1 || !(v.Score > maxSoft) {
		t.Fatalf("new destination: score %v, %s; want at most 1, above the burst's %v", v.Score, reasons(v), maxSoft)
	}
}

// TestAdversaryBeaconSitsOutProbation covers a careful attacker's trick: a beacon to a new IP
// that keeps calling, once a day, until probation admits it. It alerts (scored as a new
// destination, above every soft anomaly) all through probation; once admitted it no longer
// alerts but keeps scoring with the strongest soft anomalies, above the destinations the
// service learned, so it still ranks first among allowed flows, until an operator approves
// it.
func TestAdversaryBeaconSitsOutProbation(t *testing.T) {
	m := mustModel(t, Config{Disabled: destinationsOnly})
	s := stream{m: m, svc: "shop/checkout"}
	s.decide(0, "203.0.113.7", "api.example.com", "GET", "/", 0)
	setMode(t, m, s.svc, ModeMonitor)
	for day := range 3 {
		v := s.decide(time.Hour+time.Duration(day)*24*time.Hour, "192.0.2.50", "", "GET", "/", 0)
		if v.Action != Alert || !(v.Score > maxSoftScore) || !v.Reasons.Has(ReasonNewDestination) {
			t.Fatalf("day %d of probation: %s score %v %s; want alerted with a score above %v", day, v.Action, v.Score, reasons(v), maxSoftScore)
		}
	}
	learned := s.decide(50*time.Hour, "203.0.113.7", "api.example.com", "GET", "/", 0)
	beacon := s.decide(50*time.Hour+time.Minute, "192.0.2.50", "", "GET", "/", 0)
	if beacon.Action != Allow || beacon.Reasons.Has(ReasonNewDestination) {
		t.Fatalf("after three days: %s %s; want admitted by probation", beacon.Action, reasons(beacon))
	}
	if learned.Action != Allow || !(beacon.Score >= probationScore) || !(beacon.Score > learned.Score) {
		t.Errorf("beacon admitted by probation scores %v, learned destination %v (%s); want the beacon at least %v and above",
			beacon.Score, learned.Score, learned.Action, probationScore)
	}
	if err := m.Approve(s.svc, Feedback{Destination: "192.0.2.50:443", By: "test"}); err != nil {
		t.Fatal(err)
	}
	if v := s.decide(50*time.Hour+2*time.Minute, "192.0.2.50", "", "GET", "/", 0); v.Action != Allow || v.Score != learned.Score {
		t.Errorf("approved beacon: %s score %v; want allowed, scored as a learned destination (%v)", v.Action, v.Score, learned.Score)
	}
}
