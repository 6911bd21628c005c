package burst

import (
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"testing"
)

func mustNew(t testing.TB, cfg Config) *Detector {
	t.Helper()
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// run feeds perTick[i] copies of the edge (svc, dst) at tick start+i and returns the score of
// the last edge of each tick (the highest: a single key's count only grows within a tick).
func run(d *Detector, svc, dst uint64, start int64, perTick []int) []Score {
	out := make([]Score, len(perTick))
	for i, n := range perTick {
		for range n {
			out[i] = d.Observe(svc, dst, start+int64(i))
		}
	}
	return out
}

func repeat(n, times int) []int {
	s := make([]int, times)
	for i := range s {
		s[i] = n
	}
	return s
}

func near(a, b float64) bool {
	return math.Abs(a-b) <= 1e-9*max(1, math.Abs(a), math.Abs(b))
}

func TestCheck(t *testing.T) {
	tests := []struct {
		name string
		in   Config
		want Config
		errs []string // substrings, all expected
	}{
		{
			name: "defaults",
			want: Config{Rows: 2, Buckets: 1024, Decay: 0.5, Threshold: 100, Half: 100},
		},
		{
			name: "negative decay means none",
			in:   Config{Decay: -1, Threshold: math.Inf(1), Seed: 9},
			want: Config{Rows: 2, Buckets: 1024, Decay: 0, Threshold: math.Inf(1), Half: 100, Seed: 9},
		},
		{
			name: "every problem reported",
			in:   Config{Rows: 17, Buckets: -1, Decay: 1, Threshold: -3, Half: math.Inf(1)},
			errs: []string{"rows 17", "buckets -1", "decay 1", "threshold -3", "half +Inf"},
		},
		{
			name: "NaN rejected",
			in:   Config{Decay: math.NaN(), Threshold: math.NaN(), Half: math.NaN()},
			errs: []string{"decay NaN", "threshold NaN", "half NaN"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.in.Check()
			if len(tt.errs) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				if got != tt.want {
					t.Fatalf("Check() = %+v, want %+v", got, tt.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("Check() = %+v, want errors %q", got, tt.errs)
			}
			for _, e := range tt.errs {
				if !strings.Contains(err.Error(), e) {
					t.Errorf("error %q lacks %q", err, e)
				}
			}
			if _, err := New(tt.in); err == nil {
				t.Error("New accepted a config Check rejects")
			}
		})
	}
}

// With Decay < 0 (no carry-over) a tick's current count is its edge count, so the scores are
// plain arithmetic: the mean of the ticks before, m, and the deviance 2(a·ln(a/m) − (a−m)).
func TestScoresNoDecay(t *testing.T) {
	cfg := Config{Decay: -1, Seed: 1}
	tests := []struct {
		name    string
		perTick []int
		want    []float64 // score of the last edge of each tick
	}{
		{
			name:    "first tick has no history",
			perTick: []int{50},
			want:    []float64{0},
		},
		{
			name:    "flat stream scores zero",
			perTick: repeat(10, 20),
			want:    make([]float64, 20),
		},
		{
			name:    "10x burst",
			perTick: append(repeat(10, 20), 100),
			want:    append(make([]float64, 20), dev(100, 10)),
		},
		{
			name:    "quiet tick is not a burst",
			perTick: []int{10, 10, 10, 1},
			want:    []float64{0, 0, 0, 0},
		},
		{
			// Ticks 1-2 have 10, tick 3 has 60: m = 10, score 115 >= the threshold 100, so
			// tick 3 merges twice the mean, not its count; at tick 4 the total is 20 + 20, m =
			// 40/3.
			name:    "anomalous tick merges at most twice the mean",
			perTick: []int{10, 10, 60, 60},
			want:    []float64{0, 0, dev(60, 10), dev(60, 40.0/3)},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := run(mustNew(t, cfg), 1, 2, 100, tt.perTick)
			for i, s := range got {
				if !near(s.Raw, tt.want[i]) {
					t.Errorf("tick %d: raw %v, want %v", i+1, s.Raw, tt.want[i])
				}
			}
		})
	}
}

// With the default decay of 0.5, a steady n per tick carries n/(1-0.5) = 2n at the end of a
// tick; the totals merge those end-of-tick values, so a flat stream stays near its mean.
func TestScoresDefaultDecay(t *testing.T) {
	d := mustNew(t, Config{Seed: 1})
	flat := run(d, 1, 2, 0, repeat(10, 60))
	// Tick j ends with cur_j = 20 - 10×0.5^(j-1); the total after 60 ticks is their sum.
	var tot, cur float64
	for j := 1; j <= 60; j++ {
		cur = 20 - 10*math.Pow(0.5, float64(j-1))
		tot += cur
	}
	// Ticks 1 and 2 warm the buckets up (score 0). Tick 3: a = 17.5 against m = (10+15)/2;
	// later ticks score less.
	if flat[0].Raw != 0 || flat[1].Raw != 0 {
		t.Errorf("warm-up ticks scored %v, %v; want 0", flat[0].Raw, flat[1].Raw)
	}
	if want := dev(17.5, 12.5); !near(flat[2].Raw, want) {
		t.Errorf("tick 3: raw %v, want %v", flat[2].Raw, want)
	}
	for i, s := range flat[3:] {
		if s.Raw > flat[2].Raw {
			t.Errorf("flat tick %d: raw %v above tick 3's %v", i+4, s.Raw, flat[2].Raw)
		}
	}
	burst := d.Observe(1, 2, 60) // tick 61, first edge
	for range 99 {
		burst = d.Observe(1, 2, 60)
	}
	a, m := cur*0.5+100, tot/60
	if want := dev(a, m); !near(burst.Raw, want) {
		t.Errorf("10x burst: raw %v, want %v", burst.Raw, want)
	}
	if burst.Raw < 150 || burst.Norm < 0.6 {
		t.Errorf("10x burst scores low: %+v", burst)
	}
}

// MIDAS-F's filter keeps a long attack anomalous; without it (threshold +Inf, MIDAS-R) the
// attack is merged tick after tick and its score fades.
func TestLongAttack(t *testing.T) {
	stream := append(repeat(10, 30), repeat(100, 30)...)
	// Filtered, each attack tick that scores at the threshold merges at most twice the mean
	// (holdGrowth): the mean creeps up from 10, and the attack still scores far above it.
	tot, n := 300.0, 30.0
	for range 29 {
		m := tot / n
		if dev(100, m) >= DefaultThreshold {
			tot += min(100, holdGrowth*m)
		} else {
			tot += 100
		}
		n++
	}
	filteredLast := dev(100, tot/n)
	if filteredLast < DefaultThreshold {
		t.Fatalf("the reference mean caught up: %v", filteredLast)
	}
	tests := []struct {
		name      string
		threshold float64
		last      float64 // score of the attack's last tick
	}{
		{name: "filtered", threshold: 0, last: filteredLast},
		// After 29 merged attack ticks the total is 300 + 2900 over 59 ticks.
		{name: "unfiltered", threshold: math.Inf(1), last: dev(100, 3200.0/59)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := run(mustNew(t, Config{Decay: -1, Threshold: tt.threshold, Seed: 3}), 7, 8, 0, stream)
			if first, want := got[30].Raw, dev(100, 10); !near(first, want) {
				t.Errorf("first attack tick: raw %v, want %v", first, want)
			}
			if last := got[59].Raw; !near(last, tt.last) {
				t.Errorf("last attack tick: raw %v, want %v", last, tt.last)
			}
		})
	}
}

