package extproc

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/meshguard/meshguard/extproc/envoysim"
	"github.com/meshguard/meshguard/flowmodel"
	"github.com/prometheus/client_golang/prometheus"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// stuckDecider is a decider whose Decide waits until release is closed, as when another
// goroutine holds the service's lock; then it blocks everything.
type stuckDecider struct {
	release  chan struct{}
	entered  chan struct{} // receives once per Decide call
	observed atomic.Int64
}

func newStuckDecider() *stuckDecider {
	return &stuckDecider{release: make(chan struct{}), entered: make(chan struct{}, 16)}
}

func (d *stuckDecider) Decide(*flowmodel.Flow) flowmodel.Verdict {
	d.entered <- struct{}{}
	<-d.release
	return flowmodel.Verdict{Action: flowmodel.Block, Mode: flowmodel.ModeEnforce, Score: 1,
		Reasons: flowmodel.Reasons(0).With(flowmodel.ReasonNewDestination)}
}

func (d *stuckDecider) Observe(*flowmodel.Flow) { d.observed.Add(1) }

func (d *stuckDecider) Mode(string) (flowmodel.Mode, bool) { return flowmodel.ModeEnforce, true }

// metricValue returns the value of a counter or gauge in reg, the one whose labels include
// labels (name, value pairs).
func metricValue(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue metrics
				}
			}
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return 0
}

var quietLogger = slog.New(slog.NewTextHandler(io.Discard, nil))

func newMetrics(t *testing.T) (*Metrics, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	return m, reg
}

// openDecidingStream opens a stream and sends the request headers of req.
func openDecidingStream(t *testing.T, c extprocv3.ExternalProcessorClient, req envoysim.Request) extprocv3.ExternalProcessor_ProcessClient {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s, err := c.Process(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&extprocv3.ProcessingRequest{
		Request:    &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{Headers: envoysim.HeaderMap(req.Headers)}},
		Attributes: envoysim.Attributes(req.Attributes),
	}); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestBudgetAllowAnswersInTimeAndServesTheRestOfTheStream(t *testing.T) {
	const budget = 30 * time.Millisecond
	d := newStuckDecider()
	metrics, reg := newMetrics(t)
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec), sdktrace.WithSampler(DecisionSampler(nil)))
	c := startServer(t, d, Config{Logger: quietLogger, DecisionBudget: budget, OnBudget: OnBudgetAllow, Metrics: metrics, TracerProvider: tp})

	// The budget's clock starts between these two readings: after the stream is opened,
	// before the decider is entered. Bounding the wait from below by the first and from
	// above by the second keeps opening the stream (slow on a loaded machine) out of it.
	start := time.Now()
	s := openDecidingStream(t, c, sidecarRequest("api.example.com"))
	<-d.entered
	entered := time.Now()
	resp, err := s.Recv()
	atLeast, atMost := time.Since(start), time.Since(entered)
	if err != nil || resp.GetRequestHeaders() == nil {
		t.Fatalf("request headers answered with %v, %v; want CONTINUE", resp, err)
	}
	// Envoy's default message_timeout is 200 ms: the answer must come well before it.
	if atLeast < budget || atMost > 150*time.Millisecond {
		t.Errorf("answered between %v and %v after the decision started, want about the budget (%v)", atMost, atLeast, budget)
	}
	// The decider is still stuck, yet the response phase is answered.
	if err := s.Send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{
		ResponseHeaders: &extprocv3.HttpHeaders{Headers: envoysim.HeaderMap([]envoysim.Header{{Key: ":status", Value: "200"}})}}}); err != nil {
		t.Fatal(err)
	}
	if resp, err := s.Recv(); err != nil || resp.GetResponseHeaders() == nil {
		t.Fatalf("response headers answered with %v, %v", resp, err)
	}
	if err := s.CloseSend(); err != nil {
		t.Fatal(err)
	}
	// The stream ends only once the decider returns (gRPC ends a stream when its handler
	// does); Envoy does not wait for that end.
	close(d.release)
	if _, err := s.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("stream ended with %v, want a clean end", err)
	}

	if n := metricValue(t, reg, "meshguard_decision_budget_exceeded_total"); n != 1 {
		t.Errorf("budget_exceeded_total %v, want 1", n)
	}
	if n := metricValue(t, reg, "meshguard_decisions_total", "verdict", "alert"); n != 1 {
		t.Errorf("decisions_total{verdict=alert} %v, want 1", n)
	}
	if n := metricValue(t, reg, "meshguard_decision_budget_late_total", "verdict", "block"); n != 1 {
		t.Errorf("budget_late_total{verdict=block} %v, want 1 (the decider's verdict came late)", n)
	}
	if n := d.observed.Load(); n != 0 {
		t.Errorf("Observe called %d times on a service whose decider is stuck", n)
	}
	spans := rec.Ended()
	if len(spans) != 1 {
		t.Fatalf("%d spans, want 1", len(spans))
	}
	got := map[string]string{}
	for _, kv := range spans[0].Attributes() {
		got[string(kv.Key)] = kv.Value.Emit()
	}
	if got["meshguard.budget_exceeded"] != "true" || got["meshguard.verdict"] != "alert" || got["meshguard.reasons"] != "[]" {
		t.Errorf("span attributes %v", got)
	}
}

