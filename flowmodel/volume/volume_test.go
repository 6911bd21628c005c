package volume

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

// steady returns requests of a fixed size, step apart, on [from, to).
func steady(from, to time.Time, step time.Duration, bytes int64) []request {
	var out []request
	for t := from; t.Before(to); t = t.Add(step) {
		out = append(out, request{t, bytes})
	}
	return out
}

// TestStable: a week of ordinary traffic with a daily cycle of ×3, for workloads from 5 to
// 600 requests an hour and from empty bodies to heavy-tailed sizes: no alarm.
func TestStable(t *testing.T) {
	d := newDetector(t, Config{})
	week := 7 * 24 * time.Hour
	for _, w := range []struct {
		name    string
		perHour float64
		size    func(*rand.Rand) int64
	}{
		{"busy, 8 KB ±1 bit", 600, logNormal(8<<10, 1)},
		{"busy, heavy tail ±2 bits", 600, logNormal(8<<10, 2)},
		{"busy, fixed 2000 bytes", 600, fixed(2000)},
		{"busy, empty bodies", 600, fixed(0)},
		{"quiet, 8 KB ±1 bit", 5, logNormal(8<<10, 1)},
	} {
		for seed := range 2 {
			rng := rand.New(rand.NewPCG(uint64(seed), 1))
			o := feed(d, workload(rng, t0, t0.Add(week), 1.5*w.perHour, sim.Daily(w.perHour), w.size))
			if len(o.spikes)+len(o.sustained) > 0 {
				t.Errorf("%s, seed %d: %d spikes, %d sustained alarms", w.name, seed, len(o.spikes), len(o.sustained))
			}
		}
	}
}

// TestLargeUpload: one 50 MiB request to a destination that receives 8 KiB requests every
// 10 seconds is a spike: its log2 size is log2(50 MiB+1) − log2(8 KiB+1) ≈ 12.6 bits above
// the mean, with the standard deviation at its floor of 1 bit. It alone does not make
// a sustained alarm, and the requests after it are ordinary.
func TestLargeUpload(t *testing.T) {
	d := newDetector(t, Config{})
	var s State
	for _, r := range steady(t0, t0.Add(2*time.Hour), 10*time.Second, 8<<10) {
		if res := d.Observe(&s, r.at, r.bytes); res.Alarm {
			t.Fatalf("alarm on ordinary traffic at %s: %+v", r.at, res)
		}
	}
	if typ := d.Typical(&s); math.Abs(typ-8<<10) > 1e-6 {
		t.Errorf("typical size %g, want 8192", typ)
	}
	at := t0.Add(2 * time.Hour)
	r := d.Observe(&s, at, 50<<20)
	wantZ := math.Log2(50<<20+1) - math.Log2(8<<10+1)
	if !r.Spike || r.Sustained || !r.Alarm || r.Score != 1 || math.Abs(r.Z-wantZ) > 1e-9 {
		t.Errorf("50 MiB upload: %+v, want a spike with z %.4f and score 1", r, wantZ)
	}
	for _, q := range steady(at.Add(time.Second), at.Add(time.Hour), 10*time.Second, 8<<10) {
		if res := d.Observe(&s, q.at, q.bytes); res.Alarm {
			t.Fatalf("alarm %s after the upload: %+v", q.at.Sub(at), res)
		}
	}

	// Half of MinSpikeBytes, however unusual (6 bits above the mean), is not a spike: its
	// strength is capped at 512 KiB / 1 MiB = 0.5, a score of 0.25.
	r = d.Observe(&s, at.Add(time.Hour), 512<<10)
	if r.Alarm || r.Score != 0.25 || r.Z < 5.99 {
		t.Errorf("512 KiB upload: %+v, want no alarm, score 0.25", r)
	}

	// The same on a random workload.
	rng := rand.New(rand.NewPCG(4, 2))
	change := t0.Add(36 * time.Hour)
	reqs := merge(workload(rng, t0, change.Add(time.Hour), 900, sim.Daily(600), logNormal(8<<10, 1)),
		[]request{{change, 50 << 20}})
	o := feed(d, reqs)
	if len(o.spikes) != 1 || !o.spikes[0].Equal(change) || len(o.sustained) > 0 {
		t.Errorf("random workload: spikes %v, %d sustained alarms; want the upload alone", o.spikes, len(o.sustained))
	}
}

