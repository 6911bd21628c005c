package main

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/meshguard/meshguard/extproc/contract"
	"github.com/meshguard/meshguard/extproc/envoysim"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshguard/meshguard/bench/load/nullproc"
)

// phaseLog records, on the server side, the phases of every stream in the order received.
type phaseLog struct {
	mu      sync.Mutex
	streams [][]string
	noAttrs int // first messages without the ext_proc attributes
}

type loggingStream struct {
	grpc.ServerStream
	log    *phaseLog
	phases []string
}

func (s *loggingStream) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	if err == nil {
		req := m.(*extprocv3.ProcessingRequest)
		if len(s.phases) == 0 && req.GetAttributes()[contract.AttributesKey] == nil {
			s.log.mu.Lock()
			s.log.noAttrs++
			s.log.mu.Unlock()
		}
		s.phases = append(s.phases, envoysim.PhaseName(req))
	}
	return err
}

func (l *phaseLog) interceptor(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ls := &loggingStream{ServerStream: ss, log: l}
	err := handler(srv, ls)
	l.mu.Lock()
	l.streams = append(l.streams, ls.phases)
	l.mu.Unlock()
	return err
}

// startNull serves the null ext_proc server in-process on loopback port 0.
func startNull(t *testing.T, opts ...grpc.ServerOption) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(append(nullproc.ServerOptions(nullproc.Config{}), opts...)...)
	extprocv3.RegisterExternalProcessorServer(srv, nullproc.Processor{})
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

func dialT(t *testing.T, addr string, n int) *Conns {
	t.Helper()
	c, err := Dial(context.Background(), addr, n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func TestShortLoadAgainstNullServer(t *testing.T) {
	tests := []struct {
		name  string
		mix   MixConfig
		phase Phase
	}{
		{
			name:  "closed loop, all phases",
			mix:   MixConfig{Services: 20, Namespaces: 3, DestsPerService: 5, NewDestShare: 0.05, Body: true, BodyBytes: 256, Response: true, ProtocolConfig: true},
			phase: Phase{Concurrency: 8, Warmup: 100 * time.Millisecond, Duration: 400 * time.Millisecond},
		},
		{
			name:  "open loop, request headers only",
			mix:   MixConfig{Services: 5, DestsPerService: 2},
			phase: Phase{Rate: 250, MaxInflight: 100, Warmup: 100 * time.Millisecond, Duration: 400 * time.Millisecond},
		},
		{
			name:  "fixed count",
			mix:   MixConfig{Services: 7, DestsPerService: 3, Response: true},
			phase: Phase{Concurrency: 4, Count: 21},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			log := &phaseLog{}
			addr := startNull(t, grpc.StreamInterceptor(log.interceptor))
			mix, err := NewMix(tc.mix)
			if err != nil {
				t.Fatal(err)
			}
			p := tc.phase
			// A generous timeout: the test shares a busy machine, and may run under -race.
			p.Name, p.Conns, p.Mix, p.Timeout, p.Seed = tc.name, dialT(t, addr, 2), mix, 10*time.Second, 7
			pairs := uint64(tc.mix.Services * tc.mix.DestsPerService)
			p.Source = func(k uint64, r *rand.Rand) Req {
				if p.Count > 0 {
					return mix.Pair(int(k % pairs))
				}
				return mix.Pick(r)
			}
			res, err := p.Run(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if res.FailureCount() != 0 {
				t.Fatalf("failures %v, first: %s", res.Failures, res.FirstFailure)
			}
			if res.OK == 0 || res.Decision.N != res.OK || res.Held.N != res.OK || res.Stream.N != res.OK {
				t.Fatalf("ok %d, histogram counts %d/%d/%d", res.OK, res.Decision.N, res.Held.N, res.Stream.N)
			}
			if len(res.Immediate) != 0 {
				t.Fatalf("the null server never answers with an ImmediateResponse, got %v", res.Immediate)
			}
			if p.Count > 0 && res.OK != p.Count {
				t.Fatalf("ran %d of %d exchanges", res.OK, p.Count)
			}
			if p.Rate > 0 {
				want := p.Rate * res.Elapsed.Seconds()
				if float64(res.OK) < 0.7*want || float64(res.OK) > 1.3*want {
					t.Fatalf("open loop at %v/s for %v completed %d, want about %.0f", p.Rate, res.Elapsed, res.OK, want)
				}
			}
			if res.Decision.Quantile(0.5) <= 0 || res.Held.Quantile(0.99) < res.Decision.Quantile(0.5) {
				t.Fatalf("implausible latencies: decision p50 %v, held p99 %v", res.Decision.Quantile(0.5), res.Held.Quantile(0.99))
			}

			// Server side: every stream's phases arrived in Envoy's order, attributes first.
			log.mu.Lock()
			defer log.mu.Unlock()
			if uint64(len(log.streams)) < res.OK {
				t.Fatalf("server saw %d streams, client completed %d", len(log.streams), res.OK)
			}
			if log.noAttrs != 0 {
				t.Fatalf("%d streams began without attributes", log.noAttrs)
			}
			for _, phases := range log.streams {
				want := []string{"request_headers"}
				if len(phases) == 3 || (len(phases) == 2 && !tc.mix.Response) {
					want = append(want, "request_body")
				}
				if tc.mix.Response {
					want = append(want, "response_headers")
				}
				if !slices.Equal(phases, want) {
					t.Fatalf("stream phases %v, want %v", phases, want)
				}
			}
		})
	}
}

// fakeProc is an ext_proc server whose Process is a test function.
type fakeProc struct {
	extprocv3.UnimplementedExternalProcessorServer
	process func(grpc.BidiStreamingServer[extprocv3.ProcessingRequest, extprocv3.ProcessingResponse]) error
}

func (f fakeProc) Process(s grpc.BidiStreamingServer[extprocv3.ProcessingRequest, extprocv3.ProcessingResponse]) error {
	return f.process(s)
}

func startFake(t *testing.T, f func(grpc.BidiStreamingServer[extprocv3.ProcessingRequest, extprocv3.ProcessingResponse]) error) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	extprocv3.RegisterExternalProcessorServer(srv, fakeProc{process: f})
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

func immediate(code typev3.StatusCode) *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ImmediateResponse{
		ImmediateResponse: &extprocv3.ImmediateResponse{Status: &typev3.HttpStatus{Code: code}}}}
}