// A key that appears late in the stream and is steady from then on is learned: its mean runs
// over its own ticks, not the stream's (with the stream's, as in MIDAS, it would score about
// 40,000 from its second tick on, be filtered, and never be learned).
func TestLateSteadyEdge(t *testing.T) {
	d := mustNew(t, Config{Seed: 1})
	var peak, last Score
	for tick := range int64(3000) {
		for range 10 {
			d.Observe(1, 2, tick)
		}
		if tick < 1000 {
			continue
		}
		for range 10 {
			last = d.Observe(1, 3, tick) // a new edge of service 1, from tick 1000 on
		}
		if last.Raw > peak.Raw {
			peak = last
		}
	}
	// The service doubled its traffic: its sketch scores a little, then learns the new rate.
	if peak.Raw >= 25 || peak.Part != PartService {
		t.Errorf("peak score of the late edge %+v, want below 25 and from the service sketch", peak)
	}
	if last.Raw >= 3 {
		t.Errorf("after 2000 ticks the late edge still scores %+v", last)
	}
}

// A tick earlier than the current one counts in the current tick.
func TestTicksBackwards(t *testing.T) {
	type edge struct {
		svc, dst uint64
		tick     int64
	}
	late := []edge{{1, 2, 5}, {1, 2, 5}, {1, 3, 6}, {1, 2, 6}, {1, 2, 3}, {1, 2, -40}, {1, 2, 7}, {1, 3, 7}, {1, 2, 6}}
	asNow := []edge{{1, 2, 5}, {1, 2, 5}, {1, 3, 6}, {1, 2, 6}, {1, 2, 6}, {1, 2, 6}, {1, 2, 7}, {1, 3, 7}, {1, 2, 7}}
	a, b := mustNew(t, Config{Decay: 0.3, Seed: 4}), mustNew(t, Config{Decay: 0.3, Seed: 4})
	for i := range late {
		sa := a.Observe(late[i].svc, late[i].dst, late[i].tick)
		sb := b.Observe(asNow[i].svc, asNow[i].dst, asNow[i].tick)
		if sa != sb {
			t.Fatalf("edge %d at tick %d scored %+v; at the current tick %d, %+v", i, late[i].tick, sa, asNow[i].tick, sb)
		}
	}
}

