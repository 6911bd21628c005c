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

// TestStreamsOverTheLimitFailFast holds MaxStreams streams open over real gRPC: one more
// fails at once with RESOURCE_EXHAUSTED (not a hang until Envoy's message_timeout), and once
// a held stream ends, a new one is served again.
func TestStreamsOverTheLimitFailFast(t *testing.T) {
	const limit = 4
	metrics, reg := newMetrics(t)
	c := startServer(t, &fakeDecider{}, Config{Logger: quietLogger, MaxStreams: limit, Metrics: metrics})
	held := make([]extprocv3.ExternalProcessor_ProcessClient, limit)
	for i := range held {
		held[i] = openDecidingStream(t, c, sidecarRequest("api.example.com"))
		if r, err := held[i].Recv(); err != nil || r.GetRequestHeaders() == nil {
			t.Fatalf("held stream %d: %v %v", i, r, err)
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

	held[0].CloseSend()
	if _, err := held[0].Recv(); err == nil {
		t.Fatal("held stream sent a second response")
	}
	if _, err := envoysim.Do(context.Background(), c, sidecarRequest("api.example.com"), 2*time.Second); err != nil {
		t.Fatalf("after a held stream ended: %v", err)
	}
}
