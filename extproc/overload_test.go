package extproc

import (
	"context"
	"strings"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/meshguard/meshguard/extproc/envoysim"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestStreamsOverTheLimitFailFast holds MaxStreams decisions in progress over real gRPC (the
// decider is stuck): one more stream fails at once with RESOURCE_EXHAUSTED (not a hang until
// Envoy's message_timeout), and once the decisions are answered, a new stream is served.
func TestStreamsOverTheLimitFailFast(t *testing.T) {
	const limit = 4
	metrics, reg := newMetrics(t)
	d := newStuckDecider()
	c := startServer(t, d, Config{Logger: quietLogger, MaxStreams: limit, Metrics: metrics})
	held := make([]extprocv3.ExternalProcessor_ProcessClient, limit)
	for i := range held {
		held[i] = openDecidingStream(t, c, sidecarRequest("api.example.com"))
		select {
		case <-d.entered:
		case <-time.After(10 * time.Second):
			t.Fatalf("decision %d never reached the decider", i)
		}
	}
	if n := metricValue(t, reg, "meshguard_extproc_streams_active"); n != limit {
		t.Fatalf("streams_active %v, want %d", n, limit)
	}

	start := time.Now()
	extra, err := c.Process(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// The send may already see the stream ended (io.EOF); Recv says why.
	extra.Send(exchange()[0])
	_, err = extra.Recv()
	took := time.Since(start)
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(status.Convert(err).Message(), "limit") {
		t.Fatalf("stream over the limit ended with %v, want RESOURCE_EXHAUSTED naming the limit", err)
	}
	if took > 100*time.Millisecond {
		t.Errorf("refused after %v, want at once", took)
	}
	if n := metricValue(t, reg, "meshguard_extproc_streams_rejected_total"); n != 1 {
		t.Errorf("streams_rejected_total %v, want 1", n)
	}

	close(d.release)
	for i, h := range held {
		if r, err := h.Recv(); err != nil || r.GetImmediateResponse() == nil {
			t.Fatalf("held stream %d: %v %v, want its verdict", i, r, err)
		}
	}
	if _, err := envoysim.Do(context.Background(), c, sidecarRequest("api.example.com"), 2*time.Second); err != nil {
		t.Fatalf("after the held decisions were answered: %v", err)
	}
}
