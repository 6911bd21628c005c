package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// otlpReceiver collects the spans exported to it, over OTLP/gRPC or OTLP/HTTP.
type otlpReceiver struct {
	collectortrace.UnimplementedTraceServiceServer
	mu       sync.Mutex
	spans    []*tracepb.Span
	services []string
	got      chan struct{}
}

func newReceiver() *otlpReceiver { return &otlpReceiver{got: make(chan struct{}, 100)} }

func (r *otlpReceiver) Export(_ context.Context, req *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	r.add(req)
	return &collectortrace.ExportTraceServiceResponse{}, nil
}

func (r *otlpReceiver) add(req *collectortrace.ExportTraceServiceRequest) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		for _, a := range rs.GetResource().GetAttributes() {
			if a.GetKey() == "service.name" {
				r.services = append(r.services, a.GetValue().GetStringValue())
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			r.spans = append(r.spans, ss.GetSpans()...)
		}
	}
	r.got <- struct{}{}
}

func (r *otlpReceiver) startGRPC(t *testing.T) string {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	collectortrace.RegisterTraceServiceServer(gs, r)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	return lis.Addr().String()
}

func (r *otlpReceiver) startHTTP(t *testing.T) string {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/traces", func(w http.ResponseWriter, req *http.Request) {
		b, err := io.ReadAll(req.Body)
		var msg collectortrace.ExportTraceServiceRequest
		if err != nil || req.Header.Get("Content-Type") != "application/x-protobuf" || proto.Unmarshal(b, &msg) != nil {
			http.Error(w, "bad export", http.StatusBadRequest)
			return
		}
		r.add(&msg)
		out, _ := proto.Marshal(&collectortrace.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		w.Write(out)
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(lis)
	t.Cleanup(func() { srv.Close() })
	return lis.Addr().String()
}

func (r *otlpReceiver) span(t *testing.T, verdict string) *tracepb.Span {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		r.mu.Lock()
		for _, s := range r.spans {
			if attr(s.GetAttributes(), "meshguard.verdict") == verdict {
				r.mu.Unlock()
				return s
			}
		}
		r.mu.Unlock()
		select {
		case <-r.got:
		case <-deadline:
			t.Fatalf("no %s span exported within 10s", verdict)
		}
	}
}

// attr renders an attribute's value: strings as they are, numbers in Go syntax, arrays of
// strings as [a,b].
func attr(kvs []*commonpb.KeyValue, key string) string {
	for _, kv := range kvs {
		if kv.GetKey() != key {
			continue
		}
		switch v := kv.GetValue().GetValue().(type) {
		case *commonpb.AnyValue_StringValue:
			return v.StringValue
		case *commonpb.AnyValue_IntValue:
			return strconv.FormatInt(v.IntValue, 10)
		case *commonpb.AnyValue_DoubleValue:
			return strconv.FormatFloat(v.DoubleValue, 'g', -1, 64)
		case *commonpb.AnyValue_ArrayValue:
			var parts []string
			for _, e := range v.ArrayValue.GetValues() {
				parts = append(parts, e.GetStringValue())
			}
			return "[" + strings.Join(parts, ",") + "]"
		}
	}
	return ""
}

