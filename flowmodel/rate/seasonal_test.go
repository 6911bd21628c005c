package rate

import (
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"
)

func newSeasonal(t testing.TB, cfg SeasonalConfig) *Seasonal {
	t.Helper()
	d, err := NewSeasonal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// profile is the hourly rate of a business service: mean per hour at midday peak ×1.6,
// night ×0.4, weekends ×0.6.
func profile(mean float64) func(time.Time) float64 {
	return func(t time.Time) float64 {
		v := mean * (1 + 0.6*math.Sin(2*math.Pi*float64(t.Hour()-6)/24))
		if wd := t.Weekday(); wd == time.Saturday || wd == time.Sunday {
			v *= 0.6
		}
		return v
	}
}

// noisy draws an hour's count around rate: Poisson noise and a day-to-day wobble of 5%.
func noisy(rng *rand.Rand, rate float64) float64 {
	v := rate * (1 + 0.05*rng.NormFloat64())
	return max(math.Round(v+math.Sqrt(max(v, 0))*rng.NormFloat64()), 0)
}

// hours feeds a key one hourly bucket at a time from start for n hours, count(t) requests in
// the hour starting at t (all at its start), and returns the hours whose verdict (on the
// buckets closed before it and its own count) is an alarm, and which of them are drops.
func hours(d *Seasonal, s *SeasonalState, start time.Time, n int, count func(time.Time) float64) (alarms, drops []int) {
	for h := range n {
		at := start.Add(time.Duration(h) * time.Hour)
		r := d.Add(s, at, count(at))
		if r.Alarm {
			alarms = append(alarms, h)
			if r.Drop {
				drops = append(drops, h)
			}
		}
	}
	return alarms, drops
}

// warm teaches a fresh key three weeks of the business profile at mean requests an hour.
func warm(t *testing.T, d *Seasonal, mean float64, rng *rand.Rand) *SeasonalState {
	t.Helper()
	s := new(SeasonalState)
	a, _ := hours(d, s, t0, 21*24, func(at time.Time) float64 { return noisy(rng, profile(mean)(at)) })
	// The first week warms the weekday and weekend slots up; after it, nothing alarms.
	for _, h := range a {
		if h >= 7*24 {
			t.Fatalf("alarms in ordinary traffic at hours %v", a)
		}
	}
	return s
}

var t3w = t0.Add(21 * 24 * time.Hour) // a Monday, three weeks after t0

func TestSeasonalConfigCheck(t *testing.T) {
	c, err := SeasonalConfig{}.Check()
	if err != nil || c.Bucket != time.Hour || c.Period != 24*time.Hour || c.MinRate != DefaultMinRate || c.WarmupDays != 2 {
		t.Fatalf("defaults: %+v, %v", c, err)
	}
	for _, tc := range []struct {
		name string
		cfg  SeasonalConfig
		want []string
	}{
		{"period not a multiple", SeasonalConfig{Period: 90 * time.Minute}, []string{"period"}},
		{"too many slots", SeasonalConfig{Bucket: time.Minute}, []string{"period"}},
		{"negative everything", SeasonalConfig{MinRate: -1, MinSpread: -1, Threshold: -1, Clip: -1, Allowance: -1, WarmupDays: -1, MaxGrowth: 0.5},
			[]string{"min rate", "min spread", "threshold", "clip", "allowance", "warmup", "max growth"}},
		{"short half-lives", SeasonalConfig{LevelHalfLife: time.Minute, ProfileHalfLife: time.Hour, Probation: time.Minute},
			[]string{"level half-life", "profile half-life", "probation"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.cfg.Check()
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// TestSeasonalDeviations: a business service (a daily cycle of ×4 between night and midday,
// quieter weekends) learned for three weeks, then one day of each kind of deviation.
// Ordinary days raise nothing; each deviation alarms, on the right side, within a few hours.
func TestSeasonalDeviations(t *testing.T) {
	noon := 12
	for _, tc := range []struct {
		name      string
		cfg       SeasonalConfig
		mean      float64
		change    func(h int, rate float64) float64 // the Monday's rate at hour h
		wantAlarm bool
		wantDrop  bool
		within    int // hours after the change starts
	}{
		{"ordinary day", SeasonalConfig{}, 600, func(_ int, r float64) float64 { return r }, false, false, 0},
		{"drop to a third from noon", SeasonalConfig{}, 600, func(h int, r float64) float64 {
			if h >= noon {
				return r / 3
			}
			return r
		}, true, true, 3},
		{"silent from noon", SeasonalConfig{}, 600, func(h int, r float64) float64 {
			if h >= noon {
				return 0
			}
			return r
		}, true, true, 2},
		{"midday level at 3am", SeasonalConfig{}, 600, func(h int, r float64) float64 {
			if h >= 2 && h < 5 {
				return 600 * 1.6
			}
			return r
		}, true, false, 2},
		{"double at noon", SeasonalConfig{}, 600, func(h int, r float64) float64 {
			if h >= noon {
				return 2 * r
			}
			return r
		}, true, false, 2},
		// The floor: a sparse service (6 an hour at peak, under MinRate) going silent.
		{"sparse service silent", SeasonalConfig{}, 4, func(h int, r float64) float64 {
			if h >= noon {
				return 0
			}
			return r
		}, false, false, 0},
		// Above the floor (64 an hour at noon), the same silence is a drop.
		{"small service silent", SeasonalConfig{}, 40, func(h int, r float64) float64 {
			if h >= noon {
				return 0
			}
			return r
		}, true, true, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(1, 2))
			d := newSeasonal(t, tc.cfg)
			s := warm(t, d, tc.mean, rng)
			a, dr := hours(d, s, t3w, 24, func(at time.Time) float64 {
				return noisy(rng, tc.change(at.Hour(), profile(tc.mean)(at)))
			})
			// The last hour's bucket closes only with the next one.
			if r := d.Advance(s, t3w.Add(24*time.Hour)); r.Alarm {
				a, dr = append(a, 24), append(dr, 24)
			}
			if !tc.wantAlarm {
				if len(a) > 0 {
					t.Fatalf("alarms at hours %v", a)
				}
				return
			}
			if len(a) == 0 {
				t.Fatal("no alarm")
			}
			start := noon
			if !tc.wantDrop && a[0] < noon {
				start = 2
			}
			if a[0] < start || a[0] > start+tc.within {
				t.Errorf("first alarm at hour %d, want %d to %d", a[0], start, start+tc.within)
			}
			if isDrop := len(dr) > 0 && dr[0] == a[0]; isDrop != tc.wantDrop {
				t.Errorf("first alarm drop = %v, want %v", isDrop, tc.wantDrop)
			}
		})
	}
}

// TestSeasonalSilenceNeedsAdvance: a service that stops calling is only seen to when the
// caller closes its buckets with Advance.
func TestSeasonalSilenceNeedsAdvance(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	d := newSeasonal(t, SeasonalConfig{})
	s := warm(t, d, 600, rng)
	hours(d, s, t3w, 11, func(at time.Time) float64 { return noisy(rng, profile(600)(at)) })
	if r := d.Peek(s); r.Alarm {
		t.Fatalf("alarm before the silence: %+v", r)
	}
	r := d.Advance(s, t3w.Add(13*time.Hour))
	if !r.Alarm || !r.Drop || r.Expected < 300 {
		t.Errorf("after two silent hours at midday: %+v, want a drop alarm", r)
	}
}

// TestSeasonalSilence: a service that stops calling alarms, with Advance called every hour,
// for as long as it is silent (silence never becomes its level on its own, past the
// probation), and when it comes back its profile is intact: the alarm ends within hours and
// no rise is reported. A key idle for a week without Advance comes back without alarm.
func TestSeasonalSilence(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	d := newSeasonal(t, SeasonalConfig{})
	s := warm(t, d, 600, rng)
	silent := 0
	for h := range 40 {
		if d.Advance(s, t3w.Add(time.Duration(h+1)*time.Hour)).Alarm {
			silent++
		}
	}
	if silent < 38 {
		t.Errorf("alarmed %d of 40 silent hours, want all but the first", silent)
	}
	back := t3w.Add(41 * time.Hour)
	a, dr := hours(d, s, back, 24, func(at time.Time) float64 { return noisy(rng, profile(600)(at)) })
	if len(a) > 8 || len(a) != len(dr) {
		t.Errorf("after the silence: alarms %v (drops %v), want a drop alarm fading within 8 hours", a, dr)
	}
	// A week idle, no Advance: the return is not an alarm, and the profile still holds.
	idle := back.Add(24*time.Hour + 7*24*time.Hour)
	a, _ = hours(d, s, idle, 24, func(at time.Time) float64 { return noisy(rng, profile(600)(at)) })
	if len(a) > 0 {
		t.Errorf("after a week idle: alarms at hours %v", a)
	}
}

// TestSeasonalProbation: a service's traffic halves for good. It alarms as a drop, then
// after the probation (a day) the new level is adopted and the alarm ends; with
// RequireApproval it alarms until Accept; a rejected shift keeps alarming.
func TestSeasonalProbation(t *testing.T) {
	half := func(rng *rand.Rand) func(time.Time) float64 {
		return func(at time.Time) float64 { return noisy(rng, profile(600)(at)/2) }
	}
	for _, tc := range []struct {
		name     string
		cfg      SeasonalConfig
		reject   bool
		wantLast int // the last alarmed hour of three days at most this (or at least, when -1)
	}{
		{"adopted after a day", SeasonalConfig{}, false, 30},
		{"require approval", SeasonalConfig{RequireApproval: true}, false, -1},
		{"rejected", SeasonalConfig{}, true, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(5, 6))
			d := newSeasonal(t, tc.cfg)
			s := warm(t, d, 600, rng)
			a, dr := hours(d, s, t3w, 6, half(rng))
			if len(a) == 0 || len(dr) == 0 {
				t.Fatalf("no drop alarm in the first 6 hours: %v", a)
			}
			if tc.reject {
				d.Reject(s)
				if _, rej := d.Shift(s); !rej {
					t.Error("Shift does not report the rejection")
				}
			}
			b, _ := hours(d, s, t3w.Add(6*time.Hour), 66, half(rng))
			switch {
			case tc.wantLast >= 0:
				if len(b) == 0 || b[len(b)-1]+6 > tc.wantLast {
					t.Errorf("alarms %v after the first 6 hours, want none after hour %d", b, tc.wantLast)
				}
				if r := d.Peek(s); math.Abs(r.Expected/(profile(600)(t3w.Add(72*time.Hour))/2)-1) > 0.25 {
					t.Errorf("expected %g after adoption, want about %g", r.Expected, profile(600)(t3w.Add(72*time.Hour))/2)
				}
			default:
				if len(b) < 60 {
					t.Errorf("alarmed %d of 66 hours, want all but a few", len(b))
				}
				d.Accept(s)
				c, _ := hours(d, s, t3w.Add(72*time.Hour), 24, half(rng))
				if len(c) > 0 {
					t.Errorf("alarms %v after Accept", c)
				}
			}
		})
	}
}

// TestAdversarySeasonalSlowRamp (issue 10, "careful attacker": the slow ramp of issue 11) plays a
// workload that raises its traffic by a factor every day to walk the profile up. Organic
// growth (×1.02 a day, +32% in two weeks) is absorbed without alarm and followed; a ramp at
// ×1.1 a day alarms within two days and ×2 a day within half a day: the profile and the level
// learn too slowly (and never more than MaxGrowth a day) to keep up with them.
func TestAdversarySeasonalSlowRamp(t *testing.T) {
	for _, tc := range []struct {
		name   string
		perDay float64
		within int // hours to the first alarm; 0: no alarm in two weeks
	}{
		{"x1.02 a day", 1.02, 0},
		{"x1.1 a day", 1.1, 48},
		{"x2 a day", 2, 12},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(7, 8))
			d := newSeasonal(t, SeasonalConfig{})
			s := warm(t, d, 600, rng)
			ramp := func(at time.Time) float64 {
				return profile(600)(at) * math.Pow(tc.perDay, at.Sub(t3w).Hours()/24)
			}
			a, _ := hours(d, s, t3w, 14*24, func(at time.Time) float64 { return noisy(rng, ramp(at)) })
			if tc.within > 0 {
				if len(a) == 0 || a[0] > tc.within {
					t.Errorf("first alarm at hour %v, want within %d", a, tc.within)
				}
				return
			}
			if len(a) > 0 {
				t.Errorf("alarms at hours %v on organic growth", a)
			}
			end := t3w.Add(14*24*time.Hour - time.Hour)
			if r := d.Peek(s); math.Abs(r.Expected/ramp(end)-1) > 0.15 {
				t.Errorf("expected %g at the end, want about %g (the ramp followed)", r.Expected, ramp(end))
			}
		})
	}
}

