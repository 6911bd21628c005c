package episode

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 5, 0, 0, 0, 0, time.UTC)

func newTracker(t testing.TB, cfg Config) *Tracker {
	t.Helper()
	tr, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

func at(m int) time.Time { return t0.Add(time.Duration(m) * time.Minute) }

// TestGrouping: alerts of one kind for one service and destination, each within the quiet
// gap of the one before, are one episode; a gap, another destination or another kind opens
// another.
func TestGrouping(t *testing.T) {
	for _, tc := range []struct {
		name   string
		alerts []Alert
		want   []Episode // open and closed, by ID
	}{
		{
			name: "a storm is one episode",
			alerts: []Alert{
				{Service: "shop", Destination: "api", Kind: "rate_spike", Time: at(0), Score: 0.6, Reasons: 1, TraceID: "a"},
				{Service: "shop", Destination: "api", Kind: "rate_spike", Time: at(1), Score: 0.9, Reasons: 4, TraceID: ""},
				{Service: "shop", Destination: "api", Kind: "rate_spike", Time: at(2), Score: 0.7, TraceID: "c"},
				{Service: "shop", Destination: "api", Kind: "rate_spike", Time: at(61), Score: 0.95, TraceID: "d"},
				{Service: "shop", Destination: "api", Kind: "rate_spike", Time: at(62), Score: 0.5, TraceID: "e"},
			},
			want: []Episode{{ID: 1, Service: "shop", Destination: "api", Kind: "rate_spike", First: at(0), Last: at(62),
				Count: 5, Peak: 0.95, PeakTrace: "d", Reasons: 5, Examples: [MaxExamples]string{"a", "c", "d"}}},
		},
		{
			name: "a quiet gap closes it",
			alerts: []Alert{
				{Service: "shop", Kind: "volume_spike", Time: at(0), Score: 0.6},
				{Service: "shop", Kind: "volume_spike", Time: at(61), Score: 0.7},
			},
			want: []Episode{
				{ID: 1, Service: "shop", Kind: "volume_spike", First: at(0), Last: at(0), Count: 1, Peak: 0.6},
				{ID: 2, Service: "shop", Kind: "volume_spike", First: at(61), Last: at(61), Count: 1, Peak: 0.7},
			},
		},
		{
			name: "destinations, kinds and services apart",
			alerts: []Alert{
				{Service: "shop", Destination: "a", Kind: "rate_spike", Time: at(0), Score: 0.6},
				{Service: "shop", Destination: "b", Kind: "rate_spike", Time: at(1), Score: 0.6},
				{Service: "shop", Destination: "a", Kind: "burst", Time: at(2), Score: 0.6},
				{Service: "cart", Destination: "a", Kind: "rate_spike", Time: at(3), Score: 0.6},
			},
			want: []Episode{
				{ID: 1, Service: "shop", Destination: "a", Kind: "rate_spike", First: at(0), Last: at(0), Count: 1, Peak: 0.6},
				{ID: 2, Service: "shop", Destination: "b", Kind: "rate_spike", First: at(1), Last: at(1), Count: 1, Peak: 0.6},
				{ID: 3, Service: "shop", Destination: "a", Kind: "burst", First: at(2), Last: at(2), Count: 1, Peak: 0.6},
				{ID: 4, Service: "cart", Destination: "a", Kind: "rate_spike", First: at(3), Last: at(3), Count: 1, Peak: 0.6},
			},
		},
		{
			name: "a late alert extends back",
			alerts: []Alert{
				{Service: "shop", Kind: "rate_spike", Time: at(10), Score: 0.6},
				{Service: "shop", Kind: "rate_spike", Time: at(5), Score: 0.6},
			},
			want: []Episode{{ID: 1, Service: "shop", Kind: "rate_spike", First: at(5), Last: at(10), Count: 2, Peak: 0.6}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := newTracker(t, Config{})
			for _, a := range tc.alerts {
				tr.Observe(a)
			}
			closed, _ := tr.Closed()
			got := append(closed, tr.Open("")...)
			if len(got) != len(tc.want) {
				t.Fatalf("%d episodes, want %d: %+v", len(got), len(tc.want), got)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Errorf("episode %d:\n got %+v\nwant %+v", i, got[i], tc.want[i])
				}
			}
		})
	}
}