// Extreme ticks neither overflow nor produce NaN.
func TestExtremeTicks(t *testing.T) {
	d := mustNew(t, Config{Seed: 5})
	for _, tick := range []int64{math.MinInt64, math.MinInt64, math.MinInt64 + 1, 0, math.MaxInt64, math.MaxInt64, math.MinInt64} {
		s := d.Observe(1, 2, tick)
		if math.IsNaN(s.Raw) || math.IsInf(s.Raw, 0) || s.Raw < 0 || !(s.Norm >= 0 && s.Norm < 1) {
			t.Fatalf("tick %d: score %+v", tick, s)
		}
	}
	if d.step <= 0 {
		t.Fatalf("step overflowed: %d", d.step)
	}
}

// A service that suddenly talks to many new destinations is flagged by its service sketch:
// each edge and each destination is new and has no history to burst against.
func TestPartService(t *testing.T) {
	d := mustNew(t, Config{Seed: 6})
	for tick := range int64(20) {
		for dst := range uint64(5) {
			d.Observe(100, dst, tick)
		}
	}
	var s Score
	for dst := uint64(1000); dst < 1100; dst++ {
		s = d.Observe(100, dst, 20)
	}
	if s.Part != PartService || s.Raw < 100 {
		t.Fatalf("fan-out scored %+v, want a high score from the service sketch", s)
	}
	if got := s.Part.String(); got != "service" {
		t.Errorf("Part.String() = %q", got)
	}
}