func TestBudgetBlockIsA403(t *testing.T) {
	d := newStuckDecider()
	defer close(d.release)
	c := startServer(t, d, Config{Logger: quietLogger, DecisionBudget: 20 * time.Millisecond, OnBudget: OnBudgetBlock})
	s := openDecidingStream(t, c, sidecarRequest("api.example.com"))
	resp, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	ir := resp.GetImmediateResponse()
	if ir.GetStatus().GetCode() != 403 || ir.GetDetails() != BudgetDetails || envoysim.HeaderValue(ir, VerdictHeader) != "block" {
		t.Fatalf("want a 403 with details %s, got %v", BudgetDetails, resp)
	}
	var body BlockBody
	if err := json.Unmarshal(ir.GetBody(), &body); err != nil {
		t.Fatal(err)
	}
	if body.Verdict != "block" || !body.BudgetExceeded || body.Reasons == nil || len(body.Reasons) != 0 {
		t.Errorf("body %s", ir.GetBody())
	}
}

func TestBudgetLeavesTimelyVerdictsAlone(t *testing.T) {
	d := &fakeDecider{verdict: blockNew}
	metrics, reg := newMetrics(t)
	c := startServer(t, d, Config{Logger: quietLogger, DecisionBudget: 10 * time.Second, OnBudget: OnBudgetAllow, Metrics: metrics})
	for _, tc := range []struct {
		host    string
		blocked bool
	}{{"api.example.com", false}, {"evil.example", true}, {"api.example.com", false}} {
		res, err := envoysim.Do(context.Background(), c, sidecarRequest(tc.host), 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if blocked := res.Immediate != nil; blocked != tc.blocked {
			t.Errorf("%s: blocked %v, want %v", tc.host, blocked, tc.blocked)
		}
	}
	if _, observed := d.flows(); len(observed) != 2 {
		t.Errorf("%d observed flows, want 2", len(observed))
	}
	if n := metricValue(t, reg, "meshguard_decision_budget_exceeded_total"); n != 0 {
		t.Errorf("budget_exceeded_total %v, want 0", n)
	}
}

// jitterDecider takes a random time around the budget, so that decider and watchdog race.
type jitterDecider struct{ max time.Duration }

func (d jitterDecider) Decide(*flowmodel.Flow) flowmodel.Verdict {
	time.Sleep(rand.N(d.max))
	return flowmodel.Verdict{Action: flowmodel.Allow, Mode: flowmodel.ModeEnforce}
}
func (jitterDecider) Observe(*flowmodel.Flow)            {}
func (jitterDecider) Mode(string) (flowmodel.Mode, bool) { return flowmodel.ModeEnforce, true }

// TestBudgetRaceAnswersEachMessageOnce races decider and watchdog on many streams: each
// deciding message gets exactly one answer, the decider's (CONTINUE) or the budget's (403),
// every stream ends cleanly, and the metric counts the 403s.
func TestBudgetRaceAnswersEachMessageOnce(t *testing.T) {
	const budget = 2 * time.Millisecond
	metrics, reg := newMetrics(t)
	c := startServer(t, jitterDecider{max: 2 * budget}, Config{Logger: quietLogger, DecisionBudget: budget, OnBudget: OnBudgetBlock, Metrics: metrics})
	var (
		wg           sync.WaitGroup
		cut, inTime  atomic.Int64
		errMu        sync.Mutex
		firstFailure error
	)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 40 {
				res, err := envoysim.Do(context.Background(), c, sidecarRequest("api.example.com"), 5*time.Second)
				switch {
				case err != nil:
				case res.Immediate != nil && res.Immediate.GetDetails() == BudgetDetails:
					cut.Add(1)
					continue
				case res.Immediate == nil && len(res.Responses) == 3:
					inTime.Add(1)
					continue
				default:
					err = errors.New("neither the decider's answer nor the budget's")
				}
				errMu.Lock()
				if firstFailure == nil {
					firstFailure = err
				}
				errMu.Unlock()
				return
			}
		}()
	}
	wg.Wait()
	if firstFailure != nil {
		t.Fatal(firstFailure)
	}
	t.Logf("%d streams cut by the budget, %d decided in time", cut.Load(), inTime.Load())
	if cut.Load()+inTime.Load() != 320 {
		t.Fatalf("%d streams accounted for, want 320", cut.Load()+inTime.Load())
	}
	if n := metricValue(t, reg, "meshguard_decision_budget_exceeded_total"); n != float64(cut.Load()) {
		t.Errorf("budget_exceeded_total %v, want %d", n, cut.Load())
	}
}