func TestSpansReachAnOTLPReceiver(t *testing.T) {
	for _, proto := range []string{"grpc", "http/protobuf"} {
		t.Run(proto, func(t *testing.T) {
			rcv := newReceiver()
			var endpoint string
			if proto == "grpc" {
				endpoint = "http://" + rcv.startGRPC(t)
			} else {
				endpoint = "http://" + rcv.startHTTP(t)
			}
			t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
			t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", proto)
			t.Setenv("OTEL_SERVICE_NAME", "meshguard-test")
			t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "50")

			ts := startTestServer(t, t.TempDir())
			learn(t, ts)
			ts.mustSetMode(t, "shop/checkout", "enforce")
			// Unsampled parent: a block is exported anyway, an allow is not.
			unsampled := "00-11112222333344445555666677778888-00f067aa0ba902b7-00"
			if code, _ := ts.do(t, checkout.request("203.0.113.10", 443, "api.stripe.com", "GET", "/", unsampled)); code != 200 {
				t.Fatal("learned call blocked")
			}
			code, body := ts.do(t, checkout.request("198.51.100.66", 443, "exfil.example.net", "POST", "/upload?key=secret", unsampled))
			if code != 403 || body.TraceID != "11112222333344445555666677778888" {
				t.Fatalf("block: %d %+v", code, body)
			}
			s := rcv.span(t, "block")
			if got := hex.EncodeToString(s.GetTraceId()); got != "11112222333344445555666677778888" {
				t.Errorf("span trace id %s, want the one in traceparent", got)
			}
			if got := hex.EncodeToString(s.GetParentSpanId()); got != "00f067aa0ba902b7" {
				t.Errorf("span parent %s", got)
			}
			want := map[string]string{
				"meshguard.service": "shop/checkout", "meshguard.mode": "enforce", "meshguard.verdict": "block",
				"meshguard.score": "0.993", "meshguard.reasons": "[new_destination]", "destination.address": "198.51.100.66", // a new destination on a port the service uses (flowmodel/novelty.go)
				"destination.port": "443", "server.address": "exfil.example.net", "http.request.method": "POST",
				"url.path": "/upload",
			}
			for k, v := range want {
				if got := attr(s.GetAttributes(), k); got != v {
					t.Errorf("attribute %s = %q, want %q", k, got, v)
				}
			}
			// The learned call's span followed its unsampled parent.
			if err := ts.shutdown(context.Background()); err != nil {
				t.Fatal(err)
			}
			rcv.mu.Lock()
			defer rcv.mu.Unlock()
			for _, sp := range rcv.spans {
				if attr(sp.GetAttributes(), "meshguard.verdict") == "allow" && hex.EncodeToString(sp.GetTraceId()) == "11112222333344445555666677778888" {
					t.Error("an allowed decision under an unsampled parent was exported")
				}
			}
			if !slices.Contains(rcv.services, "meshguard-test") {
				t.Errorf("resource service.name %v, want OTEL_SERVICE_NAME", rcv.services)
			}
		})
	}
}

func TestNoExporterWithoutConfiguration(t *testing.T) {
	for _, env := range []map[string]string{
		{},
		{"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"},
		{"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"},
	} {
		tr, err := newTracing(context.Background(), func(k string) string { return env[k] }, slog.New(slog.DiscardHandler))
		if err != nil || tr.exporter != "none" {
			t.Errorf("env %v: exporter %v err %v", env, tr, err)
		}
	}
	if _, err := newTracing(context.Background(), func(k string) string {
		return map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}[k]
	}, slog.New(slog.DiscardHandler)); err == nil {
		t.Error("an unsupported exporter must be an error")
	}
}

// rejectingReceiver refuses every export: gRPC InvalidArgument, HTTP 400 (neither retried).
type rejectingReceiver struct {
	collectortrace.UnimplementedTraceServiceServer
}

func (rejectingReceiver) Export(context.Context, *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	return nil, status.Error(codes.InvalidArgument, "refused by the test")
}

// downEndpoint is a loopback address nothing listens on.
func downEndpoint(t *testing.T) string {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	return addr
}

