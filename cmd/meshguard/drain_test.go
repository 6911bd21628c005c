package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/meshguard/meshguard/extproc/envoysim"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// drainStream is one ext_proc stream of the drain test.
type drainStream struct {
	target     string // "a" (the binary being stopped) or "b" (elsewhere)
	start, end time.Time
	err        error
}

// holdExchange plays one request as Envoy does, holding the stream open for hold between
// the request headers and the response headers (the upstream's time).
func holdExchange(ctx context.Context, c extprocv3.ExternalProcessorClient, hold time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, hold+5*time.Second)
	defer cancel()
	req := checkout.request("203.0.113.10", 443, "api.stripe.com", "GET", "/", "")
	s, err := c.Process(ctx)
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	if err := s.Send(&extprocv3.ProcessingRequest{
		Request:    &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{Headers: envoysim.HeaderMap(req.Headers), EndOfStream: true}},
		Attributes: envoysim.Attributes(req.Attributes),
	}); err != nil {
		return fmt.Errorf("send request headers: %w", err)
	}
	if r, err := s.Recv(); err != nil || r.GetRequestHeaders() == nil {
		return fmt.Errorf("request headers answered with %v, %w", r, err)
	}
	select {
	case <-time.After(hold):
	case <-ctx.Done():
		return ctx.Err()
	}
	if err := s.Send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{
		ResponseHeaders: &extprocv3.HttpHeaders{Headers: envoysim.HeaderMap(req.ResponseHeaders), EndOfStream: true}}}); err != nil {
		return fmt.Errorf("send response headers: %w", err)
	}
	if r, err := s.Recv(); err != nil || r.GetResponseHeaders() == nil {
		return fmt.Errorf("response headers answered with %v, %w", r, err)
	}
	if err := s.CloseSend(); err != nil {
		return fmt.Errorf("close send: %w", err)
	}
	if _, err := s.Recv(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("end of stream: %w", err)
	}
	return nil
}