// eagerStep ends step j for every touched bucket of d, as MIDAS-F does at each tick: the
// reference that the lazy catch-up must reproduce.
func eagerStep(d *Detector, j int64, after map[*cell]float64) {
	f, th := d.cfg.Decay, d.cfg.Threshold
	for p := range d.sketch {
		for i := range d.sketch[p].cells {
			c := &d.sketch[p].cells[i]
			if c.last == 0 {
				continue
			}
			// A bucket edges reached in step j has a current count above what the last
			// step's decay left; the anomalous step merges at most holdGrowth means, an
			// idle one after it the mean.
			touched := c.cur != after[c]
			switch {
			case c.score < th:
				c.tot += c.cur
			case j > c.first && touched:
				c.tot += min(c.cur, holdGrowth*c.tot/float64(j-c.first))
			case j > c.first:
				c.tot += c.tot / float64(j-c.first)
			}
			c.cur *= f
			after[c] = c.cur
			c.last = j + 1
		}
	}
}

// The lazy per-bucket catch-up gives the scores of updating every bucket at every tick.
func TestLazyMatchesEager(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
	}{
		{name: "defaults, few buckets", cfg: Config{Buckets: 8, Threshold: 5, Seed: 11}},
		{name: "slow decay, one row", cfg: Config{Rows: 1, Buckets: 16, Decay: 0.9, Threshold: 3, Seed: 12}},
		{name: "no decay, unfiltered", cfg: Config{Buckets: 4, Decay: -1, Threshold: math.Inf(1), Seed: 13}},
		{name: "fast decay, filtered", cfg: Config{Rows: 3, Buckets: 32, Decay: 0.1, Threshold: 2, Seed: 14}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lazy, eager := mustNew(t, tt.cfg), mustNew(t, tt.cfg)
			after := map[*cell]float64{}
			rng := rand.New(rand.NewPCG(1, 2))
			tick := int64(1000)
			anomalous := 0
			for i := range 20000 {
				switch r := rng.IntN(100); {
				case r < 3: // a long gap, beyond the power table
					tick += int64(powTable + rng.IntN(100))
				case r < 20:
					tick += 1 + int64(rng.IntN(5))
				case r < 22:
					tick -= int64(rng.IntN(3)) // late edges
				}
				svc := uint64(rng.IntN(6))
				dst := uint64(rng.IntN(20))
				if rng.IntN(50) == 0 {
					svc = 3 // a burst of one service
				}
				if tick > eager.tick && eager.step > 0 {
					for j := eager.step; j < eager.step+(tick-eager.tick); j++ {
						eagerStep(eager, j, after)
					}
				}
				sl, se := lazy.Observe(svc, dst, tick), eager.Observe(svc, dst, tick)
				// Part is not compared: sketches with equal counts tie up to rounding.
				if !near(sl.Raw, se.Raw) {
					t.Fatalf("edge %d: lazy %+v, eager %+v", i, sl, se)
				}
				if sl.Raw >= tt.cfg.Threshold {
					anomalous++
				}
			}
			if !math.IsInf(tt.cfg.Threshold, 1) && anomalous < 100 {
				t.Fatalf("only %d anomalous scores: the filter path is barely exercised", anomalous)
			}
		})
	}
}

func TestDeterministic(t *testing.T) {
	scores := func(seed uint64) []Score {
		d := mustNew(t, Config{Buckets: 16, Seed: seed})
		rng := rand.New(rand.NewPCG(7, 7))
		out := make([]Score, 5000)
		for i := range out {
			out[i] = d.Observe(uint64(rng.IntN(50)), uint64(rng.IntN(50)), int64(i/100))
		}
		return out
	}
	a, b, c := scores(1), scores(1), scores(2)
	differ := false
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("edge %d: same seed, scores %+v and %+v", i, a[i], b[i])
		}
		differ = differ || a[i] != c[i]
	}
	if !differ {
		t.Fatal("seeds 1 and 2 gave the same scores: the seed does not reach the hashes")
	}
}

func TestNoAllocations(t *testing.T) {
	d := mustNew(t, Config{Seed: 8})
	var i uint64
	allocs := testing.AllocsPerRun(10000, func() {
		i++
		tick := int64(i / 10)
		if i%1000 == 0 {
			tick += 500 // gaps beyond the power table take math.Pow
		}
		d.Observe(i%97, i%13, tick)
	})
	if allocs != 0 {
		t.Fatalf("Observe allocates %v times per edge", allocs)
	}
}

