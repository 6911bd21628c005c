package extproc

import (
	"context"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshguard/meshguard/extproc/envoysim"
	"github.com/meshguard/meshguard/flowmodel"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// lines is a run of n lines of service at one time.
type lines struct {
	at      time.Duration // after t0
	service string
	n       int
}

// feed runs the lines through l, and returns how many of each service were logged and the
// suppressed count reported.
func feed(l *logLimiter, runs []lines) (logged map[string]int, reported int64) {
	logged = map[string]int{}
	for _, r := range runs {
		for range r.n {
			ok, s := l.allow(t0.Add(r.at), r.service)
			reported += s
			if ok {
				logged[r.service]++
			}
		}
	}
	return logged, reported
}

func TestLogLimiter(t *testing.T) {
	for _, tc := range []struct {
		name      string
		perSecond int64
		runs      []lines
		want      map[string]int
		reported  int64 // suppressed lines reported by the end of the runs
	}{
		{
			name: "one service gets the whole cap", perSecond: 3,
			runs: []lines{{0, "a", 10}, {time.Second, "a", 1}},
			want: map[string]int{"a": 4}, reported: 7,
		},
		{
			name: "no cap", perSecond: -1,
			runs: []lines{{0, "a", 1000}},
			want: map[string]int{"a": 1000},
		},
		{
			name: "a flood does not hide another service's single line", perSecond: 10,
			runs: []lines{{0, "a", 1000}, {500 * time.Millisecond, "b", 1}},
			want: map[string]int{"a": 10, "b": 1},
		},
		{
			name: "services that logged in the last second share the cap", perSecond: 10,
			runs: []lines{{0, "a", 1000}, {0, "b", 1}, {time.Second, "a", 1000}, {time.Second, "b", 20}},
			// second 1: a 10 (the cap), b 1 (its first); second 2: a 5, b 5 (half each).
			want: map[string]int{"a": 15, "b": 6}, reported: 990,
		},
		{
			name: "the first line of a quiet service is logged every second", perSecond: 1,
			runs: []lines{{0, "a", 50}, {0, "b", 1}, {time.Second, "a", 50}, {time.Second, "b", 1}, {2 * time.Second, "a", 50}, {2 * time.Second, "b", 1}},
			want: map[string]int{"a": 3, "b": 3}, reported: 49 + 49,
		},
		{
			name: "a second that has passed counts in the current one", perSecond: 2,
			runs: []lines{{time.Second, "a", 2}, {0, "a", 5}, {time.Second, "a", 1}},
			want: map[string]int{"a": 2},
		},
		{
			name: "the empty service is a service", perSecond: 2,
			runs: []lines{{0, "a", 100}, {0, "", 1}},
			want: map[string]int{"a": 2, "": 1},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := &logLimiter{perSecond: tc.perSecond}
			got, reported := feed(l, tc.runs)
			for s, n := range tc.want {
				if got[s] != n {
					t.Errorf("service %q: %d lines logged, want %d (all: %v)", s, got[s], n, got)
				}
			}
			if reported != tc.reported {
				t.Errorf("%d suppressed lines reported, want %d", reported, tc.reported)
			}
		})
	}
}

// TestLogLimiterBounded: many services in one second (more than the table holds) cost bounded
// memory and at most logSlots lines past the cap, and every other line is counted.
func TestLogLimiterBounded(t *testing.T) {
	l := &logLimiter{perSecond: 10}
	const services = 5 * logSlots
	logged := 0
	for i := range services {
		if ok, _ := l.allow(t0, "svc-"+strconv.Itoa(i)); ok {
			logged++
		}
	}
	if len(l.slots) != logSlots {
		t.Errorf("%d slots, want %d", len(l.slots), logSlots)
	}
	if logged > logSlots+10 || logged < logSlots/2 {
		t.Errorf("%d lines logged from %d services, want between %d and %d", logged, services, logSlots/2, logSlots+10)
	}
	_, reported := l.allow(t0.Add(time.Second), "x")
	if reported != int64(services-logged) {
		t.Errorf("%d suppressed lines reported, want %d", reported, services-logged)
	}
}