// TestAdversarySeasonalFloodNotLearned (issue 10, "careful attacker": make the flood
// normal by repeating it) doubles its traffic from 10:00 to 16:00 every day for two weeks,
// short of the probation each time. Every day's flood alarms from its first hour or the
// next: buckets in alarm teach the profile nothing (were they learned, the slots would
// have taken in most of the doubling within the two weeks).
func TestAdversarySeasonalFloodNotLearned(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	d := newSeasonal(t, SeasonalConfig{})
	s := warm(t, d, 600, rng)
	flood := func(at time.Time) float64 {
		r := profile(600)(at)
		if h := at.Hour(); h >= 10 && h < 16 {
			r *= 2
		}
		return noisy(rng, r)
	}
	for day := range 14 {
		a, _ := hours(d, s, t3w.Add(time.Duration(day)*24*time.Hour), 24, flood)
		if !slices.Contains(a, 10) && !slices.Contains(a, 11) {
			t.Errorf("day %d: alarms at %v, want one at hour 10 or 11", day, a)
		}
	}
}

// TestAdversarySeasonalAlternating (issue 10, "careful attacker": keep each hour's evidence
// small) sends 60% more than usual every other hour and 5% less in between, so no single
// hour stands out and the quiet hours would reset a CUSUM that restarted on them (that one
// alarms in a third of the hours): the rise alarms within six hours and holds all day. One
// busy hour alone (×1.6) does not alarm.
func TestAdversarySeasonalAlternating(t *testing.T) {
	for _, tc := range []struct {
		name      string
		hours     int
		wantAlarm bool
	}{
		{"one busy hour", 1, false},
		{"alternating for a day", 24, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(13, 14))
			d := newSeasonal(t, SeasonalConfig{})
			s := warm(t, d, 600, rng)
			a, dr := hours(d, s, t3w, 24, func(at time.Time) float64 {
				r := profile(600)(at)
				if h := at.Hour(); h < tc.hours {
					if h%2 == 0 {
						r *= 1.6
					} else {
						r *= 0.95
					}
				}
				return noisy(rng, r)
			})
			if len(dr) > 0 {
				t.Errorf("drop alarms at hours %v", dr)
			}
			switch {
			case !tc.wantAlarm && len(a) > 0:
				t.Errorf("alarms at hours %v, want none", a)
			case tc.wantAlarm && (len(a) < 16 || a[0] > 6):
				t.Errorf("alarms at hours %v, want from hour 6 at the latest and held all day", a)
			}
		})
	}
}