// drainThen reads to EOF, then returns err.
func drainThen(s grpc.BidiStreamingServer[extprocv3.ProcessingRequest, extprocv3.ProcessingResponse], err error) error {
	for {
		if _, e := s.Recv(); e != nil {
			if errors.Is(e, io.EOF) {
				return err
			}
			return e
		}
	}
}

// continueOne reads one message and answers it as the null server does.
func continueOne(s grpc.BidiStreamingServer[extprocv3.ProcessingRequest, extprocv3.ProcessingResponse]) error {
	req, err := s.Recv()
	if err != nil {
		return err
	}
	resp, _ := nullproc.Continue(req)
	return s.Send(resp)
}

func TestRunExchangeAgainstMisbehavingServers(t *testing.T) {
	// Generous: the first message also waits for the connection, and CI machines are busy.
	const timeout = time.Second
	tests := []struct {
		name          string
		process       func(grpc.BidiStreamingServer[extprocv3.ProcessingRequest, extprocv3.ProcessingResponse]) error
		wantKind      string // failure kind, "" for success
		wantImmediate int
		wantAnswered  int
		wantMsgs      int // messages the server received
	}{
		{
			name: "immediate response ends the exchange at the first phase",
			process: func(s grpc.BidiStreamingServer[extprocv3.ProcessingRequest, extprocv3.ProcessingResponse]) error {
				if _, err := s.Recv(); err != nil {
					return err
				}
				if err := s.Send(immediate(typev3.StatusCode_Forbidden)); err != nil {
					return err
				}
				return drainThen(s, nil)
			},
			wantImmediate: 403, wantMsgs: 1,
		},
		{
			name: "immediate response at the response phase",
			process: func(s grpc.BidiStreamingServer[extprocv3.ProcessingRequest, extprocv3.ProcessingResponse]) error {
				if err := continueOne(s); err != nil {
					return err
				}
				if _, err := s.Recv(); err != nil {
					return err
				}
				if err := s.Send(immediate(typev3.StatusCode_BadGateway)); err != nil {
					return err
				}
				return drainThen(s, nil)
			},
			wantImmediate: 502, wantAnswered: 1, wantMsgs: 2,
		},
		{
			name: "answer for the wrong phase",
			process: func(s grpc.BidiStreamingServer[extprocv3.ProcessingRequest, extprocv3.ProcessingResponse]) error {
				if _, err := s.Recv(); err != nil {
					return err
				}
				return s.Send(&extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{}}})
			},
			wantKind: failOutOfOrder,
		},
		{
			name: "silent server hits the message timeout",
			process: func(s grpc.BidiStreamingServer[extprocv3.ProcessingRequest, extprocv3.ProcessingResponse]) error {
				<-s.Context().Done()
				return nil
			},
			wantKind: failTimeout,
		},
		{
			name: "server fails the stream",
			process: func(s grpc.BidiStreamingServer[extprocv3.ProcessingRequest, extprocv3.ProcessingResponse]) error {
				if _, err := s.Recv(); err != nil {
					return err
				}
				return status.Error(codes.Internal, "boom")
			},
			wantKind: failRPC,
		},
		{
			name: "extra answer after the last phase",
			process: func(s grpc.BidiStreamingServer[extprocv3.ProcessingRequest, extprocv3.ProcessingResponse]) error {
				for range 2 {
					if err := continueOne(s); err != nil {
						return err
					}
				}
				return s.Send(&extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{}}})
			},
			wantKind: failDrain,
		},
	}
	mix, err := NewMix(MixConfig{Services: 1, DestsPerService: 1, Response: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			msgs := 0
			addr := startFake(t, func(s grpc.BidiStreamingServer[extprocv3.ProcessingRequest, extprocv3.ProcessingResponse]) error {
				return tc.process(&countingStream{BidiStreamingServer: s, n: &msgs, mu: &mu})
			})
			conns := dialT(t, addr, 1)
			ex := mix.Build(mix.Known(0, 0), rand.New(rand.NewPCG(1, 1)))
			start := time.Now()
			out, err := RunExchange(context.Background(), conns.Pick(), ex, timeout, start)
			if tc.wantKind != "" {
				var se *StreamError
				if !errors.As(err, &se) || se.Kind != tc.wantKind {
					t.Fatalf("error %v, want kind %s", err, tc.wantKind)
				}
				if tc.wantKind == failTimeout && (time.Since(start) < timeout || time.Since(start) > 10*timeout) {
					t.Fatalf("timed out after %v, message timeout %v", time.Since(start), timeout)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if out.Immediate != tc.wantImmediate || out.Answered != tc.wantAnswered {
				t.Fatalf("immediate %d answered %d, want %d %d", out.Immediate, out.Answered, tc.wantImmediate, tc.wantAnswered)
			}
			mu.Lock()
			defer mu.Unlock()
			if msgs != tc.wantMsgs {
				t.Fatalf("server received %d messages, want %d (the client must stop at an ImmediateResponse)", msgs, tc.wantMsgs)
			}
			if out.Decision <= 0 || out.Held < out.Decision || out.Stream < out.Held {
				t.Fatalf("latencies decision %v held %v stream %v", out.Decision, out.Held, out.Stream)
			}
		})
	}
}

