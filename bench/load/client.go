package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/meshguard/meshguard/extproc/envoysim"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// Conns is a few HTTP/2 connections (one grpc.ClientConn each) to one ext_proc server, as an
// Envoy's worker threads hold to the ext_proc cluster. Streams are spread over them round-robin.
type Conns struct {
	conns   []*grpc.ClientConn
	clients []extprocv3.ExternalProcessorClient
	next    atomic.Uint64
}

// Dial opens n connections to target (host:port or unix:///path) and waits until each is ready.
func Dial(ctx context.Context, target string, n int) (*Conns, error) {
	if n < 1 {
		return nil, fmt.Errorf("dial %s: need at least one connection, got %d", target, n)
	}
	c := &Conns{}
	for range n {
		cc, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("dial %s: %w", target, err)
		}
		cc.Connect()
		c.conns = append(c.conns, cc)
		c.clients = append(c.clients, extprocv3.NewExternalProcessorClient(cc))
	}
	return c, nil
}

// Pick returns the client for the next stream.
func (c *Conns) Pick() extprocv3.ExternalProcessorClient {
	return c.clients[(c.next.Add(1)-1)%uint64(len(c.clients))]
}

// Close closes every connection.
func (c *Conns) Close() {
	for _, cc := range c.conns {
		cc.Close()
	}
}

// Outcome is what one ext_proc stream (one simulated HTTP request) came to.
type Outcome struct {
	// Decision: from the intended start to the request_headers answer, the delay Envoy adds
	// before it can forward the request.
	Decision time.Duration
	// Held: Decision plus the round trip of every later phase Envoy waited on (request body,
	// response headers), the total delay ext_proc adds to the HTTP exchange.
	Held time.Duration
	// Stream: from the intended start to the end of the gRPC stream (EOF after CloseSend).
	Stream time.Duration
	// Immediate is the HTTP status of an ImmediateResponse, 0 when every phase continued.
	Immediate int
	// Answered counts the phases answered, in order.
	Answered int
}

// Failure kinds a stream can end with. They label the error counts in reports.
const (
	failTimeout    = "message_timeout" // no answer within the per-message timeout
	failOutOfOrder = "out_of_order"    // an answer that does not match the phase sent
	failRPC        = "rpc"             // the stream failed (status in the error)
	failSend       = "send"            // sending a message failed
	failDrain      = "drain"           // the stream did not end cleanly after CloseSend
)

// StreamError is a failed stream: Kind is one of the fail* constants.
type StreamError struct {
	Kind  string
	Phase int
	Err   error
}

func (e *StreamError) Error() string {
	return fmt.Sprintf("%s at phase %d: %v", e.Kind, e.Phase, e.Err)
}

func (e *StreamError) Unwrap() error { return e.Err }

// RunExchange plays one exchange the way Envoy's ext_proc filter does: a new Process stream;
// each message sent only after the previous one was answered, each answer awaited at most
// timeout (Envoy's message_timeout); stop early on an ImmediateResponse; then CloseSend and
// read to EOF. Latencies are measured from start, the intended start time, so that an open-loop
// caller that falls behind still counts the wait (no coordinated omission).
func RunExchange(ctx context.Context, client extprocv3.ExternalProcessorClient, ex Exchange, timeout time.Duration, start time.Time) (Outcome, error) {
	var out Outcome
	if len(ex.Msgs) == 0 {
		return out, &StreamError{Kind: failSend, Err: errors.New("an exchange without messages")}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var timedOut atomic.Bool
	// armed runs f with the per-message timer running; the timer cancels the stream on expiry.
	armed := func(f func() error) error {
		t := time.AfterFunc(timeout, func() { timedOut.Store(true); cancel() })
		err := f()
		t.Stop()
		if err != nil && timedOut.Load() {
			return fmt.Errorf("%w: no answer within %v", context.DeadlineExceeded, timeout)
		}
		return err
	}
	var stream grpc.BidiStreamingClient[extprocv3.ProcessingRequest, extprocv3.ProcessingResponse]
	for i, msg := range ex.Msgs {
		sent := time.Now()
		var resp *extprocv3.ProcessingResponse
		err := armed(func() error {
			if stream == nil {
				s, err := client.Process(ctx)
				if err != nil {
					return err
				}
				stream = s
			}
			if err := stream.Send(msg); err != nil {
				if errors.Is(err, io.EOF) {
					// The server ended the stream; RecvMsg reports why.
					_, err = stream.Recv()
				}
				return err
			}
			var err error
			resp, err = stream.Recv()
			return err
		})
		now := time.Now()
		if err != nil {
			return out, classify(i, err, timedOut.Load())
		}
		if i == 0 {
			out.Decision = now.Sub(start)
			out.Held = out.Decision
		} else {
			out.Held += now.Sub(sent)
		}
		if imm, ok := resp.GetResponse().(*extprocv3.ProcessingResponse_ImmediateResponse); ok {
			out.Immediate = int(imm.ImmediateResponse.GetStatus().GetCode())
			if out.Immediate == 0 {
				out.Immediate = -1 // an ImmediateResponse without a status
			}
			break
		}
		if !envoysim.Answers(resp, msg) {
			return out, &StreamError{Kind: failOutOfOrder, Phase: i, Err: fmt.Errorf("sent %s, got %s", envoysim.PhaseName(msg), respName(resp))}
		}
		out.Answered++
	}
	err := armed(func() error {
		if err := stream.CloseSend(); err != nil {
			return err
		}
		resp, err := stream.Recv()
		switch {
		case errors.Is(err, io.EOF):
			return nil
		case err != nil:
			return err
		default:
			return fmt.Errorf("unexpected %s after the last phase", respName(resp))
		}
	})
	if err != nil {
		e := classify(len(ex.Msgs), err, timedOut.Load())
		if e.Kind != failTimeout {
			e.Kind = failDrain
		}
		return out, e
	}
	out.Stream = time.Since(start)
	return out, nil
}

func classify(phase int, err error, timedOut bool) *StreamError {
	switch {
	case timedOut:
		return &StreamError{Kind: failTimeout, Phase: phase, Err: err}
	case status.Code(err) != 0 || errors.Is(err, context.Canceled):
		return &StreamError{Kind: failRPC, Phase: phase, Err: err}
	default:
		return &StreamError{Kind: failSend, Phase: phase, Err: err}
	}
}

func respName(resp *extprocv3.ProcessingResponse) string {
	switch resp.GetResponse().(type) {
	case *extprocv3.ProcessingResponse_RequestHeaders:
		return "request_headers"
	case *extprocv3.ProcessingResponse_RequestBody:
		return "request_body"
	case *extprocv3.ProcessingResponse_ResponseHeaders:
		return "response_headers"
	case *extprocv3.ProcessingResponse_ResponseBody:
		return "response_body"
	case *extprocv3.ProcessingResponse_RequestTrailers:
		return "request_trailers"
	case *extprocv3.ProcessingResponse_ResponseTrailers:
		return "response_trailers"
	case *extprocv3.ProcessingResponse_ImmediateResponse:
		return "immediate_response"
	}
	return "nothing"
}