func TestSeasonalStateSize(t *testing.T) {
	if n := unsafe.Sizeof(SeasonalState{}); n != 584 {
		t.Errorf("SeasonalState is %d bytes; the doc says 584", n)
	}
}

func TestSeasonalObserveDoesNotAllocate(t *testing.T) {
	d := newSeasonal(t, SeasonalConfig{})
	var s SeasonalState
	at := t0
	if n := testing.AllocsPerRun(1000, func() {
		at = at.Add(7 * time.Minute)
		d.Observe(&s, at)
	}); n != 0 {
		t.Errorf("Observe allocates %g times", n)
	}
}

// BenchmarkSeasonalObserve: a request in the current bucket, the common case.
func BenchmarkSeasonalObserve(b *testing.B) { benchSeasonal(b, time.Millisecond) }

// BenchmarkSeasonalObserveNewBucket: every request opens a new bucket.
func BenchmarkSeasonalObserveNewBucket(b *testing.B) { benchSeasonal(b, 61*time.Minute) }

func benchSeasonal(b *testing.B, step time.Duration) {
	d := newSeasonal(b, SeasonalConfig{})
	var s SeasonalState
	at := t0
	b.ReportAllocs()
	for b.Loop() {
		at = at.Add(step)
		d.Observe(&s, at)
	}
}
