package extproc

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/meshguard/meshguard/extproc/envoysim"
	"github.com/meshguard/meshguard/flowmodel"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/tap"
)

// benchServer is a server over a real model whose service shop/checkout has learned the
// exchange's destination (through the server) and is in enforce mode.
func benchServer(b *testing.B, cfg Config) *Server {
	b.Helper()
	m, err := flowmodel.New(flowmodel.Config{})
	if err != nil {
		b.Fatal(err)
	}
	metrics, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	cfg.Metrics, cfg.Logger = metrics, slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, err := NewServer(m, cfg)
	if err != nil {
		b.Fatal(err)
	}
	if err := srv.Process(&memStream{ctx: context.Background(), reqs: exchange()}); err != nil {
		b.Fatal(err)
	}
	if err := m.SetMode("shop/checkout", flowmodel.ModeChange{Mode: flowmodel.ModeEnforce}); err != nil {
		b.Fatal(err)
	}
	return srv
}

// exchange is one allowed request as Envoy sends it in the recommended processing mode:
// request headers with attributes, then response headers.
func exchange() []*extprocv3.ProcessingRequest {
	r := sidecarRequest("api.example.com")
	return []*extprocv3.ProcessingRequest{
		{
			Request:    &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{Headers: envoysim.HeaderMap(r.Headers), EndOfStream: true}},
			Attributes: envoysim.Attributes(r.Attributes),
		},
		{
			Request:    &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{Headers: envoysim.HeaderMap(r.ResponseHeaders), EndOfStream: true}},
			Attributes: envoysim.Attributes(r.ResponseAttributes),
		},
	}
}

// BenchmarkProcess is the server's whole handling of one stream (first-message timer,
// decision, metrics, span, observation) over an in-memory stream with a real model: the cost
// meshguard adds to a request beyond gRPC. budget=20ms arms the decision watchdog on every decision (see
// budget.go); compare it with budget=off of the same run.
func BenchmarkProcess(b *testing.B) {
	for _, bc := range []struct {
		name   string
		budget time.Duration
	}{{"budget=off", 0}, {"budget=20ms", 20 * time.Millisecond}} {
		b.Run(bc.name, func(b *testing.B) {
			srv := benchServer(b, Config{DecisionBudget: bc.budget})
			ms := &memStream{reqs: exchange()}
			info := &tap.Info{FullMethodName: extprocv3.ExternalProcessor_Process_FullMethodName}
			b.ReportAllocs()
			for b.Loop() {
				ms.reset()
				// The context grpc-go gives a stream, through the tap of StreamOptions.
				ms.ctx, _ = tapFirstMessage(context.Background(), info)
				if err := srv.Process(ms); err != nil {
					b.Fatal(err)
				}
				if len(ms.sent) != 2 || ms.sent[0].GetRequestHeaders() == nil {
					b.Fatalf("responses %v", ms.sent)
				}
			}
		})
	}
}

// BenchmarkDecideWithin isolates what the decision budget costs per decision: the decider
// answers at once, so only the watchdog's arming and stopping remain.
func BenchmarkDecideWithin(b *testing.B) {
	for _, bc := range []struct {
		name   string
		budget time.Duration
	}{{"budget=off", 0}, {"budget=20ms", 20 * time.Millisecond}} {
		b.Run(bc.name, func(b *testing.B) {
			srv, err := NewServer(instantDecider{}, Config{DecisionBudget: bc.budget})
			if err != nil {
				b.Fatal(err)
			}
			st := &stream{}
			b.ReportAllocs()
			for b.Loop() {
				st.answeredBy.Store(answerPending)
				if _, inTime := srv.decideWithin(st, incomplete{}); !inTime {
					b.Fatal("cut")
				}
			}
		})
	}
}

type instantDecider struct{}

func (instantDecider) Decide(*flowmodel.Flow) flowmodel.Verdict { return flowmodel.Verdict{} }
func (instantDecider) Observe(*flowmodel.Flow)                  {}
func (instantDecider) Mode(string) (flowmodel.Mode, bool)       { return flowmodel.ModeEnforce, true }
