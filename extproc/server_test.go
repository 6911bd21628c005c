package extproc

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/meshguard/meshguard/extproc/envoysim"
	"github.com/meshguard/meshguard/flowmodel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	"google.golang.org/grpc/status"
)

// fakeDecider records flows and answers with verdict(f).
type fakeDecider struct {
	mu       sync.Mutex
	decided  []flowmodel.Flow
	observed []flowmodel.Flow
	verdict  func(*flowmodel.Flow) flowmodel.Verdict
}

func (d *fakeDecider) Decide(f *flowmodel.Flow) flowmodel.Verdict {
	d.mu.Lock()
	defer d.mu.Unlock()
	c := *f
	c.HeaderKeys = slices.Clone(f.HeaderKeys)
	d.decided = append(d.decided, c)
	if d.verdict == nil {
		return flowmodel.Verdict{Action: flowmodel.Allow, Mode: flowmodel.ModeMonitor}
	}
	return d.verdict(f)
}

func (d *fakeDecider) Observe(f *flowmodel.Flow) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.observed = append(d.observed, *f)
}

func (d *fakeDecider) Mode(string) (flowmodel.Mode, bool) { return flowmodel.ModeEnforce, true }

func (d *fakeDecider) flows() ([]flowmodel.Flow, []flowmodel.Flow) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.decided), slices.Clone(d.observed)
}

func blockNew(f *flowmodel.Flow) flowmodel.Verdict {
	if f.Destination.Host == "evil.example" {
		return flowmodel.Verdict{Action: flowmodel.Block, Mode: flowmodel.ModeEnforce, Score: 1,
			Reasons: flowmodel.Reasons(0).With(flowmodel.ReasonNewDestination)}
	}
	return flowmodel.Verdict{Action: flowmodel.Allow, Mode: flowmodel.ModeEnforce}
}

// startServer serves ext_proc on a loopback port and returns a client.
func startServer(t *testing.T, d Decider, cfg Config) extprocv3.ExternalProcessorClient {
	t.Helper()
	srv, err := NewServer(d, cfg)
	if err != nil {
		t.Fatal(err)
	}
	gs := NewGRPCServer(srv, health.NewServer())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return extprocv3.NewExternalProcessorClient(conn)
}