// TestSIGTERMDrainsUnderLoad stops the real binary with SIGTERM while many streams are in
// flight, some of them held open past the lameduck (slow upstreams). A stand-in for Envoy
// health-checks it every 20 ms and sends new streams elsewhere (an in-process meshguard)
// once it reports NOT_SERVING. No stream to the stopped binary may end with an error, those
// in flight when GracefulStop begins included; the binary exits cleanly.
func TestSIGTERMDrainsUnderLoad(t *testing.T) {
	const (
		lameduck   = 1500 * time.Millisecond
		workers    = 32
		slowHold   = lameduck + 1500*time.Millisecond // workers 0..slowWorker-1: slow upstreams
		slowWorker = 8
	)
	a := startBinary(t, t.TempDir(), "--lameduck", lameduck.String(), "--drain-timeout", "10s")
	b := startTestServer(t, t.TempDir())
	conn, err := grpc.NewClient(a.ts.extprocAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	aClient, hc := extprocv3.NewExternalProcessorClient(conn), healthpb.NewHealthClient(conn)

	// Envoy's active health check of the ext_proc cluster.
	var (
		aHealthy    atomic.Bool
		notServing  atomic.Int64 // when A was first seen NOT_SERVING (unix nanos)
		ctx, cancel = context.WithCancel(context.Background())
		wg          sync.WaitGroup
	)
	defer cancel()
	aHealthy.Store(true)
	wg.Add(1)
	go func() {
		defer wg.Done()
		every := time.NewTicker(20 * time.Millisecond) // Envoy's health check interval
		defer every.Stop()
		for ctx.Err() == nil {
			cctx, ccancel := context.WithTimeout(ctx, 200*time.Millisecond)
			r, err := hc.Check(cctx, &healthpb.HealthCheckRequest{Service: "envoy.service.ext_proc.v3.ExternalProcessor"})
			ccancel()
			if err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				if aHealthy.Swap(false) {
					notServing.Store(time.Now().UnixNano())
				}
			}
			select {
			case <-every.C:
			case <-ctx.Done():
			}
		}
	}()

	var (
		mu      sync.Mutex
		streams []drainStream
		onA     atomic.Int64 // streams to A not yet ended
	)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				hold := time.Duration(i%5) * 40 * time.Millisecond
				if w < slowWorker {
					hold = slowHold
				}
				ds := drainStream{target: "b", start: time.Now()}
				client := b.client
				if aHealthy.Load() {
					ds.target, client = "a", aClient
					onA.Add(1)
				}
				ds.err = holdExchange(ctx, client, hold)
				ds.end = time.Now()
				if ds.target == "a" {
					onA.Add(-1)
				}
				if ctx.Err() != nil && ds.err != nil {
					return // the test is over, not the server
				}
				mu.Lock()
				streams = append(streams, ds)
				mu.Unlock()
			}
		}()
	}

	// SIGTERM under full load: every worker has a stream open to A, and some finished.
	waitFor(t, 30*time.Second, "the load on the binary", func() bool {
		mu.Lock()
		n := len(streams)
		mu.Unlock()
		return onA.Load() >= workers*3/4 && n >= workers
	})
	termAt := time.Now()
	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-a.exited:
	case <-time.After(20 * time.Second):
		t.Fatalf("no exit 20s after SIGTERM\n%s", a.logs())
	}
	exitAt := time.Now()
	// Every stream to A comes to an end, well or badly, and B serves the load on its own,
	// before the load stops.
	waitFor(t, 10*time.Second, "the end of every stream to the stopped binary", func() bool { return onA.Load() == 0 })
	waitFor(t, 10*time.Second, "streams to the other meshguard after the stopped one exited", func() bool {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, s := range streams {
			if s.target == "b" && s.start.After(exitAt) {
				n++
			}
		}
		return n >= workers
	})
	cancel()
	wg.Wait()

	if a.exitErr != nil {
		t.Fatalf("exit: %v\n%s", a.exitErr, a.logs())
	}
	logs := a.logs()
	if !strings.Contains(logs, "msg=stopped") || strings.Contains(logs, "drain timeout") {
		t.Errorf("no clean, timely stop logged:\n%s", logs)
	}
	gracefulAt := termAt.Add(lameduck)
	var toA, toB, failedA, inFlightAtTerm, inFlightAtGraceful, toAAfterNotServing int
	var firstErr error
	var lastA time.Time
	ns := time.Unix(0, notServing.Load())
	for _, s := range streams {
		switch s.target {
		case "a":
			toA++
			if s.err != nil {
				failedA++
				if firstErr == nil {
					firstErr = s.err
				}
			}
			if s.start.Before(termAt) && s.end.After(termAt) {
				inFlightAtTerm++
			}
			if s.start.Before(gracefulAt) && s.end.After(gracefulAt) {
				inFlightAtGraceful++
			}
			if s.start.After(ns) {
				toAAfterNotServing++
			}
			if s.end.After(lastA) {
				lastA = s.end
			}
		case "b":
			toB++
			if s.err != nil {
				t.Errorf("stream to the other meshguard failed: %v", s.err)
			}
		}
	}
	t.Logf("SIGTERM with %d streams in flight (%d still in flight when GracefulStop began, %v later); "+
		"NOT_SERVING seen %v after SIGTERM; last stream to it ended %v and it exited %v after SIGTERM; %d streams to the stopped binary, %d elsewhere",
		inFlightAtTerm, inFlightAtGraceful, lameduck, ns.Sub(termAt).Round(time.Millisecond),
		lastA.Sub(termAt).Round(time.Millisecond), exitAt.Sub(termAt).Round(time.Millisecond), toA, toB)
	if failedA > 0 {
		t.Fatalf("%d of %d streams to the stopped binary failed; first: %v", failedA, toA, firstErr)
	}
	if notServing.Load() == 0 || ns.Sub(termAt) > lameduck {
		t.Fatalf("health not NOT_SERVING within the lameduck (seen %v after SIGTERM)", ns.Sub(termAt))
	}
	if toAAfterNotServing > 0 {
		t.Errorf("%d streams went to the stopped binary after it reported NOT_SERVING", toAAfterNotServing)
	}
	if inFlightAtTerm < workers/2 || inFlightAtGraceful < slowWorker/2 || toB == 0 {
		t.Fatalf("not the load meant: %d in flight at SIGTERM, %d at GracefulStop, %d elsewhere", inFlightAtTerm, inFlightAtGraceful, toB)
	}
}
