package shape

import (
	"math"
	"runtime"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 5, 9, 0, 0, 0, time.UTC)

func newTable(t testing.TB, cfg TableConfig) *Table {
	t.Helper()
	tb, err := NewTable(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(1, math.Abs(b)) }

func TestTableScores(t *testing.T) {
	const a, b = Key(1), Key(2)
	tb := newTable(t, TableConfig{})

	s := tb.Observe(a, t0)
	if !s.New || s.Bits != 0 || s.Rarity != 0 || s.Novelty != 0 {
		t.Errorf("first shape of an empty table: %+v, want New with no surprise", s)
	}
	for range 2999 {
		tb.Observe(a, t0)
	}
	// N = 3000 observations, F = 1 first sighting: a new shape has log2(3001/2) bits.
	s = tb.Observe(b, t0)
	wantBits := math.Log2(3001.0 / 2)
	if !s.New || s.Rare || !near(s.Bits, wantBits) || !near(s.Novelty, wantBits/20) || s.Rarity != s.Novelty {
		t.Errorf("new shape after 3000 of one: %+v, want New, bits %.4f, novelty %.4f", s, wantBits, wantBits/20)
	}
	// b is known now, seen once: log2(3002/2) bits ≥ 10, count 1 < 5: rare.
	s = tb.Observe(b, t0)
	wantBits = math.Log2(3002.0 / 2)
	if s.New || !s.Rare || !near(s.Bits, wantBits) || s.Novelty != 0 || !near(s.Rarity, wantBits/20) || s.Count != 1 {
		t.Errorf("shape seen once in 3001: %+v, want Rare, bits %.4f", s, wantBits)
	}
	for range 3 {
		tb.Observe(b, t0)
	}
	if s = tb.Score(b); s.Rare || s.Count != 5 {
		t.Errorf("shape seen 5 times: %+v, want not Rare (RareCount 5)", s)
	}
	if s = tb.Score(a); s.Rare || s.New || !near(s.Bits, math.Log2(3006.0/3001)) {
		t.Errorf("common shape: %+v", s)
	}
	if got := tb.Total(); got != 3005 {
		t.Errorf("Total = %g, want 3005", got)
	}
	// Score does not count.
	tb.Score(Key(3))
	if tb.Len() != 2 || tb.Total() != 3005 {
		t.Errorf("Score changed the table: len %d, total %g", tb.Len(), tb.Total())
	}
}

func TestTableDecay(t *testing.T) {
	const a, b = Key(1), Key(2)
	tb := newTable(t, TableConfig{HalfLife: time.Hour})
	tb.Observe(a, t0)
	tb.Observe(b, t0.Add(time.Hour))
	if got := tb.Count(a); got != 0.5 {
		t.Errorf("count after one half-life = %g, want 0.5", got)
	}
	if got := tb.Total(); got != 1.5 {
		t.Errorf("total after one half-life = %g, want 1.5", got)
	}
	// A late event counts at the clock, not in the past.
	tb.Observe(a, t0)
	if got := tb.Count(a); got != 1.5 {
		t.Errorf("count after a late event = %g, want 1.5", got)
	}
	// Within one second of event time the scale does not move.
	tb.Observe(b, t0.Add(time.Hour+999*time.Millisecond))
	if got := tb.Count(b); got != 2 {
		t.Errorf("count of b = %g, want 2", got)
	}
	// Far ahead: the scale is rescaled (every 20 half-lives) and counts stay right.
	tb.Observe(b, t0.Add(41*time.Hour))
	if got, want := tb.Count(a), 1.5*math.Exp2(-40); !near(got, want) {
		t.Errorf("count after 40 half-lives = %g, want %g", got, want)
	}
	if got, want := tb.Count(b), 1+2*math.Exp2(-40); !near(got, want) {
		t.Errorf("count of b = %g, want %g", got, want)
	}
	if tb.scale > maxScale {
		t.Errorf("scale %g above %d: not rescaled", tb.scale, maxScale)
	}

	nodecay := newTable(t, TableConfig{HalfLife: -1})
	nodecay.Observe(a, t0)
	nodecay.Observe(a, t0.Add(1000*time.Hour))
	if got := nodecay.Count(a); got != 2 {
		t.Errorf("count without decay = %g, want 2", got)
	}
}

func TestTableEviction(t *testing.T) {
	tb := newTable(t, TableConfig{MaxShapes: 3})
	for k, n := range map[Key]int{1: 3, 2: 2, 3: 1} {
		for range n {
			tb.Observe(k, t0)
		}
	}
	tb.Observe(4, t0) // evicts 3, the least used
	if tb.Len() != 3 || tb.Evicted() != 1 || !tb.Score(3).New || tb.Score(4).New {
		t.Fatalf("after inserting 4: len %d, evicted %d, 3 new %v, 4 new %v", tb.Len(), tb.Evicted(), tb.Score(3).New, tb.Score(4).New)
	}
	tb.Observe(5, t0) // newcomers evict newcomers: 4 has count 1
	if !tb.Score(4).New || tb.Score(1).New || tb.Score(2).New || tb.Score(5).New {
		t.Errorf("after inserting 5: want 1, 2, 5 held")
	}
	if tb.Total() != 8 {
		t.Errorf("Total = %g, want 8 (evicted counts stay)", tb.Total())
	}

	// Ties: the first entry goes, so the result depends only on the event order.
	ties := newTable(t, TableConfig{MaxShapes: 2})
	ties.Observe(10, t0)
	ties.Observe(11, t0)
	ties.Observe(12, t0)
	if !ties.Score(10).New || ties.Score(11).New {
		t.Errorf("tie: want 10 evicted, 11 kept")
	}

	ties.Forget(11)
	ties.Forget(99)
	if ties.Len() != 1 || !ties.Score(11).New || ties.Count(12) != 1 {
		t.Errorf("after Forget: len %d", ties.Len())
	}
}

func TestTableState(t *testing.T) {
	tb := newTable(t, TableConfig{HalfLife: time.Hour})
	for i := range 10 {
		for range i + 1 {
			tb.Observe(Key(i), t0.Add(time.Duration(i)*time.Minute))
		}
	}
	st := tb.State()
	if len(st.Shapes) != 10 || !st.Clock.Equal(t0.Add(9*time.Minute)) {
		t.Fatalf("state: %d shapes, clock %s", len(st.Shapes), st.Clock)
	}
	other := newTable(t, TableConfig{HalfLife: time.Hour})
	if err := other.Restore(st); err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		k := Key(i)
		if a, b := tb.Score(k), other.Score(k); !near(a.Bits, b.Bits) || !near(a.Count, b.Count) {
			t.Errorf("shape %d: score %+v, restored %+v", i, a, b)
		}
	}
	// Both continue alike.
	next := t0.Add(3 * time.Hour)
	if a, b := tb.Observe(3, next), other.Observe(3, next); !near(a.Bits, b.Bits) {
		t.Errorf("after restore: bits %g and %g", a.Bits, b.Bits)
	}

	small := newTable(t, TableConfig{MaxShapes: 3})
	if err := small.Restore(st); err != nil {
		t.Fatal(err)
	}
	if small.Len() != 3 || small.Score(9).New || small.Score(8).New || small.Score(7).New {
		t.Errorf("restore beyond the cap: want the 3 largest counts (7, 8, 9) kept")
	}

	st.Shapes[0].Count = math.NaN()
	if err := other.Restore(st); err == nil {
		t.Error("Restore accepted a NaN count")
	}
}