// TestResult: New marks the alert that opens an episode; Day counts the episodes a service
// opened in the UTC day of the alert.
func TestResult(t *testing.T) {
	tr := newTracker(t, Config{QuietGap: 10 * time.Minute})
	type step struct {
		minute  int
		service string
		id      uint64
		isNew   bool
		day     int
	}
	for i, s := range []step{
		{0, "shop", 1, true, 1},
		{5, "shop", 1, false, 1},
		{30, "shop", 2, true, 2},
		{35, "cart", 3, true, 1},
		{24*60 + 1, "shop", 4, true, 1}, // next day
		{24*60 + 2, "shop", 4, false, 1},
		{20, "shop", 5, true, 2}, // an old alert counts in the latest day
	} {
		r := tr.Observe(Alert{Service: s.service, Kind: "rate_spike", Time: at(s.minute), Score: 0.6})
		if r != (Result{ID: s.id, New: s.isNew, Day: s.day}) {
			t.Errorf("alert %d: %+v, want %+v", i, r, Result{ID: s.id, New: s.isNew, Day: s.day})
		}
	}
}

// TestSweep closes the episodes whose last alert is older than the quiet gap.
func TestSweep(t *testing.T) {
	tr := newTracker(t, Config{QuietGap: 10 * time.Minute})
	tr.Observe(Alert{Service: "shop", Destination: "a", Kind: "k", Time: at(0)})
	tr.Observe(Alert{Service: "shop", Destination: "b", Kind: "k", Time: at(8)})
	if n := tr.Sweep(at(10)); n != 0 {
		t.Errorf("Sweep at the gap closed %d", n)
	}
	if n := tr.Sweep(at(11)); n != 1 {
		t.Errorf("Sweep after a's gap closed %d, want 1", n)
	}
	closed, total := tr.Closed()
	if total != 1 || len(closed) != 1 || closed[0].Destination != "a" {
		t.Errorf("closed %+v (%d), want a's episode", closed, total)
	}
	if open := tr.Open("shop"); len(open) != 1 || open[0].Destination != "b" {
		t.Errorf("open %+v, want b's episode", open)
	}
}

// TestBounds: MaxOpen closes the episode extended least recently, MaxServices forgets the
// service alerted least recently (closing its episodes), KeepClosed keeps the last closed.
func TestBounds(t *testing.T) {
	tr := newTracker(t, Config{MaxOpen: 2, MaxServices: 2, KeepClosed: 3})
	obs := func(m int, svc, dest string) {
		tr.Observe(Alert{Service: svc, Destination: dest, Kind: "k", Time: at(m)})
	}
	obs(0, "s1", "a")
	obs(1, "s1", "b")
	obs(2, "s1", "a") // a is now the most recent
	obs(3, "s1", "c") // closes b
	closed, _ := tr.Closed()
	if len(closed) != 1 || closed[0].Destination != "b" {
		t.Fatalf("closed %+v, want b's episode", closed)
	}
	obs(4, "s2", "a")
	obs(5, "s3", "a") // forgets s1: closes a and c
	closed, total := tr.Closed()
	if total != 3 || len(closed) != 3 || closed[0].Destination != "b" || closed[0].Service != "s1" {
		t.Fatalf("closed %+v (%d), want s1's three episodes", closed, total)
	}
	obs(6, "s1", "z") // forgets s2
	closed, total = tr.Closed()
	if total != 4 || len(closed) != 3 || closed[2].Service != "s2" || closed[0].Service != "s1" {
		t.Errorf("after a fourth close: %+v (%d), want the last three, s2's last", closed, total)
	}
	if open := tr.Open(""); len(open) != 2 {
		t.Errorf("open %+v, want s3's and s1's", open)
	}
}

