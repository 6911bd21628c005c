package rate

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"
	"unsafe"

	"github.com/meshguard/meshguard/flowmodel/internal/sim"
)

func newDetector(t testing.TB, cfg Config) *Detector {
	t.Helper()
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// every returns times from from (inclusive) to to (exclusive), step apart.
func every(from, to time.Time, step time.Duration) []time.Time {
	var out []time.Time
	for t := from; t.Before(to); t = t.Add(step) {
		out = append(out, t)
	}
	return out
}

// TestSpikeEvenlySpaced: a worker that makes a request every 12 minutes (5 an hour) for two
// days, then one every 72 seconds (50 an hour). Each minute with a request adds about
// ln 3 − 1.5·2·(1/12) ≈ 0.85 to the CUSUM and each empty one takes 0.25 off, so the
// threshold of 8 is reached with the tenth request at the new rate, 10m48s after the change.
func TestSpikeEvenlySpaced(t *testing.T) {
	d := newDetector(t, Config{})
	change := t0.Add(48 * time.Hour)
	alarms, s := run(d, concat(every(t0, change, 12*time.Minute), every(change, change.Add(time.Hour), 72*time.Second)))
	if len(alarms) == 0 {
		t.Fatal("no alarm")
	}
	if got, want := alarms[0].Sub(change), 10*time.Minute+48*time.Second; got != want {
		t.Errorf("first alarm %s after the change, want %s", got, want)
	}
	// Every later request alarms too: the attack does not become normal.
	if got, want := len(alarms), 50-9; got != want {
		t.Errorf("%d requests alarmed, want %d (all from the tenth on)", got, want)
	}
	if r := d.Peek(s); r.Expected > 0.1 || !r.Alarm || r.Score < 0.5 {
		t.Errorf("after an hour of attack: %+v, want alarm with a baseline still near 1/12", r)
	}
}

// TestSpikePoisson: the same change with Poisson arrivals, 50 seeds. The change is flagged
// within 30 minutes in every run (it takes about eight requests at the new rate), and no
// run alarms in the two days before it.
func TestSpikePoisson(t *testing.T) {
	d := newDetector(t, Config{})
	const within = 30 * time.Minute
	var worst, total time.Duration
	for seed := range 50 {
		rng := rand.New(rand.NewPCG(uint64(seed), 1))
		change := t0.Add(48 * time.Hour)
		alarms, _ := run(d, concat(
			poisson(rng, t0, change, 5, constant(5)),
			poisson(rng, change, change.Add(2*time.Hour), 50, constant(50))))
		if len(alarms) == 0 {
			t.Fatalf("seed %d: no alarm", seed)
		}
		if alarms[0].Before(change) {
			t.Fatalf("seed %d: false alarm at %s, before the change", seed, alarms[0])
		}
		delay := alarms[0].Sub(change)
		worst = max(worst, delay)
		total += delay
	}
	t.Logf("5→50 per hour: flagged after %s on average, %s at worst", total/50, worst.Round(time.Second))
	if worst > within {
		t.Errorf("flagged after %s at worst, want within %s", worst, within)
	}
}

// TestDailyCycle: a week of Poisson arrivals whose rate follows a smooth daily cycle, ×3
// between night and day, at rates from 2 to 6000 an hour: no alarm.
func TestDailyCycle(t *testing.T) {
	d := newDetector(t, Config{})
	for _, perHour := range []float64{2, 5, 60, 600, 6000} {
		seeds := 4
		if perHour >= 600 {
			seeds = 1
		}
		for seed := range seeds {
			rng := rand.New(rand.NewPCG(uint64(seed), 2))
			alarms, _ := run(d, poisson(rng, t0, t0.Add(7*24*time.Hour), 1.5*perHour, sim.Daily(perHour)))
			if len(alarms) > 0 {
				t.Errorf("%g an hour, seed %d: %d alarms, the first at %s", perHour, seed, len(alarms), alarms[0].Sub(t0))
			}
		}
	}
}

// TestRamps: a rate that quadruples over four days is learned; one that rises tenfold in
// half an hour is flagged before the half hour is out.
func TestRamps(t *testing.T) {
	d := newDetector(t, Config{})
	rng := rand.New(rand.NewPCG(7, 3))
	days := 4 * 24 * time.Hour
	slow := func(t time.Time) float64 { return 60 * (1 + 3*min(t.Sub(t0).Hours()/days.Hours(), 1)) }
	if alarms, _ := run(d, poisson(rng, t0, t0.Add(days+24*time.Hour), 240, slow)); len(alarms) > 0 {
		t.Errorf("slow ramp ×4 over 4 days: %d alarms, the first at %s", len(alarms), alarms[0].Sub(t0))
	}

	start := t0.Add(24 * time.Hour)
	steep := func(t time.Time) float64 {
		return 60 * (1 + 9*min(max(t.Sub(start).Minutes()/30, 0), 1))
	}
	alarms, _ := run(d, poisson(rng, t0, start.Add(2*time.Hour), 600, steep))
	if len(alarms) == 0 || alarms[0].Before(start) || alarms[0].Sub(start) > 30*time.Minute {
		t.Fatalf("steep ramp ×10 in 30 minutes: alarms %v, want the first within 30 minutes of %s", sim.First(alarms), start)
	}
	t.Logf("steep ramp flagged %s after it began", alarms[0].Sub(start).Round(time.Second))
}

// TestGap: a service that stops for three days and comes back at its old rate is not a
// spike. A gap of any length costs O(1): here a thousand years.
func TestGap(t *testing.T) {
	d := newDetector(t, Config{})
	rng := rand.New(rand.NewPCG(11, 4))
	stop := t0.Add(48 * time.Hour)
	resume := stop.Add(72 * time.Hour)
	alarms, _ := run(d, concat(
		poisson(rng, t0, stop, 60, constant(60)),
		poisson(rng, resume, resume.Add(24*time.Hour), 60, constant(60))))
	if len(alarms) > 0 {
		t.Errorf("%d alarms after a gap of 3 days, the first %s after resuming", len(alarms), alarms[0].Sub(resume))
	}

	// The baseline learns MaxIdle (60 intervals) of zeros from a gap, no more.
	var s State
	for _, at := range every(t0, t0.Add(24*time.Hour), 30*time.Second) {
		d.Observe(&s, at)
	}
	before, n := s.mean, s.n
	d.Observe(&s, t0.AddDate(1000, 0, 0))
	// Closing the last interval (2 requests) merges it, then 60 empty intervals.
	a := d.alpha
	want := (before + a*(2-before)) * math.Pow(1-a, 60)
	if math.Abs(s.mean-want) > 1e-12 || s.n != n+61 || s.cusum != 0 || s.count != 1 {
		t.Errorf("after a gap of 1000 years: mean %g (want %g), n %d (want %d), cusum %g, count %g",
			s.mean, want, s.n, n+61, s.cusum, s.count)
	}
}

// TestOutOfOrder: an event older than the current interval counts in it, and the same
// events in the same order give the same state.
func TestOutOfOrder(t *testing.T) {
	d := newDetector(t, Config{})
	events := []time.Time{
		t0.Add(10 * time.Minute), t0.Add(11*time.Minute + 5*time.Second),
		t0.Add(5 * time.Minute), // late: counts in minute 11
		t0.Add(11 * time.Minute), t0.Add(12 * time.Minute), t0.Add(-time.Hour),
	}
	var a, b State
	var counts []float64
	for _, at := range events {
		counts = append(counts, d.Observe(&a, at).Count)
		d.Observe(&b, at)
	}
	want := []float64{1, 1, 2, 3, 1, 2}
	for i := range want {
		if counts[i] != want[i] {
			t.Fatalf("counts %v, want %v", counts, want)
		}
	}
	if a != b {
		t.Errorf("same events, different states:\n%+v\n%+v", a, b)
	}
}

// TestLongAttack: with RequireApproval, two days at ten times the rate stay anomalous to the
// end, and the baseline does not learn them; Accept makes them normal.
func TestLongAttack(t *testing.T) {
	d := newDetector(t, Config{RequireApproval: true})
	rng := rand.New(rand.NewPCG(5, 5))
	change := t0.Add(48 * time.Hour)
	end := change.Add(48 * time.Hour)
	var s State
	for _, at := range poisson(rng, t0, change, 5, constant(5)) {
		d.Observe(&s, at)
	}
	before := d.Peek(&s).Expected
	var alarmed, total int
	for _, at := range poisson(rng, change, end, 50, constant(50)) {
		r := d.Observe(&s, at)
		if at.After(change.Add(time.Hour)) {
			total++
			if r.Alarm {
				alarmed++
			}
		}
	}
	if alarmed != total {
		t.Errorf("after the first hour of the attack, %d of %d requests alarmed, want all", alarmed, total)
	}
	if after := d.Peek(&s).Expected; after > 1.5*before {
		t.Errorf("baseline went from %.4f to %.4f per interval: the attack was learned", before, after)
	}

	// An operator accepts the new level: no more alarms at 50 an hour.
	d.Accept(&s)
	var later []time.Time
	for _, at := range poisson(rng, end, end.Add(24*time.Hour), 50, constant(50)) {
		if d.Observe(&s, at).Alarm {
			later = append(later, at)
		}
	}
	if len(later) > 0 {
		t.Errorf("after Accept: %d alarms, the first %s after", len(later), later[0].Sub(end))
	}
}

// TestBatches: ten requests at once, once an hour, for a week: bursty but regular. The
// dispersion of the counts scales the CUSUM down; no alarm.
func TestBatches(t *testing.T) {
	d := newDetector(t, Config{})
	rng := rand.New(rand.NewPCG(3, 6))
	var events []time.Time
	for h := range 7 * 24 {
		at := t0.Add(time.Duration(h)*time.Hour + time.Duration(rng.IntN(600))*time.Second)
		for range 10 {
			events = append(events, at)
		}
	}
	if alarms, _ := run(d, events); len(alarms) > 0 {
		t.Errorf("%d alarms, the first at %s", len(alarms), alarms[0].Sub(t0))
	}
}

// TestWarmup: no alarm before the baseline has an hour of history.
func TestWarmup(t *testing.T) {
	d := newDetector(t, Config{})
	var s State
	d.Observe(&s, t0)
	r := d.Add(&s, t0.Add(30*time.Minute), 10000)
	if r.Alarm || r.Score != 0 || r.Count != 10000 {
		t.Errorf("during warmup: %+v, want no alarm", r)
	}
	if r := d.Add(&s, t0.Add(90*time.Minute), 10000); !r.Alarm || r.Score != 1 {
		t.Errorf("after warmup: %+v, want alarm with score 1", r)
	}
}

func TestConfig(t *testing.T) {
	c, err := Config{}.Check()
	if err != nil || c.Interval != DefaultInterval || c.HalfLife != DefaultHalfLife ||
		c.Tolerance != DefaultTolerance || c.Ratio != DefaultRatio || c.Threshold != DefaultThreshold ||
		c.Warmup != DefaultWarmup || c.MaxIdle != DefaultMaxIdle ||
		c.MinBaseline != DefaultMinBaseline || c.MaxDispersion != DefaultMaxDispersion {
		t.Errorf("defaults: %+v, %v", c, err)
	}
	for name, bad := range map[string]Config{
		"sub-millisecond interval": {Interval: time.Microsecond},
		"fractional interval":      {Interval: 1500 * time.Microsecond},
		"half-life below interval": {HalfLife: time.Second},
		"ratio 1":                  {Ratio: 1},
		"tolerance below 1":        {Tolerance: 0.5},
		"negative threshold":       {Threshold: -1},
		"nan baseline":             {MinBaseline: math.NaN()},
		"negative warmup":          {Warmup: -time.Second},
		"negative idle":            {MaxIdle: -time.Second},
		"dispersion below 1":       {MaxDispersion: 0.5},
	} {
		if _, err := New(bad); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestStateSize(t *testing.T) {
	if n := unsafe.Sizeof(State{}); n != 80 {
		t.Errorf("State is %d bytes; the package doc says 80", n)
	}
}

func TestObserveDoesNotAllocate(t *testing.T) {
	d := newDetector(t, Config{})
	var s State
	at := t0
	if n := testing.AllocsPerRun(1000, func() {
		at = at.Add(7 * time.Second)
		d.Observe(&s, at)
	}); n != 0 {
		t.Errorf("Observe allocates %g times", n)
	}
}

// BenchmarkObserve: a request in the current interval, the common case.
func BenchmarkObserve(b *testing.B) { benchObserve(b, time.Millisecond) }

// BenchmarkObserveNewInterval: every request opens a new interval after a short gap.
func BenchmarkObserveNewInterval(b *testing.B) { benchObserve(b, 3*time.Minute) }

// benchObserve observes a request every step.
func benchObserve(b *testing.B, step time.Duration) {
	d := newDetector(b, Config{})
	var s State
	at := t0
	b.ReportAllocs()
	for b.Loop() {
		at = at.Add(step)
		d.Observe(&s, at)
	}
}