// TestSlowExfiltration: every request starts carrying twice its usual 8 KiB. Each minute
// (ten requests) scores z = 10·1 bit/(√10·1 bit) ≈ 3.2, capped at 3, so the CUSUM passes 12
// after five minutes; the excess grows by about 80 KiB a minute and reaches 1 MiB in the
// thirteenth minute, which raises the alarm. No request is a spike. With RequireApproval it
// alarms for as long as it lasts (TestProbationAdoptsShift has the default).
func TestSlowExfiltration(t *testing.T) {
	d := newDetector(t, Config{RequireApproval: true})
	change := t0.Add(24 * time.Hour)
	o := feed(d, append(steady(t0, change, 6*time.Second, 8<<10), steady(change, change.Add(time.Hour), 6*time.Second, 16<<10)...))
	if len(o.spikes) > 0 || len(o.sustained) == 0 {
		t.Fatalf("%d spikes, %d sustained alarms; want sustained alarms only", len(o.spikes), len(o.sustained))
	}
	if got := o.sustained[0].Sub(change); got < 12*time.Minute || got >= 13*time.Minute {
		t.Errorf("flagged %s after the change, want in the thirteenth minute", got)
	}
	if n := len(o.sustained); n < 10*(60-13) {
		t.Errorf("%d requests alarmed, want every one after the first alarm (%d)", n, 10*(60-13))
	}
	if r := d.Peek(&o.state); !r.Sustained || r.Excess < 4<<20 {
		t.Errorf("after an hour: %+v, want a sustained alarm with over 4 MiB excess", r)
	}
	// Two days on, it is still not normal: alarmed requests are not learned.
	later := change.Add(time.Hour)
	for _, r := range steady(later, later.Add(48*time.Hour), 6*time.Second, 16<<10) {
		if res := d.Observe(&o.state, r.at, r.bytes); !res.Sustained {
			t.Fatalf("%s into the exfiltration: %+v, want a sustained alarm", r.at.Sub(change), res)
		}
	}
	// (The twelve minutes before the first alarm were learned: 120 requests against a
	// baseline weight of about 5200, a shift of 2% at most.)
	if typ := d.Typical(&o.state); typ > 1.02*(8<<10) {
		t.Errorf("typical size after two days of 16 KiB requests: %.0f, want 8 KiB still", typ)
	}

	// Random workloads: sizes ×1.5 on a busy key; and a key that sends empty bodies
	// starting to send 64 KiB a minute.
	for _, tc := range []struct {
		name   string
		before func(*rand.Rand) int64
		after  func(rng *rand.Rand, from, to time.Time) []request
		within time.Duration
	}{
		{"sizes ×1.5", logNormal(8<<10, 1), func(rng *rand.Rand, from, to time.Time) []request {
			return workload(rng, from, to, 900, sim.Daily(600), logNormal(12<<10, 1))
		}, 45 * time.Minute},
		{"64 KiB a minute from a key with empty bodies", fixed(0), func(rng *rand.Rand, from, to time.Time) []request {
			return merge(workload(rng, from, to, 900, sim.Daily(600), fixed(0)), steady(from, to, time.Minute, 64<<10))
		}, 20 * time.Minute},
	} {
		rng := rand.New(rand.NewPCG(1, 3))
		change := t0.Add(36 * time.Hour)
		o := feed(d, append(workload(rng, t0, change, 900, sim.Daily(600), tc.before), tc.after(rng, change, change.Add(2*time.Hour))...))
		if len(o.spikes) > 0 || len(o.sustained) == 0 || o.sustained[0].Before(change) || o.sustained[0].Sub(change) > tc.within {
			t.Errorf("%s: %d spikes, sustained alarms from %v; want the first within %s of %s", tc.name, len(o.spikes), sim.First(o.sustained), tc.within, change)
			continue
		}
		t.Logf("%s: flagged %s after it began", tc.name, o.sustained[0].Sub(change).Round(time.Second))
	}
}

// TestGap: three days without traffic, then the same traffic: no alarm. The baseline decays
// over MaxIdle of a gap at most, in O(1): here a thousand years.
func TestGap(t *testing.T) {
	d := newDetector(t, Config{})
	rng := rand.New(rand.NewPCG(2, 4))
	stop := t0.Add(36 * time.Hour)
	resume := stop.Add(72 * time.Hour)
	o := feed(d, append(workload(rng, t0, stop, 900, sim.Daily(600), logNormal(8<<10, 1)),
		workload(rng, resume, resume.Add(24*time.Hour), 900, sim.Daily(600), logNormal(8<<10, 1))...))
	if len(o.spikes)+len(o.sustained) > 0 {
		t.Errorf("after a gap: %d spikes, %d sustained alarms", len(o.spikes), len(o.sustained))
	}

	var s State
	for _, r := range steady(t0, t0.Add(time.Hour), 10*time.Second, 1000) {
		d.Observe(&s, r.at, r.bytes)
	}
	w := s.w
	d.Observe(&s, t0.AddDate(1000, 0, 0), 1000)
	if want := w*math.Pow(d.keep, 61) + 1; math.Abs(s.w-want) > 1e-9 {
		t.Errorf("weight after a gap of 1000 years: %g, want %g (61 intervals of decay)", s.w, want)
	}
}

