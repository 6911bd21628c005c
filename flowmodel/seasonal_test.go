package flowmodel

import (
	"strings"
	"testing"
	"time"

	"github.com/meshguard/meshguard/flowmodel/rate"
)

// seasonT0 is a Monday midnight: the seasonal tests learn three whole days.
var seasonT0 = time.Date(2026, 1, 5, 0, 0, 0, 0, time.UTC)

const seasonLearn = 72 * time.Hour

// seasonModel returns a model that learns for three days of event time, judges every day
// by one hour-of-day profile, and runs no detector but the rate detectors; the rate CUSUM
// is made deaf, so that every rate_spike comes from the seasonal detector.
func seasonModel(t testing.TB) *Model {
	t.Helper()
	return mustModel(t, Config{
		LearnWindow: seasonLearn,
		Disabled:    Reasons(0).With(ReasonBurst).With(ReasonVolumeSpike).With(ReasonNewShape).With(ReasonRareShape),
		Rate:        rate.Config{Threshold: 1e9},
		Seasonal:    rate.SeasonalConfig{SameWeekends: true},
	})
}

// seasonFeed decides requests of svc to one known destination every `every` on [from, to)
// (times relative to seasonT0) and returns their verdicts.
func seasonFeed(m *Model, svc string, from, to, every time.Duration) []Verdict {
	var out []Verdict
	for at := from; at < to; at += every {
		f := flow(svc, "203.0.113.7", 443, "api.example.com", 0)
		f.Time = seasonT0.Add(at)
		out = append(out, m.Decide(f))
	}
	return out
}

// count returns how many verdicts carry reason r.
func count(vs []Verdict, r Reason) int {
	n := 0
	for _, v := range vs {
		if v.Reasons.Has(r) {
			n++
		}
	}
	return n
}

// seasonLearned returns a model whose service "shop/api" learned three days of 120
// requests an hour and is now in monitor mode.
func seasonLearned(t *testing.T) *Model {
	t.Helper()
	m := seasonModel(t)
	seasonFeed(m, "shop/api", 0, seasonLearn+time.Minute, 30*time.Second)
	if mode, _ := m.Mode("shop/api"); mode != ModeMonitor {
		t.Fatalf("mode after learning: %s, want monitor", mode)
	}
	return m
}

// TestSeasonalRise: after three days of 120 requests an hour, a fourth day at the same rate
// raises no rate_spike, and an hour at ten times the rate does; the requests within the
// hour's usual count pass, the excess alerts, with a score at the alarm level or above.
func TestSeasonalRise(t *testing.T) {
	m := seasonLearned(t)
	start := seasonLearn + time.Minute
	quiet := seasonFeed(m, "shop/api", start, 96*time.Hour, 30*time.Second)
	if n := count(quiet, ReasonRateSpike); n != 0 {
		t.Fatalf("%d of %d requests at the usual rate flagged rate_spike", n, len(quiet))
	}
	flood := seasonFeed(m, "shop/api", 96*time.Hour, 97*time.Hour, 3*time.Second)
	n := count(flood, ReasonRateSpike)
	if n == 0 {
		t.Fatalf("an hour at ten times the usual rate: no rate_spike in %d requests", len(flood))
	}
	if n > len(flood)-100 {
		t.Errorf("%d of %d requests flagged: the hour's usual count (about 120) should pass", n, len(flood))
	}
	for i, v := range flood {
		if v.Reasons.Has(ReasonRateSpike) && (v.Action != Alert || v.Score < alarmLevel) {
			t.Fatalf("request %d: %+v, want an alert scoring at least %g", i, v, alarmLevel)
		}
	}
	if count(flood[:100], ReasonRateSpike) != 0 {
		t.Error("the first 100 requests of the hour (within its usual count) were flagged")
	}

	// With rate_spike disabled the seasonal detector raises nothing on the same traffic.
	off := mustModel(t, Config{LearnWindow: seasonLearn, Disabled: Reasons(0).With(ReasonRateSpike).With(ReasonBurst).With(ReasonVolumeSpike),
		Seasonal: rate.SeasonalConfig{SameWeekends: true}})
	seasonFeed(off, "shop/api", 0, 96*time.Hour, 30*time.Second)
	if n := count(seasonFeed(off, "shop/api", 96*time.Hour, 97*time.Hour, 3*time.Second), ReasonRateSpike); n != 0 {
		t.Errorf("rate_spike disabled: %d requests flagged", n)
	}
}

