package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/meshguard/meshguard/extproc/envoysim"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// binary builds meshguard once per test run, as a user would with go build.
func binary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "meshguard-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "meshguard")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

// proc is the meshguard binary running "serve".
type proc struct {
	cmd      *exec.Cmd
	ts       *testServer // client side only
	stderr   *strings.Builder
	stderrMu *sync.Mutex
	exited   chan struct{} // closed when the process has exited
	exitErr  error
}

var servingLine = regexp.MustCompile(`serving ext_proc on (\S+), admin on (\S+), xds on (\S+),`)

func startBinary(t *testing.T, dataDir string, extra ...string) *proc {
	t.Helper()
	args := append([]string{"serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--xds-listen", "127.0.0.1:0", "--data-dir", dataDir}, extra...)
	cmd := exec.Command(binary(t), args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, stderr: &strings.Builder{}, exited: make(chan struct{}), stderrMu: &sync.Mutex{}}
	cmd.Stderr = lockedWriter{p.stderrMu, p.stderr}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.exited
	})
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default:
			}
		}
		p.exitErr = cmd.Wait()
		close(p.exited)
	}()
	select {
	case line := <-lines:
		m := servingLine.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("unexpected first line %q", line)
		}
		conn, err := grpc.NewClient(m[1], grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		p.ts = &testServer{client: extprocv3.NewExternalProcessorClient(conn), adminURL: "http://" + m[2]}
		if p.ts.adminToken, err = (adminAuth{dataDir: dataDir}).token(noEnv); err != nil {
			t.Fatal(err)
		}
		p.ts.server = &server{extprocAddr: m[1]}
	case <-p.exited:
		t.Fatalf("meshguard exited at start: %v\n%s", p.exitErr, p.logs())
	case <-time.After(30 * time.Second):
		t.Fatalf("meshguard did not start within 30s\n%s", p.logs())
	}
	return p
}

func (p *proc) logs() string {
	p.stderrMu.Lock()
	defer p.stderrMu.Unlock()
	return p.stderr.String()
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// TestSIGKILLLosesAtMostTheLastSecond kills the real binary during heavy learning and checks
// that what was learned more than the flush interval (plus scheduling slack) before the kill
// survives, that the store opens again, and that verdicts for learned flows are unchanged.
func TestSIGKILLLosesAtMostTheLastSecond(t *testing.T) {
	dir := t.TempDir()
	p := startBinary(t, dir, "--max-destinations", "1000000", "--flush-interval", "1s")
	learn(t, p.ts)
	p.ts.mustSetMode(t, "shop/checkout", "enforce")

	// A scanner learns a new destination per request, as fast as it can, until the kill.
	scanner := sidecar{ns: "lab", workload: "scanner", podIP: "10.1.0.99"}
	type done struct {
		ip string
		at time.Time
	}
	var (
		mu      sync.Mutex
		learned []done
	)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				ip := fmt.Sprintf("10.%d.%d.%d", 100+w, (i>>8)&255, i&255)
				_, err := envoysim.Do(ctx, p.ts.client, scanner.request(ip, 443, "", "GET", "/", ""), 2*time.Second)
				if err != nil {
					return
				}
				mu.Lock()
				learned = append(learned, done{ip, time.Now()})
				mu.Unlock()
			}
		}()
	}
	// The store may lag one flush interval; allow one more for the flush itself on a busy CI.
	const window = 2 * time.Second
	// Kill once destinations older than the window exist (so the test checks something) and
	// the binary has saved since.
	var savedAt float64
	waitFor(t, 30*time.Second, "destinations learned more than the window ago", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(learned) > 0 && time.Since(learned[0].at) > window+time.Second
	})
	_, m := p.ts.http(t, "GET", "/metrics", nil)
	savedAt = metricValue(m, "meshguard_store_services_saved_total")
	waitFor(t, 30*time.Second, "a save of the baselines", func() bool {
		_, m := p.ts.http(t, "GET", "/metrics", nil)
		return metricValue(m, "meshguard_store_services_saved_total") > savedAt
	})
	killedAt := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p.exited
	cancel()
	wg.Wait()

	q := startBinary(t, dir, "--max-destinations", "1000000")
	code, body := q.ts.http(t, "GET", "/v1/services/lab%2Fscanner", nil)
	if code != 200 {
		t.Fatalf("scanner after restart: %d %s\n%s", code, body, q.logs())
	}
	var rec struct {
		Destinations []struct{ Destination string } `json:"destinations"`
	}
	if err := json.Unmarshal([]byte(body), &rec); err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, d := range rec.Destinations {
		have[strings.TrimSuffix(d.Destination, ":443")] = true
	}
	missing, old := 0, 0
	for _, l := range learned {
		if l.at.Before(killedAt.Add(-window)) {
			old++
			if !have[l.ip] {
				missing++
			}
		}
	}
	t.Logf("learned %d destinations, %d of them more than %s before SIGKILL; %d survived in all", len(learned), old, window, len(have))
	if old == 0 {
		t.Fatal("nothing was learned early enough to check")
	}
	if missing > 0 {
		t.Fatalf("%d of %d destinations learned more than %s before SIGKILL were lost", missing, old, window)
	}
	// Verdicts for the learned flows are unchanged; the mode survived.
	for ip, want := range map[string]int{"203.0.113.10": 200, "2001:db8::10": 200, "198.51.100.66": 403} {
		if code, _ := q.ts.do(t, checkout.request(ip, 443, "", "GET", "/", "")); code != want {
			t.Errorf("after restart %s → %d, want %d", ip, code, want)
		}
	}
}