func sidecarRequest(host string) envoysim.Request {
	return envoysim.Request{
		Metadata: map[string]string{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
		Attributes: map[string]string{
			AttrNodeNamespace: "shop", AttrNodeWorkload: "checkout",
			AttrDestination: "203.0.113.7:443", AttrSourceAddress: "10.1.0.11:40000",
		},
		Headers: []envoysim.Header{
			{Key: ":method", Value: "POST"}, {Key: ":path", Value: "/v1/charges?id=1"}, {Key: ":authority", Value: host},
			{Key: ":scheme", Value: "https"}, {Key: "content-type", Value: "application/json"},
			{Key: "content-length", Value: "12"}, {Key: "authorization", Value: "Bearer secret"},
		},
		Body:               []byte(`{"amount":1}`),
		ResponseHeaders:    []envoysim.Header{{Key: ":status", Value: "201"}, {Key: "content-length", Value: "99"}},
		ResponseAttributes: map[string]string{AttrUpstreamAddress: "203.0.113.7:443"},
	}
}

func TestAllowAnswersEveryPhase(t *testing.T) {
	d := &fakeDecider{verdict: blockNew}
	c := startServer(t, d, Config{})
	res, err := envoysim.Do(context.Background(), c, sidecarRequest("api.example.com"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if res.Immediate != nil || len(res.Responses) != 3 {
		t.Fatalf("responses %v immediate %v", len(res.Responses), res.Immediate)
	}
	decided, observed := d.flows()
	if len(decided) != 1 || len(observed) != 1 {
		t.Fatalf("decided %d observed %d, want 1 and 1", len(decided), len(observed))
	}
	f := decided[0]
	if f.Service != "shop/checkout" || f.Destination.String() != "api.example.com:443" || f.Destination.IP.String() != "203.0.113.7" ||
		f.Method != "POST" || f.Path != "/v1/charges?id=1" || f.RequestBytes != 12 || f.ContentType != "application/json" || f.Source != "ext_proc" {
		t.Errorf("decided flow %+v", f)
	}
	if want := []string{"content-type", "content-length", "authorization"}; !slices.Equal(f.HeaderKeys, want) {
		t.Errorf("header keys %v, want %v", f.HeaderKeys, want)
	}
	o := observed[0]
	if o.Status != 201 || o.Upstream.String() != "203.0.113.7:443" || o.ResponseBytes != 99 {
		t.Errorf("observed flow %+v", o)
	}
}

func TestBlockIsAnImmediate403InTheCallersTrace(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec), sdktrace.WithSampler(DecisionSampler(nil)))
	c := startServer(t, &fakeDecider{verdict: blockNew}, Config{TracerProvider: tp})
	req := sidecarRequest("evil.example")
	req.Metadata["traceparent"] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00" // parent not sampled
	res, err := envoysim.Do(context.Background(), c, req, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ir := res.Immediate
	if ir == nil || len(res.Responses) != 1 {
		t.Fatalf("want an ImmediateResponse to the first message, got %d responses", len(res.Responses))
	}
	if ir.GetStatus().GetCode() != 403 || envoysim.HeaderValue(ir, VerdictHeader) != "block" ||
		envoysim.HeaderValue(ir, "content-type") != "application/json" || ir.GetDetails() != BlockDetails {
		t.Fatalf("immediate response %v", ir)
	}
	var body BlockBody
	if err := json.Unmarshal(ir.GetBody(), &body); err != nil {
		t.Fatal(err)
	}
	if body.Verdict != "block" || !slices.Equal(body.Reasons, []string{"new_destination"}) || body.TraceID != "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Fatalf("body %+v", body)
	}
	spans := endedSpans(rec, 1)
	if len(spans) != 1 {
		t.Fatalf("%d spans, want 1 (blocks are sampled even under an unsampled parent)", len(spans))
	}
	s := spans[0]
	if s.Parent().SpanID().String() != "00f067aa0ba902b7" || s.SpanContext().TraceID().String() != body.TraceID {
		t.Errorf("span parent %v trace %v", s.Parent().SpanID(), s.SpanContext().TraceID())
	}
	got := map[string]string{}
	for _, kv := range s.Attributes() {
		got[string(kv.Key)] = kv.Value.Emit()
	}
	want := map[string]string{
		"meshguard.service": "shop/checkout", "meshguard.mode": "enforce", "meshguard.verdict": "block",
		"meshguard.score": "1", "meshguard.reasons": `["new_destination"]`, "destination.address": "203.0.113.7",
		"destination.port": "443", "server.address": "evil.example", "http.request.method": "POST", "url.path": "/v1/charges",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("span attribute %s = %q, want %q", k, got[k], v)
		}
	}
}

// endedSpans returns the spans rec has seen end, once there are at least want of them or
// after 5s. The server ends a decision's span after sending its answer, so an answer that
// ends the stream (an ImmediateResponse) can reach the test before the span has ended.
func endedSpans(rec *tracetest.SpanRecorder, want int) []sdktrace.ReadOnlySpan {
	deadline := time.Now().Add(5 * time.Second)
	for len(rec.Ended()) < want && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	return rec.Ended()
}

func TestAllowedSpansFollowTheParent(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec), sdktrace.WithSampler(DecisionSampler(nil)))
	c := startServer(t, &fakeDecider{}, Config{TracerProvider: tp})
	for _, tc := range []struct {
		flags, where string
	}{{"01", "metadata"}, {"00", "metadata"}, {"01", "header"}, {"", "none"}} {
		req := sidecarRequest("api.example.com")
		delete(req.Metadata, "traceparent")
		tp := "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-" + tc.flags
		switch tc.where {
		case "metadata":
			req.Metadata["traceparent"] = tp
		case "header":
			req.Headers = append(req.Headers, envoysim.Header{Key: "traceparent", Value: tp})
		}
		if _, err := envoysim.Do(context.Background(), c, req, time.Second); err != nil {
			t.Fatal(err)
		}
	}
	spans := rec.Ended()
	if len(spans) != 2 {
		t.Fatalf("%d spans exported, want 2 (sampled parent in metadata, sampled parent in header)", len(spans))
	}
	for _, s := range spans {
		if s.SpanContext().TraceID().String() != "0af7651916cd43dd8448eb211c80319c" {
			t.Errorf("trace id %s", s.SpanContext().TraceID())
		}
	}
}

func TestObservabilityModeNeverAnswers(t *testing.T) {
	d := &fakeDecider{verdict: blockNew}
	c := startServer(t, d, Config{})
	req := sidecarRequest("evil.example")
	req.ObservabilityMode = true
	res, err := envoysim.Do(context.Background(), c, req, 300*time.Millisecond)
	if err != nil {
		t.Fatalf("stream must end cleanly with no responses: %v", err)
	}
	if len(res.Responses) != 0 {
		t.Fatalf("%d responses in observability mode", len(res.Responses))
	}
	if decided, _ := d.flows(); len(decided) != 1 {
		t.Fatalf("decided %d flows, want 1", len(decided))
	}
}