// Config.Bytes accounts for what New allocates.
func TestBytes(t *testing.T) {
	for _, cfg := range []Config{{}, {Rows: 4, Buckets: 65536}} {
		cfg, err := cfg.Check()
		if err != nil {
			t.Fatal(err)
		}
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		d, err := New(cfg)
		runtime.ReadMemStats(&after)
		if err != nil {
			t.Fatal(err)
		}
		got := int(after.TotalAlloc - before.TotalAlloc)
		// The slack covers size classes and, under -race, the detector's own bookkeeping.
		if want := cfg.Bytes(); got < want || got > want+8192 {
			t.Errorf("%dx%d: New allocated %d bytes, Bytes() = %d", cfg.Rows, cfg.Buckets, got, want)
		}
		runtime.KeepAlive(d)
	}
	if got := (Config{Rows: 2, Buckets: 1024}).Bytes(); got != 247_088 {
		t.Errorf("default Bytes() = %d, documented as 247,088", got)
	}
}

func TestNormalize(t *testing.T) {
	tests := []struct {
		name      string
		raw, half float64
		want      float64
	}{
		{name: "zero", raw: 0, half: 100, want: 0},
		{name: "half", raw: 100, half: 100, want: 0.5},
		{name: "three quarters", raw: 30, half: 10, want: 0.75},
		{name: "negative clamps", raw: -5, half: 10, want: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Normalize(tt.raw, tt.half); got != tt.want {
				t.Fatalf("Normalize(%v, %v) = %v, want %v", tt.raw, tt.half, got, tt.want)
			}
		})
	}
	if got := Normalize(100*(1<<52), 100); !(got < 1) {
		t.Errorf("Normalize(half×2⁵²) = %v, want below 1", got)
	}
}

func TestPValue(t *testing.T) {
	tests := []struct {
		raw, want float64
	}{
		{0, 1},
		{3.841458820694124, 0.05}, // chi-square(1) critical values
		{6.634896601021214, 0.01},
		{10.827566170662733, 0.001},
	}
	for _, tt := range tests {
		if got := PValue(tt.raw); math.Abs(got-tt.want) > 1e-12 {
			t.Errorf("PValue(%v) = %v, want %v", tt.raw, got, tt.want)
		}
	}
}

// dev is the Poisson deviance of a count a against a mean m, as the detector computes it.
func dev(a, m float64) float64 { return 2 * (a*math.Log(a/m) - (a - m)) }

// TestSteadyEdgeStartingMidTick: an edge called 30 times a minute (Poisson) whose first call
// comes part way through a tick is steady, not a burst. Its first tick holds a few calls;
// scored against that, the first full tick was a burst, held out of the mean by the filter,
// and so was every tick after it: the edge scored about 0.86 for good (found by bench/web,
// where every request of a steady web edge scored 0.89-0.99 and drowned the other detectors).
func TestSteadyEdgeStartingMidTick(t *testing.T) {
	for _, perMin := range []float64{30, 120} {
		for seed := range uint64(3) {
			d := mustNew(t, Config{Seed: seed})
			rng := rand.New(rand.NewPCG(seed, 9))
			at := 0.97 // minutes: the first call comes 3% before the tick ends
			var norms []float64
			for at < 60 {
				s := d.Observe(1, 2, int64(at))
				if at >= 30 {
					norms = append(norms, s.Norm)
				}
				at += rng.ExpFloat64() / perMin
			}
			slices.Sort(norms)
			if med := norms[len(norms)/2]; med > 0.1 {
				t.Errorf("%v a minute, seed %d: median score %.2f over the second half hour; want a steady edge under 0.1", perMin, seed, med)
			}
		}
	}
}