// TestOutOfOrder: a late request counts in the current interval; the same requests in the
// same order give the same state.
func TestOutOfOrder(t *testing.T) {
	d := newDetector(t, Config{})
	reqs := []request{
		{t0.Add(10 * time.Minute), 100}, {t0.Add(11 * time.Minute), 200},
		{t0.Add(5 * time.Minute), 300}, {t0.Add(-time.Hour), 400}, {t0.Add(12 * time.Minute), 500},
	}
	var a, b State
	var cur []float64
	for _, r := range reqs {
		d.Observe(&a, r.at, r.bytes)
		d.Observe(&b, r.at, r.bytes)
		cur = append(cur, a.bytes)
	}
	want := []float64{100, 200, 500, 900, 500}
	for i := range want {
		if cur[i] != want[i] {
			t.Fatalf("interval bytes %v, want %v", cur, want)
		}
	}
	if a != b {
		t.Errorf("same requests, different states:\n%+v\n%+v", a, b)
	}
}

func TestUnknownSize(t *testing.T) {
	d := newDetector(t, Config{})
	var s State
	for _, r := range steady(t0, t0.Add(time.Hour), 10*time.Second, 1000) {
		d.Observe(&s, r.at, r.bytes)
	}
	before := s
	if r := d.Observe(&s, t0.Add(time.Hour-time.Second), -1); r.Alarm || r.Z != 0 {
		t.Errorf("unknown size: %+v", r)
	}
	if s != before {
		t.Errorf("an unknown size changed the state")
	}
}

// TestWarmup: no alarm before MinRequests requests and an hour of history.
func TestWarmup(t *testing.T) {
	d := newDetector(t, Config{})
	var s State
	for i := range 19 {
		d.Observe(&s, t0.Add(time.Duration(i)*time.Second), 1000)
	}
	probe := s
	if r := d.Observe(&probe, t0.Add(20*time.Second), 1<<30); r.Alarm || r.Score != 0 {
		t.Errorf("19 requests in: %+v, want no alarm", r)
	}
	d.Observe(&s, t0.Add(20*time.Second), 1000)
	if r := d.Observe(&s, t0.Add(21*time.Second), 1<<30); !r.Spike {
		t.Errorf("after 20 requests: %+v, want a spike", r)
	}
	// The CUSUM waits for an hour of history: a minute of large requests is no sustained
	// alarm at minute 30 and is one at minute 90.
	for _, start := range []time.Duration{30 * time.Minute, 90 * time.Minute} {
		var s State
		for _, r := range steady(t0, t0.Add(start), 5*time.Second, 1000) {
			d.Observe(&s, r.at, r.bytes)
		}
		var sustained bool
		for _, r := range steady(t0.Add(start), t0.Add(start+10*time.Minute), time.Second, 100_000) {
			sustained = sustained || d.Observe(&s, r.at, r.bytes).Sustained
		}
		if sustained != (start > time.Hour) {
			t.Errorf("large requests from minute %v: sustained %v", start.Minutes(), sustained)
		}
	}
}

func TestAccept(t *testing.T) {
	d := newDetector(t, Config{})
	change := t0.Add(24 * time.Hour)
	o := feed(d, append(steady(t0, change, 6*time.Second, 8<<10), steady(change, change.Add(time.Hour), 6*time.Second, 16<<10)...))
	if !d.Peek(&o.state).Sustained {
		t.Fatal("no sustained alarm to accept")
	}
	d.Accept(&o.state)
	// What is left is the current interval's own excess: less than one interval's 80 KiB.
	if r := d.Peek(&o.state); r.Alarm || r.Excess > 80<<10 {
		t.Errorf("after Accept: %+v", r)
	}
}