// TestSeasonalDrop: a service that learned 120 requests an hour and goes silent for five
// hours has its drop reported once: on its next request (which alerts, never blocks, even in
// enforce mode) or by the sweep, whichever comes first, and not again by the other.
func TestSeasonalDrop(t *testing.T) {
	const silentFrom = 80 * time.Hour
	for _, tc := range []struct {
		name   string
		mode   Mode
		silent time.Duration
		sweep  bool // sweep during the silence
	}{
		{"next request, monitor", ModeMonitor, 5 * time.Hour, false},
		{"next request, enforce", ModeEnforce, 5 * time.Hour, false},
		{"sweep, monitor", ModeMonitor, 5 * time.Hour, true},
		{"next request after 30 hours", ModeMonitor, 30 * time.Hour, false},
		{"next request after three days (longer than the detector remembers)", ModeMonitor, 72 * time.Hour, false},
		{"sweep, three days", ModeMonitor, 72 * time.Hour, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			back := silentFrom + tc.silent
			m := seasonLearned(t)
			setMode(t, m, "shop/api", tc.mode)
			before := seasonFeed(m, "shop/api", seasonLearn+time.Minute, silentFrom, 30*time.Second)
			if n := count(before, ReasonRateDrop); n != 0 {
				t.Fatalf("%d requests at the usual rate flagged rate_drop", n)
			}
			var swept []RateDrop
			if tc.sweep {
				for at := silentFrom; at < back; at += 10 * time.Minute {
					swept = append(swept, m.SweepSeasonal(seasonT0.Add(at))...)
				}
				if len(swept) != 1 || swept[0].Service != "shop/api" || swept[0].Mode != tc.mode || swept[0].Score < alarmLevel ||
					swept[0].Expected < 60 || swept[0].Count != 0 {
					t.Fatalf("sweeps during the silence: %v, want one drop of shop/api", swept)
				}
				if !strings.Contains(swept[0].String(), "rate_drop") {
					t.Errorf("String() = %q", swept[0])
				}
			}
			after := seasonFeed(m, "shop/api", back, back+2*time.Hour, 30*time.Second)
			want := 1
			if tc.sweep {
				want = 0
			}
			if n := count(after, ReasonRateDrop); n != want {
				t.Fatalf("requests after the silence: %d flagged rate_drop, want %d", n, want)
			}
			if !tc.sweep {
				if v := after[0]; !v.Reasons.Has(ReasonRateDrop) || v.Action != Alert || v.Score < alarmLevel {
					t.Errorf("first request after the silence: %+v, want an alert with rate_drop", v)
				}
			}
			if d := m.SweepSeasonal(seasonT0.Add(back + 2*time.Hour)); len(d) != 0 {
				t.Errorf("sweep once the service is back: %v, want none", d)
			}
		})
	}
}

// TestSeasonalSparseSilent: a service that makes 3 requests an hour (below the seasonal
// floor, MinRate 20 an hour) and falls silent for a day raises no drop, by sweep or on its
// next request; nor does a service that is learning.
func TestSeasonalSparseSilent(t *testing.T) {
	m := seasonModel(t)
	seasonFeed(m, "shop/sparse", 0, 96*time.Hour, 20*time.Minute)
	seasonFeed(m, "shop/new", 90*time.Hour, 96*time.Hour, 30*time.Second) // learning
	if mode, _ := m.Mode("shop/sparse"); mode != ModeMonitor {
		t.Fatalf("mode after learning: %s, want monitor", mode)
	}
	for at := 96 * time.Hour; at < 120*time.Hour; at += 5 * time.Minute {
		if d := m.SweepSeasonal(seasonT0.Add(at)); len(d) != 0 {
			t.Fatalf("sweep at %s: %v, want no drop", at, d)
		}
	}
	if n := count(seasonFeed(m, "shop/sparse", 120*time.Hour, 121*time.Hour, 20*time.Minute), ReasonRateDrop); n != 0 {
		t.Errorf("sparse service back: %d requests flagged rate_drop", n)
	}
}

// TestSeasonalAcceptReject: AcceptRate ends a drop alarm (the sweep no longer reports it,
// and the next request is not flagged); both refuse an unknown service.
func TestSeasonalAcceptReject(t *testing.T) {
	m := seasonLearned(t)
	seasonFeed(m, "shop/api", seasonLearn+time.Minute, 80*time.Hour, 30*time.Second)
	if err := m.RejectRate("shop/api"); err != nil {
		t.Fatal(err)
	}
	if err := m.AcceptRate("shop/api"); err != nil {
		t.Fatal(err)
	}
	// Silent for five hours, then accepted: its quiet is the new normal.
	m.SweepSeasonal(seasonT0.Add(85 * time.Hour))
	if err := m.AcceptRate("shop/api"); err != nil {
		t.Fatal(err)
	}
	if d := m.SweepSeasonal(seasonT0.Add(85*time.Hour + time.Minute)); len(d) != 0 {
		t.Errorf("sweep after AcceptRate: %v, want none", d)
	}
	for _, f := range []func(string) error{m.AcceptRate, m.RejectRate} {
		if err := f("no/such"); err == nil {
			t.Error("unknown service accepted")
		}
	}
}