func TestMissingIdentityPolicy(t *testing.T) {
	for _, tc := range []struct {
		policy    string
		immediate bool
	}{{"", true}, {OnMissingAlert, false}, {OnMissingAllow, false}, {OnMissingBlock, true}} { // "": the default fails closed
		t.Run("policy="+tc.policy, func(t *testing.T) {
			d := &fakeDecider{}
			c := startServer(t, d, Config{OnMissing: tc.policy})
			req := sidecarRequest("api.example.com")
			req.Attributes = nil // no identity source at all
			res, err := envoysim.Do(context.Background(), c, req, time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if (res.Immediate != nil) != tc.immediate {
				t.Fatalf("immediate %v, want %v", res.Immediate, tc.immediate)
			}
			if tc.immediate {
				var body BlockBody
				json.Unmarshal(res.Immediate.GetBody(), &body)
				if !slices.Equal(body.Reasons, []string{"invalid_request"}) {
					t.Errorf("reasons %v", body.Reasons)
				}
			}
			if decided, _ := d.flows(); len(decided) != 0 {
				t.Errorf("the model was asked about a flow without identity")
			}
		})
	}
}

func TestFullDuplexBodyIsEchoed(t *testing.T) {
	c := startServer(t, &fakeDecider{}, Config{})
	req := sidecarRequest("api.example.com")
	req.ProtocolConfig = &extprocv3.ProtocolConfiguration{RequestBodyMode: extprocfilterv3.ProcessingMode_FULL_DUPLEX_STREAMED}
	res, err := envoysim.Do(context.Background(), c, req, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	sr := res.Responses[1].GetRequestBody().GetResponse().GetBodyMutation().GetStreamedResponse()
	if string(sr.GetBody()) != `{"amount":1}` || !sr.GetEndOfStream() {
		t.Fatalf("streamed body response %v", sr)
	}
}

// rawStream opens a stream and sends msgs, returning the responses and the final error.
func rawStream(t *testing.T, c extprocv3.ExternalProcessorClient, msgs ...*extprocv3.ProcessingRequest) ([]*extprocv3.ProcessingResponse, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s, err := c.Process(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		if err := s.Send(m); err != nil {
			t.Fatal(err)
		}
	}
	s.CloseSend()
	var out []*extprocv3.ProcessingResponse
	for {
		r, err := s.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return out, err
		}
		out = append(out, r)
	}
}

func TestProtocolErrorsAreNeverASilentAllow(t *testing.T) {
	c := startServer(t, &fakeDecider{}, Config{})
	resps, err := rawStream(t, c, &extprocv3.ProcessingRequest{})
	if status.Code(err) != codes.InvalidArgument || len(resps) != 0 {
		t.Fatalf("empty request: %d responses, err %v; want InvalidArgument", len(resps), err)
	}
}

func TestResponsePhaseDecidesWhenRequestPhasesAreSkipped(t *testing.T) {
	d := &fakeDecider{verdict: blockNew}
	c := startServer(t, d, Config{})
	resps, err := rawStream(t, c, &extprocv3.ProcessingRequest{
		Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{}},
		Attributes: envoysim.Attributes(map[string]string{AttrNodeNamespace: "a", AttrNodeWorkload: "b",
			AttrRequestedServer: "evil.example", AttrDestination: "198.51.100.1:443"}),
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(resps) != 1 || resps[0].GetImmediateResponse().GetStatus().GetCode() != 403 {
		t.Fatalf("responses %v", resps)
	}
}

func TestDecisionLogsAreRateLimited(t *testing.T) {
	var buf syncBuffer
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	c := startServer(t, &fakeDecider{verdict: blockNew}, Config{
		Logger: slog.New(slog.NewTextHandler(&buf, nil)), DecisionLogsPerSecond: 3, Now: clock,
	})
	for range 10 {
		if _, err := envoysim.Do(context.Background(), c, sidecarRequest("evil.example"), time.Second); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	now = now.Add(time.Second)
	mu.Unlock()
	if _, err := envoysim.Do(context.Background(), c, sidecarRequest("evil.example"), time.Second); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	if n := strings.Count(out, "msg=decision "); n != 4 {
		t.Errorf("%d decision lines, want 3 in the first second and 1 in the next:\n%s", n, out)
	}
	if !strings.Contains(out, `msg="decision logs suppressed" lines=7`) {
		t.Errorf("no summary of the 7 suppressed lines:\n%s", out)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
