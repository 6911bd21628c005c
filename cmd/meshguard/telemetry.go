package main

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshguard/meshguard/extproc"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// tracing is the tracer provider meshguard exports decision spans with.
type tracing struct {
	provider trace.TracerProvider
	// exporter names what is configured ("none", "otlp/grpc", "otlp/http").
	exporter string
	shutdown func(context.Context) error
	// dropped counts the spans that were never sent (meshguard_spans_dropped_total{reason}).
	dropped *spansDropped
}

// The reasons of meshguard_spans_dropped_total.
const (
	// dropExportFailed: the exporter failed to send the span's batch.
	dropExportFailed = "export_failed"
	// dropQueueFull: the batch queue was full when the span ended.
	dropQueueFull = "queue_full"
)

// spansDropped is meshguard_spans_dropped_total{reason}, with both reasons present from the
// start so that a dashboard sees 0, not nothing.
type spansDropped struct {
	vec          *prometheus.CounterVec
	exportFailed prometheus.Counter
	queueFull    prometheus.Counter
}

func newSpansDropped() *spansDropped {
	vec := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshguard_spans_dropped_total",
		Help: "Spans never sent, by reason: export_failed (the OTLP receiver is down, unreachable or refused them), " +
			"queue_full (the batch queue was full when the span ended).",
	}, []string{"reason"})
	return &spansDropped{vec: vec, exportFailed: vec.WithLabelValues(dropExportFailed), queueFull: vec.WithLabelValues(dropQueueFull)}
}

// register adds the tracing metrics to reg.
func (t *tracing) register(reg prometheus.Registerer) error { return reg.Register(t.dropped.vec) }

// newTracing configures span export from the standard OTEL_* variables:
// OTEL_SDK_DISABLED, OTEL_TRACES_EXPORTER (otlp or none), OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT,
// OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL (grpc or http/protobuf, the default),
// OTEL_EXPORTER_OTLP_[TRACES_]HEADERS/INSECURE/TIMEOUT (read by the exporters),
// OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES. Nothing is exported unless an endpoint is
// set or OTEL_TRACES_EXPORTER=otlp asks for the default one.
//
// Export errors go to log (rate-limited, through otel's global error handler) and count in
// meshguard_spans_dropped_total{reason="export_failed"}; spans that find the batch queue
// (OTEL_BSP_MAX_QUEUE_SIZE, 2048) full count in meshguard_spans_dropped_total{reason="queue_full"}.
func newTracing(ctx context.Context, getenv func(string) string, log *slog.Logger) (*tracing, error) {
	off := &tracing{provider: noop.NewTracerProvider(), exporter: "none", shutdown: func(context.Context) error { return nil }, dropped: newSpansDropped()}
	if strings.EqualFold(getenv("OTEL_SDK_DISABLED"), "true") {
		return off, nil
	}
	switch exp := strings.TrimSpace(getenv("OTEL_TRACES_EXPORTER")); exp {
	case "none":
		return off, nil
	case "", "otlp":
		if exp == "" && getenv("OTEL_EXPORTER_OTLP_ENDPOINT") == "" && getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") == "" {
			return off, nil
		}
	default:
		return nil, fmt.Errorf("OTEL_TRACES_EXPORTER=%q: meshguard supports otlp and none", exp)
	}
	proto := getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
	if proto == "" {
		proto = getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	var (
		exporter sdktrace.SpanExporter
		err      error
		name     string
	)
	switch proto {
	case "grpc":
		exporter, err = otlptracegrpc.New(ctx)
		name = "otlp/grpc"
	case "", "http/protobuf":
		exporter, err = otlptracehttp.New(ctx)
		name = "otlp/http"
	default:
		return nil, fmt.Errorf("OTEL_EXPORTER_OTLP_PROTOCOL=%q: meshguard supports grpc and http/protobuf", proto)
	}
	if err != nil {
		return nil, fmt.Errorf("create %s trace exporter: %w", name, err)
	}
	dropped := newSpansDropped()
	exportErrors.setLogger(log)
	otel.SetErrorHandler(exportErrors)
	res, err := resource.Merge(
		resource.NewSchemaless(semconv.ServiceName("meshguard"), semconv.ServiceVersion(version())),
		envResource(ctx),
	)
	if err != nil {
		return nil, fmt.Errorf("trace resource: %w", err)
	}
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithResource(res),
		// The batcher's queue is bounded and drops rather than blocks the request path; every
		// span it does not send is counted.
		sdktrace.WithSpanProcessor(newCountingBatcher(exporter, getenv, dropped)),
		sdktrace.WithSampler(extproc.DecisionSampler(nil)),
	)
	return &tracing{provider: tp, exporter: name, shutdown: tp.Shutdown, dropped: dropped}, nil
}