// TestAdversarySeasonalSpreadFlood plays a compromised workload that doubles its service's
// traffic but spreads it over twenty known destinations, each running at twice its own
// usual rate (under the rate CUSUM's ratio of 3, and under the 2× of its own expected count
// that lets the service's CUSUM flag a request), hoping no edge looks hot ("careful
// attacker": stay under every per-edge limit). The seasonal detector judges the service's
// total against its hour of day and flags the excess within three hours.
func TestAdversarySeasonalSpreadFlood(t *testing.T) {
	m := mustModel(t, Config{LearnWindow: seasonLearn, Seasonal: rate.SeasonalConfig{SameWeekends: true},
		Disabled: Reasons(0).With(ReasonBurst).With(ReasonVolumeSpike).With(ReasonNewShape).With(ReasonRareShape)})
	feed := func(from, to, every time.Duration) []Verdict {
		var out []Verdict
		i := 0
		for at := from; at < to; at += every {
			f := flow("shop/api", "203.0.113."+itoa(i%20), 443, "", 0)
			f.Time = seasonT0.Add(at)
			out = append(out, m.Decide(f))
			i++
		}
		return out
	}
	feed(0, 96*time.Hour, 6*time.Second) // 600 an hour, 30 per destination
	if n := count(feed(96*time.Hour, 99*time.Hour, 3*time.Second), ReasonRateSpike); n == 0 {
		t.Error("three hours at twice the usual rate over twenty destinations: no rate_spike")
	}
}

func itoa(i int) string {
	const digits = "0123456789"
	if i < 10 {
		return digits[i : i+1]
	}
	return itoa(i/10) + digits[i%10:i%10+1]
}

// TestSeasonalFloodOneEdge: a flood to one destination raises the service's hourly total;
// the seasonal rise flags the flooded destination's requests, never the service's ordinary
// calls to its other destinations that keep their usual rate.
func TestSeasonalFloodOneEdge(t *testing.T) {
	m := mustModel(t, Config{LearnWindow: seasonLearn, Seasonal: rate.SeasonalConfig{SameWeekends: true},
		Disabled: Reasons(0).With(ReasonBurst).With(ReasonVolumeSpike).With(ReasonNewShape).With(ReasonRareShape)})
	decide := func(at time.Duration, i int) Verdict {
		f := flow("shop/api", "203.0.113."+itoa(i), 443, "", 0)
		f.Time = seasonT0.Add(at)
		return m.Decide(f)
	}
	i := 0
	for at := time.Duration(0); at < 96*time.Hour; at += 6 * time.Second {
		decide(at, 1+i%20) // 600 an hour over twenty destinations
		i++
	}
	var flooded, others []Verdict
	for at := 96 * time.Hour; at < 99*time.Hour; at += time.Second {
		if at%(6*time.Second) == 0 {
			others = append(others, decide(at, 1+i%19))
			i++
		} else {
			flooded = append(flooded, decide(at, 20))
		}
	}
	if n := count(flooded, ReasonRateSpike); n == 0 {
		t.Fatalf("two hours of a flood to one known destination: no rate_spike in %d requests", len(flooded))
	}
	if n := count(others, ReasonRateSpike); n != 0 {
		t.Errorf("%d of %d ordinary calls to the other destinations flagged rate_spike", n, len(others))
	}
}