// TestSIGTERMDrains sends SIGTERM while a stream is in flight: health turns NOT_SERVING and
// readiness fails during the lameduck, the in-flight stream completes, and the process exits
// cleanly after saving.
func TestSIGTERMDrains(t *testing.T) {
	dir := t.TempDir()
	const lameduck = 2 * time.Second
	p := startBinary(t, dir, "--lameduck", lameduck.String())
	conn, err := grpc.NewClient(p.ts.extprocAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	if r, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{Service: "envoy.service.ext_proc.v3.ExternalProcessor"}); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health before: %v %v", r, err)
	}

	// An in-flight request: headers answered, response headers still to come.
	stream, err := p.ts.client.Process(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	req := checkout.request("203.0.113.10", 443, "api.stripe.com", "GET", "/", "")
	first := &extprocv3.ProcessingRequest{
		Request:    &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{Headers: envoysim.HeaderMap(req.Headers), EndOfStream: true}},
		Attributes: envoysim.Attributes(req.Attributes),
	}
	if err := stream.Send(first); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}

	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(lameduck - 200*time.Millisecond)
	for {
		r, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{Service: "envoy.service.ext_proc.v3.ExternalProcessor"})
		if err == nil && r.GetStatus() == healthpb.HealthCheckResponse_NOT_SERVING {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("health did not turn NOT_SERVING during the lameduck: %v %v", r, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if resp, err := http.Get(p.ts.adminURL + "/readyz"); err != nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("readyz during lameduck: %v %v", resp, err)
	}
	// The in-flight stream finishes after the lameduck, during GracefulStop: once the server
	// refuses new RPCs.
	waitFor(t, 10*time.Second, "the end of the lameduck (new RPCs refused)", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "envoy.service.ext_proc.v3.ExternalProcessor"})
		return err != nil
	})
	if err := stream.Send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{
		ResponseHeaders: &extprocv3.HttpHeaders{Headers: envoysim.HeaderMap(req.ResponseHeaders), EndOfStream: true}}}); err != nil {
		t.Fatalf("in-flight stream cut: %v", err)
	}
	if r, err := stream.Recv(); err != nil || r.GetResponseHeaders() == nil {
		t.Fatalf("in-flight stream: %v %v", r, err)
	}
	stream.CloseSend()
	if _, err := stream.Recv(); err != io.EOF {
		t.Fatalf("in-flight stream ended with %v, want a clean end", err)
	}
	select {
	case <-p.exited:
		if p.exitErr != nil {
			t.Fatalf("exit: %v\n%s", p.exitErr, p.logs())
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("did not exit after SIGTERM\n%s", p.logs())
	}
	if !strings.Contains(p.logs(), "msg=stopped") {
		t.Errorf("no clean stop logged:\n%s", p.logs())
	}
}
