package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/meshguard/meshguard/controlplane/admin"
	"github.com/meshguard/meshguard/extproc"
	"github.com/meshguard/meshguard/extproc/envoysim"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// testServer is an in-process meshguard with a client, as Envoy and an operator see it.
type testServer struct {
	*server
	client     extprocv3.ExternalProcessorClient
	adminURL   string
	adminToken string // serve's in <data-dir>/admin-token, once it writes one
}

// startTestServer starts meshguard on loopback port 0 with dataDir and extra serve flags.
func startTestServer(t *testing.T, dataDir string, extra ...string) *testServer {
	t.Helper()
	return startWrappedTestServer(t, dataDir, nil, extra...)
}

// startWrappedTestServer is startTestServer with the model wrapped by wrap (nil: as it is).
func startWrappedTestServer(t *testing.T, dataDir string, wrap wrapDecider, extra ...string) *testServer {
	t.Helper()
	args := append([]string{"--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--xds-listen", "127.0.0.1:0", "--data-dir", dataDir, "--lameduck", "0"}, extra...)
	cfg, err := parseServe(args)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := startServer(context.Background(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), wrap)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.shutdown(context.Background()) })
	conn, err := grpc.NewClient(srv.extprocAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ts := &testServer{server: srv, client: extprocv3.NewExternalProcessorClient(conn), adminURL: "http://" + srv.adminAddr}
	if ts.adminToken, err = (adminAuth{dataDir: dataDir}).token(noEnv); err != nil {
		t.Fatal(err)
	}
	return ts
}

// sidecar describes how an Istio sidecar identifies its workload to meshguard.
type sidecar struct {
	ns, workload, podIP string
	useNodeIDOnly       bool   // only xds.node.id, as when node metadata is not listed
	serviceMetadata     string // x-meshguard-service via initial_metadata
}

func (s sidecar) request(dstIP string, port int, host, method, path, traceparent string) envoysim.Request {
	attrs := map[string]string{
		extproc.AttrNodeID:        fmt.Sprintf("sidecar~%s~%s-7d4b9c8f6d-x2x9z.%s~%s.svc.cluster.local", s.podIP, s.workload, s.ns, s.ns),
		extproc.AttrSourceAddress: s.podIP + ":43210",
	}
	if !s.useNodeIDOnly {
		attrs[extproc.AttrNodeNamespace], attrs[extproc.AttrNodeWorkload] = s.ns, s.workload
	}
	if dstIP != "" {
		attrs[extproc.AttrDestination] = net.JoinHostPort(dstIP, strconv.Itoa(port))
	}
	md := map[string]string{}
	if traceparent != "" {
		md["traceparent"] = traceparent
	}
	if s.serviceMetadata != "" {
		md[extproc.ServiceMetadataKey] = s.serviceMetadata
	}
	headers := []envoysim.Header{{Key: ":method", Value: method}, {Key: ":path", Value: path}}
	if host != "" {
		// No host: no :authority at all, as Envoy sends it; an empty one fails closed.
		headers = append(headers, envoysim.Header{Key: ":authority", Value: host})
	}
	headers = append(headers, envoysim.Header{Key: ":scheme", Value: "https"},
		envoysim.Header{Key: "user-agent", Value: "test"}, envoysim.Header{Key: "x-request-id", Value: "r1"})
	return envoysim.Request{
		Metadata:           md,
		Attributes:         attrs,
		Headers:            headers,
		ResponseHeaders:    []envoysim.Header{{Key: ":status", Value: "200"}},
		ResponseAttributes: map[string]string{extproc.AttrUpstreamAddress: net.JoinHostPort(dstIP, strconv.Itoa(port))},
	}
}

// do plays a request and returns the HTTP status Envoy would give the app (200 when the
// server let it through) and the decoded 403 body.
func (ts *testServer) do(t *testing.T, r envoysim.Request) (int, extproc.BlockBody) {
	t.Helper()
	res, err := envoysim.Do(context.Background(), ts.client, r, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if res.Immediate == nil {
		return 200, extproc.BlockBody{}
	}
	var body extproc.BlockBody
	if err := json.Unmarshal(res.Immediate.GetBody(), &body); err != nil {
		t.Fatalf("403 body %q: %v", res.Immediate.GetBody(), err)
	}
	if v := envoysim.HeaderValue(res.Immediate, extproc.VerdictHeader); v != body.Verdict {
		t.Fatalf("header %s=%q, body verdict %q", extproc.VerdictHeader, v, body.Verdict)
	}
	return int(res.Immediate.GetStatus().GetCode()), body
}

func (ts *testServer) setMode(t *testing.T, service string, req admin.ModeRequest) (int, string) {
	t.Helper()
	b, _ := json.Marshal(req)
	code, body := ts.http(t, http.MethodPut, "/v1/services/"+url.PathEscape(service)+"/mode", b)
	return code, body
}

func (ts *testServer) http(t *testing.T, method, path string, body []byte) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, ts.adminURL+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if ts.adminToken != "" {
		req.Header.Set("Authorization", "Bearer "+ts.adminToken)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(out)
}

func (ts *testServer) mustSetMode(t *testing.T, service, mode string) {
	t.Helper()
	if code, body := ts.setMode(t, service, admin.ModeRequest{Mode: mode}); code != 200 {
		t.Fatalf("set %s %s: %d %s", service, mode, code, body)
	}
}

func contains(s string, subs ...string) error {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return fmt.Errorf("missing %q", sub)
		}
	}
	return nil
}

// waitFor polls cond until it holds, failing the test with what was awaited after timeout.
// Deadlines are generous: the machine may be loaded.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s", timeout, what)
		}
		<-tick.C
	}
}