// TestAdversaryEpisodeMemory: a compromised workload that alerts on 100,000 destinations,
// and claims 100,000 service names, cannot grow the tracker past its bounds (issue 10,
// "streams and memory bounded": no input may cost more than a bounded share of memory; and
// case 11, a limit that opens the door: reaching the bound still records every episode).
func TestAdversaryEpisodeMemory(t *testing.T) {
	tr := newTracker(t, Config{MaxOpen: 8, MaxServices: 16, KeepClosed: 32})
	const n = 100_000
	for i := range n {
		r := tr.Observe(Alert{Service: "evil", Destination: fmt.Sprint("d", i), Kind: "new_destination", Time: at(0), TraceID: "t"})
		if !r.New || r.Day != i+1 {
			t.Fatalf("alert %d: %+v, want a new episode counted in the day", i, r)
		}
	}
	for i := range n {
		tr.Observe(Alert{Service: fmt.Sprint("s", i), Kind: "rate_spike", Time: at(1)})
	}
	tr.mu.Lock()
	services, closed := tr.services.Len(), len(tr.closed)
	tr.mu.Unlock()
	if open := tr.Open(""); services > 16 || len(open) > 16*8 || closed > 32 {
		t.Errorf("%d services, %d open, %d closed kept: past the bounds", services, len(open), closed)
	}
	if _, total := tr.Closed(); total != 2*n-16 {
		t.Errorf("%d episodes closed, want %d: every evicted episode is recorded", total, 2*n-16)
	}
}

// TestConcurrent: alerts from many goroutines, under -race, lose no count.
func TestConcurrent(t *testing.T) {
	tr := newTracker(t, Config{})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 1000 {
				tr.Observe(Alert{Service: fmt.Sprint("s", g%2), Kind: "rate_spike", Time: at(i % 30), Score: 0.6})
				if i%100 == 0 {
					tr.Open("")
					tr.Closed()
				}
			}
		}()
	}
	wg.Wait()
	open := tr.Open("")
	if len(open) != 2 || open[0].Count+open[1].Count != 4000 {
		t.Errorf("open %+v, want two episodes of 4000 alerts in all", open)
	}
}

func TestConfig(t *testing.T) {
	c, err := Config{}.Check()
	if err != nil || c.QuietGap != DefaultQuietGap || c.MaxOpen != DefaultMaxOpen ||
		c.MaxServices != DefaultMaxServices || c.KeepClosed != DefaultKeepClosed {
		t.Errorf("defaults: %+v, %v", c, err)
	}
	for name, bad := range map[string]Config{
		"sub-millisecond gap": {QuietGap: time.Microsecond},
		"negative max open":   {MaxOpen: -1},
		"negative services":   {MaxServices: -1},
		"negative keep":       {KeepClosed: -2},
	} {
		if _, err := New(bad); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestExtendDoesNotAllocate: adding an alert to an open episode allocates nothing.
func TestExtendDoesNotAllocate(t *testing.T) {
	tr := newTracker(t, Config{})
	a := Alert{Service: "shop/checkout", Destination: "api.example.com", Kind: "rate_spike", Time: t0, Score: 0.7, TraceID: "4bf92f3577b34da6a3ce929d0e0e4736"}
	tr.Observe(a)
	if n := testing.AllocsPerRun(1000, func() {
		a.Time = a.Time.Add(time.Second)
		tr.Observe(a)
	}); n != 0 {
		t.Errorf("extending an episode allocates %g times", n)
	}
}

// BenchmarkExtend: an alert that extends an open episode, the common case of a storm.
func BenchmarkExtend(b *testing.B) {
	tr := newTracker(b, Config{})
	a := Alert{Service: "shop/checkout", Destination: "api.example.com", Kind: "rate_spike", Time: t0, Score: 0.7, TraceID: "4bf92f3577b34da6a3ce929d0e0e4736"}
	for i := range 100 {
		tr.Observe(Alert{Service: fmt.Sprint("svc", i), Kind: "rate_spike", Time: t0})
	}
	b.ReportAllocs()
	for b.Loop() {
		a.Time = a.Time.Add(time.Second)
		tr.Observe(a)
	}
}