// TestSpansDroppedAreCounted: spans an OTLP receiver never gets, because it is down,
// refuses them, or speaks the other protocol (http/protobuf sent to a gRPC port, as the
// install layouts did), are counted in meshguard_spans_dropped_total.
func TestSpansDroppedAreCounted(t *testing.T) {
	for _, proto := range []string{"grpc", "http/protobuf"} {
		for _, receiver := range []string{"down", "rejecting", "other protocol"} {
			t.Run(proto+" "+receiver, func(t *testing.T) {
				addr := downEndpoint(t)
				switch {
				case receiver == "other protocol" && proto == "grpc":
					addr = newReceiver().startHTTP(t)
				case receiver == "other protocol":
					addr = newReceiver().startGRPC(t)
				case receiver == "rejecting":
					lis, err := net.Listen("tcp", "127.0.0.1:0")
					if err != nil {
						t.Fatal(err)
					}
					addr = lis.Addr().String()
					if proto == "grpc" {
						gs := grpc.NewServer()
						collectortrace.RegisterTraceServiceServer(gs, rejectingReceiver{})
						go gs.Serve(lis)
						t.Cleanup(gs.Stop)
					} else {
						srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
							http.Error(w, "refused by the test", http.StatusBadRequest)
						})}
						go srv.Serve(lis)
						t.Cleanup(func() { srv.Close() })
					}
				}
				t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"+addr)
				t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", proto)
				t.Setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "500") // ms: a down receiver fails fast
				t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
				ts := startTestServer(t, t.TempDir())
				learn(t, ts)
				ts.mustSetMode(t, "shop/checkout", "enforce")
				if code, _ := ts.do(t, checkout.request("198.51.100.66", 443, "exfil.example.net", "POST", "/", tp)); code != 403 {
					t.Fatalf("unknown destination: %d, want 403", code)
				}
				deadline := time.Now().Add(30 * time.Second)
				for {
					_, metrics := ts.http(t, "GET", "/metrics", nil)
					if n := metricValue(metrics, `meshguard_spans_dropped_total{reason="export_failed"}`); n >= 1 {
						break
					}
					if time.Now().After(deadline) {
						t.Fatalf("meshguard_spans_dropped_total still 0 after 30s:\n%s", grepLines(metrics, "spans"))
					}
					time.Sleep(50 * time.Millisecond) // polling /metrics, with a deadline
				}
			})
		}
	}
}

// metricValue is the value of an unlabelled metric in a Prometheus text exposition (-1 when
// absent).
func metricValue(exposition, name string) float64 {
	for _, line := range strings.Split(exposition, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err == nil {
				return f
			}
		}
	}
	return -1
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestExportErrorsAreRateLimitedSlog: otel errors are structured slog lines, at most one per
// interval, and the next line says how many were held back.
func TestExportErrorsAreRateLimitedSlog(t *testing.T) {
	var buf strings.Builder
	h := &rateLimitedErrors{every: time.Hour}
	h.setLogger(slog.New(slog.NewJSONHandler(&buf, nil)))
	for range 3 {
		h.Handle(errors.New("connection refused"))
	}
	h.mu.Lock()
	h.last = h.last.Add(-time.Hour) // as if the interval had passed
	h.mu.Unlock()
	h.Handle(errors.New("still refused"))

	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d lines, want 2:\n%s", len(lines), buf.String())
	}
	for i, want := range []struct {
		err        string
		suppressed float64
	}{{"connection refused", 0}, {"still refused", 2}} {
		var rec map[string]any
		if err := json.Unmarshal([]byte(lines[i]), &rec); err != nil {
			t.Fatal(err)
		}
		if rec["level"] != "WARN" || rec["component"] != "otel" || rec["error"] != want.err || rec["errors_suppressed"] != want.suppressed {
			t.Errorf("line %d: %v", i, rec)
		}
	}
}

// TestExporterProtocolFromEnvironment: OTEL_EXPORTER_OTLP_TRACES_PROTOCOL wins over
// OTEL_EXPORTER_OTLP_PROTOCOL, and http/protobuf is the default, as the OTel specification
// says.
func TestExporterProtocolFromEnvironment(t *testing.T) {
	for _, tc := range []struct {
		name        string
		env         map[string]string
		want        string
		wantFailure bool
	}{
		{"default", map[string]string{}, "otlp/http", false},
		{"grpc", map[string]string{"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "otlp/grpc", false},
		{"traces protocol wins", map[string]string{"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}, "otlp/grpc", false},
		{"traces protocol wins the other way", map[string]string{"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}, "otlp/http", false},
		{"unsupported", map[string]string{"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = "http://" + downEndpoint(t)
			tr, err := newTracing(context.Background(), func(k string) string { return tc.env[k] }, slog.New(slog.DiscardHandler))
			if tc.wantFailure {
				if err == nil {
					t.Fatalf("exporter %s, want an error", tr.exporter)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer tr.shutdown(context.Background())
			if tr.exporter != tc.want {
				t.Fatalf("exporter %s, want %s", tr.exporter, tc.want)
			}
		})
	}
}