// countingBatcher is the SDK's batch span processor behind an admission count that knows the
// capacity of its queue. The SDK's processor drops a span silently when its queue is full
// (unless it blocks, which would stall the request path) and does not expose how many it
// dropped; countingBatcher admits a sampled span only while fewer than the queue's capacity
// are pending (ended and not yet through the exporter), and counts the others as queue_full.
// The SDK's queue holds a subset of the pending spans, so it is never full when a span is
// admitted: every sampled span is either exported, or counted in one reason or the other.
type countingBatcher struct {
	sdktrace.SpanProcessor // the SDK's batch span processor
	capacity               int64
	pending                *atomic.Int64
	queueFull              prometheus.Counter
}

// The SDK's defaults (sdktrace.DefaultMaxQueueSize, DefaultMaxExportBatchSize).
const (
	defaultSpanQueue = sdktrace.DefaultMaxQueueSize
	defaultSpanBatch = sdktrace.DefaultMaxExportBatchSize
)

// newCountingBatcher batches spans to exporter with the queue size OTEL_BSP_MAX_QUEUE_SIZE
// and batch size OTEL_BSP_MAX_EXPORT_BATCH_SIZE (positive integers; otherwise, or when the
// batch would exceed the queue, the SDK's defaults, 2048 and 512, bounded by the queue). The
// other OTEL_BSP_* variables are read by the SDK.
func newCountingBatcher(exporter sdktrace.SpanExporter, getenv func(string) string, dropped *spansDropped) *countingBatcher {
	queue := positiveEnv(getenv, "OTEL_BSP_MAX_QUEUE_SIZE", defaultSpanQueue)
	batch := positiveEnv(getenv, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", defaultSpanBatch)
	if batch > queue {
		batch = min(defaultSpanBatch, queue)
	}
	return newCountingBatcherSize(exporter, queue, batch, dropped)
}

func newCountingBatcherSize(exporter sdktrace.SpanExporter, queue, batch int, dropped *spansDropped, opts ...sdktrace.BatchSpanProcessorOption) *countingBatcher {
	pending := new(atomic.Int64)
	counted := countingExporter{SpanExporter: exporter, dropped: dropped.exportFailed, pending: pending}
	opts = append([]sdktrace.BatchSpanProcessorOption{sdktrace.WithMaxQueueSize(queue), sdktrace.WithMaxExportBatchSize(batch)}, opts...)
	return &countingBatcher{
		SpanProcessor: sdktrace.NewBatchSpanProcessor(counted, opts...),
		capacity:      int64(queue),
		pending:       pending,
		queueFull:     dropped.queueFull,
	}
}

func positiveEnv(getenv func(string) string, key string, def int) int {
	if n, err := strconv.Atoi(strings.TrimSpace(getenv(key))); err == nil && n > 0 {
		return n
	}
	return def
}

// OnEnd admits s into the batch queue, or counts it as queue_full. An unsampled span is
// ignored, as the SDK's processor ignores it.
func (b *countingBatcher) OnEnd(s sdktrace.ReadOnlySpan) {
	if !s.SpanContext().IsSampled() {
		return
	}
	if b.pending.Add(1) > b.capacity {
		b.pending.Add(-1)
		b.queueFull.Inc()
		return
	}
	b.SpanProcessor.OnEnd(s)
}

// countingExporter counts the spans of every batch its exporter failed to send (the batch
// span processor hands the error to otel's error handler and drops the batch), and releases
// the batch's places in countingBatcher's count.
type countingExporter struct {
	sdktrace.SpanExporter
	dropped prometheus.Counter
	pending *atomic.Int64
}

func (e countingExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	err := e.SpanExporter.ExportSpans(ctx, spans)
	if err != nil {
		e.dropped.Add(float64(len(spans)))
	}
	e.pending.Add(-int64(len(spans)))
	return err
}

// exportErrors is the process's otel error handler: otel has one, global.
var exportErrors = &rateLimitedErrors{every: 10 * time.Second}

// rateLimitedErrors logs an error at most once per interval, saying how many it held back
// since the last line: a receiver that is down must not flood the log.
type rateLimitedErrors struct {
	every time.Duration
	log   atomic.Pointer[slog.Logger]

	mu         sync.Mutex
	last       time.Time
	suppressed int
}

func (h *rateLimitedErrors) setLogger(l *slog.Logger) { h.log.Store(l) }

// Handle implements otel.ErrorHandler.
func (h *rateLimitedErrors) Handle(err error) {
	h.mu.Lock()
	now := time.Now()
	if !h.last.IsZero() && now.Sub(h.last) < h.every {
		h.suppressed++
		h.mu.Unlock()
		return
	}
	n := h.suppressed
	h.last, h.suppressed = now, 0
	h.mu.Unlock()
	log := h.log.Load()
	if log == nil {
		log = slog.Default()
	}
	log.Warn("OpenTelemetry error; failed exports drop their spans (meshguard_spans_dropped_total)",
		slog.String("component", "otel"), slog.Any("error", err), slog.Int("errors_suppressed", n))
}

// envResource reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES.
func envResource(ctx context.Context) *resource.Resource {
	r, err := resource.New(ctx, resource.WithFromEnv(), resource.WithTelemetrySDK())
	if err != nil {
		// A malformed OTEL_RESOURCE_ATTRIBUTES still yields the valid part.
		otel.Handle(fmt.Errorf("OTEL resource: %w", err))
	}
	return r
}