func TestTableConfig(t *testing.T) {
	c, err := TableConfig{}.Check()
	if err != nil || c.MaxShapes != DefaultMaxShapes || c.HalfLife != DefaultHalfLife ||
		c.RareBits != DefaultRareBits || c.RareCount != DefaultRareCount || c.Prior != DefaultPrior {
		t.Errorf("defaults: %+v, %v", c, err)
	}
	for name, bad := range map[string]TableConfig{
		"negative max":    {MaxShapes: -1},
		"short half-life": {HalfLife: time.Millisecond},
		"negative bits":   {RareBits: -1},
		"nan bits":        {RareBits: math.NaN()},
		"negative count":  {RareCount: -2},
		"infinite prior":  {Prior: math.Inf(1)},
		"negative prior":  {Prior: -1},
	} {
		if _, err := NewTable(bad); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestTableMemory measures the heap a table uses per shape; the Table doc quotes it.
func TestTableMemory(t *testing.T) {
	const n = 1 << 14
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	tb := newTable(t, TableConfig{MaxShapes: n})
	for i := range n {
		tb.Observe(Key(i*7919+1), t0)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := float64(after.HeapAlloc-before.HeapAlloc) / n
	t.Logf("shape table: %.1f bytes per shape at %d shapes", per, n)
	if per > 80 {
		t.Errorf("%.1f bytes per shape, want at most 80", per)
	}
	runtime.KeepAlive(tb)
}

func TestTableObserveDoesNotAllocate(t *testing.T) {
	tb := newTable(t, TableConfig{})
	for i := range 100 {
		tb.Observe(Key(i), t0)
	}
	now := t0
	if n := testing.AllocsPerRun(1000, func() {
		now = now.Add(time.Second)
		tb.Observe(Key(7), now)
	}); n != 0 {
		t.Errorf("Observe of a known shape allocates %g times", n)
	}
}

func BenchmarkTableObserveKnown(b *testing.B) {
	tb := newTable(b, TableConfig{})
	for i := range 256 {
		tb.Observe(Key(i*7919), t0)
	}
	now := t0
	i := 0
	b.ReportAllocs()
	for b.Loop() {
		now = now.Add(10 * time.Millisecond)
		tb.Observe(Key((i&255)*7919), now)
		i++
	}
}

// BenchmarkTableObserveNewFull is the worst case: every shape is new and evicts another
// from a full table of 256.
func BenchmarkTableObserveNewFull(b *testing.B) {
	tb := newTable(b, TableConfig{})
	for i := range 256 {
		tb.Observe(Key(i), t0)
	}
	now := t0
	i := 1000
	b.ReportAllocs()
	for b.Loop() {
		now = now.Add(10 * time.Millisecond)
		tb.Observe(Key(i), now)
		i++
	}
}
