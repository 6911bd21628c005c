package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// TestFirstFailureStopsAll: when one server fails (here the xDS listener is closed under
// it), wait shuts every part down, in order, and reports that failure.
func TestFirstFailureStopsAll(t *testing.T) {
	ts := startTestServer(t, t.TempDir())
	learn(t, ts)
	done := make(chan error, 1)
	go func() { done <- ts.wait(context.Background()) }()
	ts.control.lis.Close()
	var err error
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("a failed xDS server did not stop meshguard within 30s")
	}
	if err == nil || !strings.Contains(err.Error(), "xds server:") {
		t.Fatalf("wait returned %v, want the xDS server's failure", err)
	}
	// Everything else stopped, after the last save.
	if _, err := http.Get(ts.adminURL + "/healthz"); err == nil {
		t.Error("the admin API still answers")
	}
	conn, cerr := grpc.NewClient(ts.extprocAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if cerr != nil {
		t.Fatal(cerr)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err == nil {
		t.Error("ext_proc still answers")
	}
	if again := ts.shutdown(context.Background()); again == nil || again.Error() != err.Error() {
		t.Errorf("shutdown after wait: %v, want wait's %v", again, err)
	}
}

// TestHealthListenServesOnlyProbes: --health-listen answers /healthz and /readyz, and
// nothing of the admin API; not /metrics either, whose decision counts would tell the
// workload (which may reach this listener) which of its requests alerted.
func TestHealthListenServesOnlyProbes(t *testing.T) {
	ts := startTestServer(t, t.TempDir(), "--health-listen", "127.0.0.1:0")
	if ts.healthAddr == "" || ts.healthAddr == ts.adminAddr {
		t.Fatalf("health listener %q", ts.healthAddr)
	}
	base := "http://" + ts.healthAddr
	for _, tc := range []struct {
		method, path string
		want         int
		body         string
	}{
		{"GET", "/healthz", 200, "ok"},
		{"GET", "/readyz", 200, "ok"},
		{"HEAD", "/readyz", 200, ""},
		{"GET", "/metrics", 404, ""},
		{"GET", "/v1/services", 404, ""},
		{"PUT", "/v1/services/shop%2Fcheckout/mode", 404, ""},
		{"POST", "/healthz", 405, ""},
		{"GET", "/debug/pprof/", 404, ""},
	} {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, base+tc.path, strings.NewReader(`{"mode":"learn"}`))
			if err != nil {
				t.Fatal(err)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.want || !strings.Contains(string(b), tc.body) {
				t.Fatalf("%d %q, want %d with %q", resp.StatusCode, firstLines(string(b), 3), tc.want, tc.body)
			}
		})
	}
	// The probe listener follows readiness down at shutdown, and closes.
	if err := ts.shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if c, err := net.DialTimeout("tcp", ts.healthAddr, time.Second); err == nil {
		c.Close()
		t.Error("the probe listener is still open after shutdown")
	}
}

// TestHealthMetrics: with --health-metrics the probe listener serves /metrics too (for
// Prometheus in central layouts), and still nothing of the admin API.
func TestHealthMetrics(t *testing.T) {
	ts := startTestServer(t, t.TempDir(), "--health-listen", "127.0.0.1:0", "--health-metrics")
	for path, want := range map[string]int{"/metrics": 200, "/readyz": 200, "/v1/services": 404} {
		resp, err := http.Get("http://" + ts.healthAddr + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want || (path == "/metrics" && !strings.Contains(string(b), `meshguard_spans_dropped_total{reason="queue_full"} 0`)) {
			t.Errorf("GET %s: %d, want %d", path, resp.StatusCode, want)
		}
	}
}