// TestAdversaryRateShiftDecisionsReachDestinations: a flood to one known destination (ten times its
// rate) raises that destination's rate_spike. Unjudged, the flood becomes its baseline after
// the 24h probation; RejectRate keeps it alarming past that; AcceptRate silences it at once.
// The seasonal detector is made deaf: the decisions must reach the destination's own CUSUM.
func TestAdversaryRateShiftDecisionsReachDestinations(t *testing.T) {
	newModel := func() *Model {
		m := mustModel(t, Config{
			LearnWindow: seasonLearn,
			Disabled:    Reasons(0).With(ReasonBurst).With(ReasonVolumeSpike).With(ReasonNewShape).With(ReasonRareShape),
			Seasonal:    rate.SeasonalConfig{Threshold: 1e9},
		})
		seasonFeed(m, "shop/api", 0, seasonLearn+time.Minute, 5*time.Minute)
		if mode, _ := m.Mode("shop/api"); mode != ModeMonitor {
			t.Fatalf("mode after learning: %s, want monitor", mode)
		}
		return m
	}
	flood := seasonLearn + time.Minute
	for _, tc := range []struct {
		name     string
		decide   func(*Model) error
		wantLate bool // still alarming 30h into the flood
		wantNext bool // alarming right after the decision
	}{
		{"no decision", nil, false, true},
		{"rejected", func(m *Model) error { return m.RejectRate("shop/api") }, true, true},
		{"accepted", func(m *Model) error { return m.AcceptRate("shop/api") }, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newModel()
			vs := seasonFeed(m, "shop/api", flood, flood+2*time.Hour, 30*time.Second)
			if n := count(vs, ReasonRateSpike); n == 0 {
				t.Fatalf("2h of a 10× flood: no rate_spike")
			}
			if tc.decide != nil {
				if err := tc.decide(m); err != nil {
					t.Fatal(err)
				}
			}
			next := seasonFeed(m, "shop/api", flood+2*time.Hour, flood+2*time.Hour+10*time.Minute, 30*time.Second)
			if got := count(next, ReasonRateSpike) > 0; got != tc.wantNext {
				t.Errorf("10 minutes after the decision: rate_spike %v, want %v", got, tc.wantNext)
			}
			seasonFeed(m, "shop/api", flood+2*time.Hour+10*time.Minute, flood+30*time.Hour, 30*time.Second)
			late := seasonFeed(m, "shop/api", flood+30*time.Hour, flood+31*time.Hour, 30*time.Second)
			if got := count(late, ReasonRateSpike) > 0; got != tc.wantLate {
				t.Errorf("30h into the flood: rate_spike on %d of %d requests, want alarming %v", count(late, ReasonRateSpike), len(late), tc.wantLate)
			}
		})
	}
}

// TestAdversaryAcceptRateLeavesVolume: a workload that uploads four times its usual size to a
// known destination (slow exfiltration: volume_spike) while a harmless rate spike elsewhere
// gets an operator's AcceptRate. The acceptance does not adopt the uploads: they keep
// alarming. RejectRate does hold them past the 24h probation that adopts them otherwise.
func TestAdversaryAcceptRateLeavesVolume(t *testing.T) {
	upload := func(m *Model, from, to time.Duration) (spikes, n int) {
		for at := from; at < to; at += 30 * time.Second {
			f := flow("shop/api", "198.51.100.9", 443, "upload.example.com", 0)
			f.Time, f.Method, f.Path, f.RequestBytes = seasonT0.Add(at), "POST", "/v1/blobs", 32<<10
			if m.Decide(f).Reasons.Has(ReasonVolumeSpike) {
				spikes++
			}
			n++
		}
		return spikes, n
	}
	start := seasonLearn + time.Minute
	for _, tc := range []struct {
		name     string
		decide   func(*Model) error
		wantLate bool // still alarming 30h in
	}{
		{"accepted", func(m *Model) error { return m.AcceptRate("shop/api") }, false},
		{"rejected", func(m *Model) error { return m.RejectRate("shop/api") }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := mustModel(t, Config{
				LearnWindow: seasonLearn,
				Disabled:    Reasons(0).With(ReasonBurst).With(ReasonNewShape).With(ReasonRareShape).With(ReasonRateSpike),
			})
			for at := time.Duration(0); at < start; at += 30 * time.Second {
				f := flow("shop/api", "198.51.100.9", 443, "upload.example.com", 0)
				f.Time, f.Method, f.Path, f.RequestBytes = seasonT0.Add(at), "POST", "/v1/blobs", 8<<10
				m.Decide(f)
			}
			if n, _ := upload(m, start, start+time.Hour); n == 0 {
				t.Fatal("an hour of uploads four times the usual size: no volume_spike")
			}
			if err := tc.decide(m); err != nil {
				t.Fatal(err)
			}
			if n, _ := upload(m, start+time.Hour, start+time.Hour+10*time.Minute); n == 0 {
				t.Errorf("after the decision the uploads no longer alarm: it adopted them")
			}
			upload(m, start+time.Hour+10*time.Minute, start+30*time.Hour)
			late, n := upload(m, start+30*time.Hour, start+31*time.Hour)
			if got := late > 0; got != tc.wantLate {
				t.Errorf("30h in: volume_spike on %d of %d uploads; want alarming %v", late, n, tc.wantLate)
			}
		})
	}
}
