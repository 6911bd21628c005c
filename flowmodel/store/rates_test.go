package store

import (
	"net/netip"
	"testing"
	"time"

	"github.com/meshguard/meshguard/flowmodel"
	"github.com/meshguard/meshguard/flowmodel/rate"
)

// TestRateDecisionSurvivesRestart: an operator rejects a flood to a known destination (ten
// times its rate), meshguard restarts from its bbolt file, and the flood still alarms 30
// hours in, past the 24h probation that would otherwise make it the baseline. Without the
// detectors' saved states the restarted model would warm up again and learn the flood. The
// control, restarted without a rejection, adopts the flood after its probation.
func TestRateDecisionSurvivesRestart(t *testing.T) {
	cfg := flowmodel.Config{
		LearnWindow: 72 * time.Hour, EventClock: true,
		Disabled: flowmodel.Reasons(0).With(flowmodel.ReasonBurst).With(flowmodel.ReasonVolumeSpike).
			With(flowmodel.ReasonNewShape).With(flowmodel.ReasonRareShape),
		Seasonal: rate.SeasonalConfig{Threshold: 1e9}, // deaf: the destination's own CUSUM must hold
	}
	call := func(m *flowmodel.Model, from, to, every time.Duration) (spikes int) {
		for at := from; at < to; at += every {
			v := m.Decide(&flowmodel.Flow{Time: t0.Add(at), Service: "shop/api", Method: "GET", Path: "/v1/items", RequestBytes: 0,
				Destination: flowmodel.Destination{IP: netip.MustParseAddr("203.0.113.7"), Host: "api.example.com", Port: 443}})
			if v.Reasons.Has(flowmodel.ReasonRateSpike) {
				spikes++
			}
		}
		return spikes
	}
	flood := 72*time.Hour + time.Minute
	for _, tc := range []struct {
		name   string
		reject bool
	}{{"rejected", true}, {"control", false}} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			st, err := Open(dir, Options{})
			if err != nil {
				t.Fatal(err)
			}
			m, err := flowmodel.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			call(m, 0, flood, 5*time.Minute)
			if n := call(m, flood, flood+2*time.Hour, 30*time.Second); n == 0 {
				t.Fatal("2h of a 10× flood: no rate_spike")
			}
			if tc.reject {
				if err := m.RejectRate("shop/api"); err != nil {
					t.Fatal(err)
				}
			}
			m2 := restart(t, dir, st, m, cfg, 1)
			if n := call(m2, flood+2*time.Hour, flood+2*time.Hour+10*time.Minute, 30*time.Second); n == 0 {
				t.Errorf("right after the restart the flood does not alarm: the detector's state was lost")
			}
			call(m2, flood+2*time.Hour+10*time.Minute, flood+30*time.Hour, 30*time.Second)
			late := call(m2, flood+30*time.Hour, flood+31*time.Hour, 30*time.Second)
			if got := late > 0; got != tc.reject {
				t.Errorf("30h into the flood, after a restart: %d rate_spikes; want alarming %v", late, tc.reject)
			}
		})
	}
}
