package main

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/meshguard/meshguard/extproc"
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
}

// newTracing configures span export from the standard OTEL_* variables:
// OTEL_SDK_DISABLED, OTEL_TRACES_EXPORTER (otlp or none), OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT,
// OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL (grpc or http/protobuf, the default),
// OTEL_EXPORTER_OTLP_[TRACES_]HEADERS/INSECURE/TIMEOUT (read by the exporters),
// OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES. Nothing is exported unless an endpoint is
// set or OTEL_TRACES_EXPORTER=otlp asks for the default one.
func newTracing(ctx context.Context, getenv func(string) string) (*tracing, error) {
	off := &tracing{provider: noop.NewTracerProvider(), exporter: "none", shutdown: func(context.Context) error { return nil }}
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
	return &tracing{provider: tp, exporter: name, shutdown: tp.Shutdown}, nil
}

// envResource reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES.
func envResource(ctx context.Context) *resource.Resource {
	r, err := resource.New(ctx, resource.WithFromEnv(), resource.WithTelemetrySDK())
	if err != nil {
		// A malformed OTEL_RESOURCE_ATTRIBUTES still yields the valid part.
		fmt.Fprintln(os.Stderr, "meshguard: OTEL resource:", err)
	}
	return r
}
