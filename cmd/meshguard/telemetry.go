package main

import (
	"context"
	"fmt"
	"log/slog"
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
	// dropped counts the spans the exporter failed to send (meshguard_spans_dropped_total).
	dropped prometheus.Counter
}

func newSpansDropped() prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{
		Name: "meshguard_spans_dropped_total",
		Help: "Spans the OTLP exporter failed to send (the receiver is down, unreachable or refused them).",
	})
}

// register adds the tracing metrics to reg.
func (t *tracing) register(reg prometheus.Registerer) error { return reg.Register(t.dropped) }

// newTracing configures span export from the standard OTEL_* variables:
// OTEL_SDK_DISABLED, OTEL_TRACES_EXPORTER (otlp or none), OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT,
// OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL (grpc or http/protobuf, the default),
// OTEL_EXPORTER_OTLP_[TRACES_]HEADERS/INSECURE/TIMEOUT (read by the exporters),
// OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES. Nothing is exported unless an endpoint is
// set or OTEL_TRACES_EXPORTER=otlp asks for the default one.
//
// Export errors go to log (rate-limited, through otel's global error handler) and count in
// meshguard_spans_dropped_total.
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
	exporter = countingExporter{SpanExporter: exporter, dropped: dropped}
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
		// The batcher's queue is bounded and drops rather than blocks the request path.
		sdktrace.WithBatcher(exporter),
		sdktrace.WithSampler(extproc.DecisionSampler(nil)),
	)
	return &tracing{provider: tp, exporter: name, shutdown: tp.Shutdown, dropped: dropped}, nil
}

// countingExporter counts the spans of every batch its exporter failed to send. The batch
// span processor hands the error to otel's error handler and drops the batch.
type countingExporter struct {
	sdktrace.SpanExporter
	dropped prometheus.Counter
}

func (e countingExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	err := e.SpanExporter.ExportSpans(ctx, spans)
	if err != nil {
		e.dropped.Add(float64(len(spans)))
	}
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