type countingStream struct {
	grpc.BidiStreamingServer[extprocv3.ProcessingRequest, extprocv3.ProcessingResponse]
	mu *sync.Mutex
	n  *int
}

func (c *countingStream) Recv() (*extprocv3.ProcessingRequest, error) {
	req, err := c.BidiStreamingServer.Recv()
	if err == nil {
		c.mu.Lock()
		*c.n++
		c.mu.Unlock()
	}
	return req, err
}

func TestOpenLoopChargesTheWait(t *testing.T) {
	// A server that takes 20ms per stream, one stream at a time: an open loop at 100/s falls
	// behind, and its latencies must show the queueing, not just the 20ms service time.
	var mu sync.Mutex
	addr := startFake(t, func(s grpc.BidiStreamingServer[extprocv3.ProcessingRequest, extprocv3.ProcessingResponse]) error {
		mu.Lock()
		time.Sleep(20 * time.Millisecond) // the service time this fake server plays, not a synchronisation
		mu.Unlock()
		if err := continueOne(s); err != nil {
			return err
		}
		return drainThen(s, nil)
	})
	mix, _ := NewMix(MixConfig{Services: 1, DestsPerService: 1})
	p := &Phase{Name: "slow", Conns: dialT(t, addr, 1), Mix: mix, Rate: 100, MaxInflight: 1000, Duration: 300 * time.Millisecond,
		Timeout: 5 * time.Second, Source: func(_ uint64, r *rand.Rand) Req { return mix.Pick(r) }}
	res, err := p.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if res.OK == 0 {
		t.Fatal("nothing completed")
	}
	if p99 := res.Decision.Quantile(0.99); p99 < 100*time.Millisecond {
		t.Fatalf("p99 %v: the queueing behind a 50/s server was not charged", p99)
	}
	if res.FailureCount() != 0 {
		t.Fatalf("failures: %s", failures(res))
	}
}
