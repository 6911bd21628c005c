package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/meshguard/meshguard/extproc/contract"
	"google.golang.org/grpc"

	"github.com/meshguard/meshguard/bench/load/nullproc"
)

// fakeGuard stands in for meshguard in the scale scenario's test: per service it learns
// destinations in learn mode and, in enforce mode, answers a stream to an unknown destination
// with an ImmediateResponse 403. leakEvery > 0 lets every leakEvery-th such stream through.
type fakeGuard struct {
	extprocv3.UnimplementedExternalProcessorServer
	leakEvery int

	mu      sync.Mutex
	modes   map[string]string
	dests   map[string]map[string]bool
	unknown int
}

func newFakeGuard(leakEvery int) *fakeGuard {
	return &fakeGuard{leakEvery: leakEvery, modes: map[string]string{}, dests: map[string]map[string]bool{}}
}

func (g *fakeGuard) Process(s grpc.BidiStreamingServer[extprocv3.ProcessingRequest, extprocv3.ProcessingResponse]) error {
	first := true
	for {
		req, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if first {
			first = false
			attrs := req.GetAttributes()[contract.AttributesKey].GetFields()
			svc := attrs[contract.AttrNodeNamespace].GetStringValue() + "/" + attrs[contract.AttrNodeWorkload].GetStringValue()
			dst := attrs[contract.AttrDestination].GetStringValue()
			g.mu.Lock()
			block := false
			switch g.modes[svc] {
			case "", "learn":
				if g.dests[svc] == nil {
					g.dests[svc] = map[string]bool{}
				}
				g.dests[svc][dst] = true
			case "enforce":
				if !g.dests[svc][dst] {
					g.unknown++
					block = g.leakEvery == 0 || g.unknown%g.leakEvery != 0
				}
			}
			g.mu.Unlock()
			if block {
				if err := s.Send(&extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ImmediateResponse{
					ImmediateResponse: &extprocv3.ImmediateResponse{Status: &typev3.HttpStatus{Code: typev3.StatusCode_Forbidden}}}}); err != nil {
					return err
				}
				continue
			}
		}
		resp, err := nullproc.Continue(req)
		if err != nil {
			return err
		}
		if err := s.Send(resp); err != nil {
			return err
		}
	}
}

func (g *fakeGuard) admin() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /v1/services/{service}/mode", func(w http.ResponseWriter, r *http.Request) {
		var body struct{ Mode string }
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil || body.Mode == "" {
			http.Error(w, "bad body", http.StatusBadRequest)
			return
		}
		svc := r.PathValue("service")
		g.mu.Lock()
		defer g.mu.Unlock()
		if g.dests[svc] == nil {
			http.Error(w, "unknown service "+svc, http.StatusNotFound)
			return
		}
		g.modes[svc] = body.Mode
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /v1/services", func(w http.ResponseWriter, _ *http.Request) {
		g.mu.Lock()
		defer g.mu.Unlock()
		var list []map[string]string
		for svc := range g.dests {
			list = append(list, map[string]string{"service": svc, "mode": g.modes[svc]})
		}
		json.NewEncoder(w).Encode(map[string]any{"services": list})
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "# HELP go_memstats_heap_inuse_bytes Number of heap bytes that are in use.")
		fmt.Fprintln(w, "go_memstats_heap_inuse_bytes 1.2e+07")
	})
	return mux
}

func TestScaleScenarioAgainstAFakeGuard(t *testing.T) {
	tests := []struct {
		name        string
		leakEvery   int
		wantBlocked uint64
		wantAll     bool
	}{
		{"a guard that blocks every scan request", 0, 300, true},
		{"a guard that lets one in a hundred through", 100, 297, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := newFakeGuard(tc.leakEvery)
			lis, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			srv := grpc.NewServer()
			extprocv3.RegisterExternalProcessorServer(srv, g)
			go srv.Serve(lis)
			t.Cleanup(srv.Stop)
			admin := httptest.NewServer(g.admin())
			t.Cleanup(admin.Close)

			cfg := Config{ScaleServices: 20, ScaleDests: 3, ScanIPs: 300, ScanRSSBound: 1 << 30, ScaleConcurrency: 8,
				Timeout: 10 * time.Second, Seed: 1, Mix: MixConfig{Namespaces: 4, Response: true, ProtocolConfig: true}}
			res, err := RunScale(context.Background(), ScaleTarget{Conns: dialT(t, lis.Addr().String(), 2), PID: os.Getpid(), Admin: admin.URL},
				cfg, io.Discard, slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			if res.ScanBlocked != tc.wantBlocked || res.AllBlocked != tc.wantAll {
				t.Fatalf("scan blocked %d (all: %v), want %d (%v)", res.ScanBlocked, res.AllBlocked, tc.wantBlocked, tc.wantAll)
			}
			if res.KnownBlocked != 0 || res.Known.OK != 60 {
				t.Fatalf("known destinations: %d of %d blocked", res.KnownBlocked, res.Known.OK)
			}
			if res.Load.OK != 60 || res.ServicesListed != 20 {
				t.Fatalf("loaded %d pairs, %d services listed; want 60, 20", res.Load.OK, res.ServicesListed)
			}
			g.mu.Lock()
			for svc, m := range g.modes {
				if m != "enforce" {
					t.Errorf("service %s left in %q", svc, m)
				}
			}
			if len(g.modes) != 20 {
				t.Errorf("%d services switched, want 20", len(g.modes))
			}
			g.mu.Unlock()
			if res.Start.RSS == 0 || res.Scanned.RSS == 0 || res.HeapStart != 1.2e7 || !res.WithinBound {
				t.Fatalf("memory readings: start %v scanned %v heap %v within %v", res.Start, res.Scanned, res.HeapStart, res.WithinBound)
			}
			md := (&Report{Cfg: cfg, Scale: res}).ScaleMarkdown()
			want := "every scan request blocked"
			if !tc.wantAll {
				want = "NOT every scan request blocked"
			}
			if !strings.Contains(md, want) || !strings.Contains(md, fmt.Sprintf("%d of 300 requests answered with ImmediateResponse 403", tc.wantBlocked)) {
				t.Fatalf("report does not say %q:\n%s", want, md)
			}
		})
	}
}