// TestAdversaryLogFloodDoesNotHideAnotherService covers the careful attacker who floods
// blocked requests from one workload (past decision-log-rate lines a second) so that the
// decision line of the real attempt is suppressed: another service's single block in the
// same second is still logged, and so is the flooding service's first block of the next
// second; the flood's lines are counted (meshguard_decision_logs_suppressed_total) and summed
// up in one line.
func TestAdversaryLogFloodDoesNotHideAnotherService(t *testing.T) {
	var buf syncBuffer
	now := t0
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	metrics, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	blockAll := func(*flowmodel.Flow) flowmodel.Verdict {
		return flowmodel.Verdict{Action: flowmodel.Block, Mode: flowmodel.ModeEnforce, Score: 1,
			Reasons: flowmodel.Reasons(0).With(flowmodel.ReasonNewDestination)}
	}
	c := startServer(t, &fakeDecider{verdict: blockAll}, Config{
		Logger: slog.New(slog.NewTextHandler(&buf, nil)), DecisionLogsPerSecond: 5, Now: clock, Metrics: metrics,
	})
	const flood, workers = 40, 4
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range flood / workers {
				if _, err := envoysim.Do(context.Background(), c, sidecarRequest("evil.example"), 5*time.Second); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	other := sidecarRequest("real-target.example")
	other.Attributes[AttrNodeNamespace], other.Attributes[AttrNodeWorkload] = "shop", "cart"
	if _, err := envoysim.Do(context.Background(), c, other, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	// A line is written after the response is sent: wait for the flood's suppressed lines to
	// be counted and the other service's line to be written.
	waitFor(t, 20*time.Second, func() bool { return counterValue(t, metrics.logsDrop) == flood-5 }, "35 suppressed lines")
	waitFor(t, 20*time.Second, func() bool {
		return strings.Contains(buf.String(), "msg=decision service=shop/cart")
	}, "the other service's block line")
	if out := buf.String(); strings.Count(out, "msg=decision service=shop/checkout") != 5 {
		t.Errorf("%d lines of the flooding service, want 5 (the cap):\n%s", strings.Count(out, "msg=decision service=shop/checkout"), out)
	}
	mu.Lock()
	now = now.Add(time.Second)
	mu.Unlock()
	if _, err := envoysim.Do(context.Background(), c, sidecarRequest("second-attempt.example"), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, func() bool {
		return strings.Contains(buf.String(), "destination=second-attempt.example:443")
	}, "the flooding service's first block of the next second")
	if out := buf.String(); !strings.Contains(out, `msg="decision logs suppressed" lines=35`) {
		t.Errorf("no summary of the flood's 35 suppressed lines:\n%s", out)
	}
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// BenchmarkLogLimiter: the limiter's cost per line; "flood" is one service past its cap,
// "services" 64 services in turn.
func BenchmarkLogLimiter(b *testing.B) {
	b.Run("under-cap", func(b *testing.B) {
		l := logLimiter{perSecond: -1}
		b.ReportAllocs()
		for b.Loop() {
			l.allow(t0, "shop/checkout")
		}
	})
	b.Run("flood", func(b *testing.B) {
		l := logLimiter{perSecond: 100}
		b.ReportAllocs()
		for b.Loop() {
			l.allow(t0, "shop/checkout")
		}
	})
	b.Run("flood-parallel", func(b *testing.B) {
		l := logLimiter{perSecond: 100}
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				l.allow(t0, "shop/checkout")
			}
		})
	})
	b.Run("services", func(b *testing.B) {
		l := logLimiter{perSecond: 100}
		names := make([]string, 64)
		for i := range names {
			names[i] = "ns/workload-" + strconv.Itoa(i)
		}
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			l.allow(t0, names[i&63])
			i++
		}
	})
}
