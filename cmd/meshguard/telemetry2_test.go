package main

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// gatedExporter holds every export until the test opens its gate, and fails every failEvery-th
// batch (0: never).
type gatedExporter struct {
	gate      chan struct{}
	failEvery int64

	batches  atomic.Int64
	exported atomic.Int64
	entered  chan struct{} // receives once per export call, without blocking
}

func newGatedExporter(failEvery int64) *gatedExporter {
	return &gatedExporter{gate: make(chan struct{}), failEvery: failEvery, entered: make(chan struct{}, 1)}
}

func (e *gatedExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	select {
	case e.entered <- struct{}{}:
	default:
	}
	select {
	case <-e.gate:
	case <-ctx.Done():
		return ctx.Err()
	}
	if n := e.batches.Add(1); e.failEvery > 0 && n%e.failEvery == 0 {
		return errors.New("refused by the test")
	}
	e.exported.Add(int64(len(spans)))
	return nil
}

func (e *gatedExporter) Shutdown(context.Context) error { return nil }

func newTestBatcher(t *testing.T, exp sdktrace.SpanExporter, queue, batch int) (*sdktrace.TracerProvider, *spansDropped) {
	t.Helper()
	dropped := newSpansDropped()
	b := newCountingBatcherSize(exp, queue, batch, dropped,
		sdktrace.WithBatchTimeout(10*time.Millisecond), sdktrace.WithExportTimeout(time.Minute))
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(b), sdktrace.WithSampler(sdktrace.AlwaysSample()))
	return tp, dropped
}

// TestAdversarySpanQueueFullIsCounted covers the careful attacker who floods blocked requests
// (more spans than the batch queue holds in one export window) so that the span of its real
// attempt is dropped by the full queue: the drop is counted in
// meshguard_spans_dropped_total{reason="queue_full"}, exactly, never silent.
func TestAdversarySpanQueueFullIsCounted(t *testing.T) {
	const queue, flood = 8, 20
	exp := newGatedExporter(0)
	tp, dropped := newTestBatcher(t, exp, queue, 1)
	tr := tp.Tracer("test")
	// The exporter is stuck (a slow receiver), so nothing leaves the queue: the first span
	// is in the export, the next queue-1 wait, and the rest find the queue full.
	for range flood {
		_, sp := tr.Start(context.Background(), "meshguard.decision")
		sp.End()
	}
	// The real attempt, after the flood.
	_, real := tr.Start(context.Background(), "meshguard.decision")
	real.End()
	if got, want := counterValue(t, dropped.queueFull), float64(flood+1-queue); got != want {
		t.Errorf("queue_full %v, want %v", got, want)
	}
	close(exp.gate)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := tp.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if got := exp.exported.Load(); got != queue {
		t.Errorf("%d spans exported, want %d", got, queue)
	}
	if got := counterValue(t, dropped.exportFailed); got != 0 {
		t.Errorf("export_failed %v, want 0", got)
	}
}

// TestAdversarySpanFloodEverySpanAccounted: a concurrent flood against a slow, sometimes
// failing receiver; every span ended is exported or counted under one reason (the SDK's own
// queue never drops one silently).
func TestAdversarySpanFloodEverySpanAccounted(t *testing.T) {
	const queue, batch, workers, perWorker = 64, 16, 4, 500
	exp := newGatedExporter(3)
	tp, dropped := newTestBatcher(t, exp, queue, batch)
	tr := tp.Tracer("test")
	stop := make(chan struct{})
	var released sync.WaitGroup
	released.Go(func() { // the receiver answers one export at a time, when it gets to it
		for {
			select {
			case <-stop:
				return
			case <-exp.entered:
				select {
				case exp.gate <- struct{}{}:
				case <-stop:
					return
				}
			}
		}
	})
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range perWorker {
				_, sp := tr.Start(context.Background(), "meshguard.decision")
				sp.End()
			}
		})
	}
	wg.Wait()
	close(stop)
	released.Wait()
	close(exp.gate)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := tp.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	full, failed := counterValue(t, dropped.queueFull), counterValue(t, dropped.exportFailed)
	got := float64(exp.exported.Load()) + full + failed
	if got != workers*perWorker {
		t.Errorf("exported %d + queue_full %v + export_failed %v = %v, want %d (spans lost silently)",
			exp.exported.Load(), full, failed, got, workers*perWorker)
	}
	if full == 0 {
		t.Errorf("no queue_full drop: the flood never filled the queue (exported %d)", exp.exported.Load())
	}
}

// TestSpanQueueSizeFromEnv: the admission count and the SDK's queue agree on the size,
// whatever OTEL_BSP_* says (a bad value is the default, never a panic).
func TestSpanQueueSizeFromEnv(t *testing.T) {
	for _, tc := range []struct {
		name         string
		queue, batch string
		want         int64
	}{
		{"default", "", "", defaultSpanQueue},
		{"set", "100", "10", 100},
		{"batch over queue", "100", "1000", 100},
		{"negative", "-5", "", defaultSpanQueue},
		{"garbage", "many", "x", defaultSpanQueue},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{"OTEL_BSP_MAX_QUEUE_SIZE": tc.queue, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": tc.batch}
			b := newCountingBatcher(newGatedExporter(0), func(k string) string { return env[k] }, newSpansDropped())
			defer b.Shutdown(context.Background())
			if b.capacity != tc.want {
				t.Errorf("capacity %d, want %d", b.capacity, tc.want)
			}
		})
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

// TestAdversaryBlockedFloodSpansCountedInServe: the same attack against serve, wired from the
// standard variables: a receiver that takes its time, a small batch queue
// (OTEL_BSP_MAX_QUEUE_SIZE), a flood of blocked requests; the spans that found the queue full
// show in /metrics as meshguard_spans_dropped_total{reason="queue_full"}.
func TestAdversaryBlockedFloodSpansCountedInServe(t *testing.T) {
	hang := make(chan struct{})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select { // a receiver that has not answered yet
		case <-hang:
		case <-r.Context().Done():
		}
		w.WriteHeader(http.StatusOK)
	})}
	go srv.Serve(lis)
	t.Cleanup(func() { srv.Close() })
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"+lis.Addr().String())
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
	t.Setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "60000")
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
	t.Setenv("OTEL_BSP_MAX_QUEUE_SIZE", "4")
	t.Setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "1")
	ts := startTestServer(t, t.TempDir())
	t.Cleanup(func() { close(hang) }) // runs before the server's shutdown: its last export returns
	learn(t, ts)
	ts.mustSetMode(t, "shop/checkout", "enforce")
	const flood = 20
	for i := range flood {
		if code, _ := ts.do(t, checkout.request("198.51.100."+strconv.Itoa(i+1), 443, "exfil.example.net", "POST", "/", tp)); code != 403 {
			t.Fatalf("unknown destination: %d, want 403", code)
		}
	}
	// The receiver has not answered, so at most 4 spans are pending: of the flood's 20 blocks,
	// at least 16 found the queue full (more, with the learning's sampled spans before them).
	_, metrics := ts.http(t, "GET", "/metrics", nil)
	if n := metricValue(metrics, `meshguard_spans_dropped_total{reason="queue_full"}`); n < flood-4 {
		t.Fatalf("queue_full %v, want at least %d:\n%s", n, flood-4, grepLines(metrics, "spans"))
	}
}
