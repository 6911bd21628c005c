package extproc

import (
	"context"
	"io"
	"sync"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
)

// memStream is an in-memory Process stream: Recv hands out reqs in order and then io.EOF,
// Send records the responses. It lets benchmarks and fuzz targets drive Server.Process
// without a network.
type memStream struct {
	grpc.ServerStream
	ctx  context.Context
	reqs []*extprocv3.ProcessingRequest
	next int

	mu   sync.Mutex
	sent []*extprocv3.ProcessingResponse
	// recvd is how many requests had been received when each response was sent.
	recvd []int
}

func (m *memStream) Context() context.Context { return m.ctx }

func (m *memStream) Recv() (*extprocv3.ProcessingRequest, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.next >= len(m.reqs) {
		return nil, io.EOF
	}
	m.next++
	return m.reqs[m.next-1], nil
}

func (m *memStream) Send(r *extprocv3.ProcessingResponse) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sent = append(m.sent, r)
	m.recvd = append(m.recvd, m.next)
	return nil
}

// reset readies the stream for another run over the same requests.
func (m *memStream) reset() {
	m.next, m.sent, m.recvd = 0, m.sent[:0], m.recvd[:0]
}