func TestConfig(t *testing.T) {
	c, err := Config{}.Check()
	if err != nil || c.Interval != DefaultInterval || c.HalfLife != DefaultHalfLife ||
		c.Warmup != DefaultWarmup || c.MinRequests != DefaultMinRequests || c.MaxIdle != DefaultMaxIdle ||
		c.SpikeZ != DefaultSpikeZ || c.MinSigmaBits != DefaultMinSigmaBits ||
		c.MinSpikeBytes != DefaultMinSpikeBytes || c.Allowance != DefaultAllowance || c.Cap != DefaultCap ||
		c.Threshold != DefaultThreshold || c.MinExcessBytes != DefaultMinExcessBytes {
		t.Errorf("defaults: %+v, %v", c, err)
	}
	for name, bad := range map[string]Config{
		"sub-millisecond interval": {Interval: time.Microsecond},
		"half-life below interval": {HalfLife: time.Second},
		"negative warmup":          {Warmup: -time.Second},
		"negative spike z":         {SpikeZ: -1},
		"nan threshold":            {Threshold: math.NaN()},
		"infinite min bytes":       {MinSpikeBytes: math.Inf(1)},
		"cap below allowance":      {Cap: 0.4},
		"negative min requests":    {MinRequests: -5},
	} {
		if _, err := New(bad); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestStateSize(t *testing.T) {
	if n := unsafe.Sizeof(State{}); n != 144 {
		t.Errorf("State is %d bytes; the package doc says 144", n)
	}
}

func TestObserveDoesNotAllocate(t *testing.T) {
	d := newDetector(t, Config{})
	var s State
	at := t0
	if n := testing.AllocsPerRun(1000, func() {
		at = at.Add(7 * time.Second)
		d.Observe(&s, at, 4096)
	}); n != 0 {
		t.Errorf("Observe allocates %g times", n)
	}
}

// BenchmarkObserve: a request in the current interval of a warm key, the common case.
func BenchmarkObserve(b *testing.B) { benchObserve(b, time.Millisecond) }

// BenchmarkObserveNewInterval: every request opens a new interval after a short gap.
func BenchmarkObserveNewInterval(b *testing.B) { benchObserve(b, 3*time.Minute) }

// benchObserve observes a 4 KiB request every step, on a key warmed by 10000 of them a
// second apart.
func benchObserve(b *testing.B, step time.Duration) {
	d := newDetector(b, Config{})
	var s State
	at := t0
	for range 10000 {
		at = at.Add(time.Second)
		d.Observe(&s, at, 4096)
	}
	b.ReportAllocs()
	for b.Loop() {
		at = at.Add(step)
		d.Observe(&s, at, 4096)
	}
}

// TestSparseExfiltration: a key that uploads about 50 KB (±0.7 bit) two or three times an
// hour starts uploading about 250 KB (×5, 2.3 bits more) as often. Each upload is its own
// interval, z ≈ 2.3, and the empty minutes between uploads carry no evidence: the CUSUM
// gains about 1.8 an upload and fades only with the baseline's half-life, so it passes 12 in
// a few hours; the excess (about 200 KB an upload) passes 1 MiB after six. Before the
// change, three days of the same key raise nothing; nor does a week of a quiet key at the
// old size (TestStable has more).
func TestSparseExfiltration(t *testing.T) {
	for seed := range uint64(3) {
		d := newDetector(t, Config{RequireApproval: true})
		rng := rand.New(rand.NewPCG(seed, 7))
		change := t0.Add(72 * time.Hour)
		before := workload(rng, t0, change, 2.5, func(time.Time) float64 { return 2.5 }, logNormal(50e3, 0.7))
		after := workload(rng, change, change.Add(24*time.Hour), 2.5, func(time.Time) float64 { return 2.5 }, logNormal(250e3, 0.7))
		o := feed(d, before)
		if len(o.spikes)+len(o.sustained) > 0 {
			t.Fatalf("seed %d: %d spikes, %d sustained alarms before the change", seed, len(o.spikes), len(o.sustained))
		}
		var first time.Time
		for _, r := range after {
			if res := d.Observe(&o.state, r.at, r.bytes); res.Sustained && first.IsZero() {
				first = r.at
			}
		}
		if first.IsZero() || first.Sub(change) > 12*time.Hour {
			t.Errorf("seed %d: first sustained alarm %v after the change (zero: never); want within 12h", seed, first.Sub(change))
		}
		t.Logf("seed %d: flagged %s after the change", seed, first.Sub(change).Round(time.Minute))
	}
	// The same key without the change: a week, no alarm.
	for seed := range uint64(3) {
		d := newDetector(t, Config{})
		rng := rand.New(rand.NewPCG(seed, 8))
		o := feed(d, workload(rng, t0, t0.Add(7*24*time.Hour), 2.5, func(time.Time) float64 { return 2.5 }, logNormal(50e3, 0.7)))
		if len(o.spikes)+len(o.sustained) > 0 {
			t.Errorf("seed %d, no change: %d spikes, %d sustained alarms in a week", seed, len(o.spikes), len(o.sustained))
		}
	}
}
