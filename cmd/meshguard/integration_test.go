package main

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/meshguard/meshguard/controlplane/admin"
)

var (
	checkout = sidecar{ns: "shop", workload: "checkout", podIP: "10.1.0.11"}
	cart     = sidecar{ns: "shop", workload: "cart", podIP: "10.1.0.12", useNodeIDOnly: true}
	batch    = sidecar{ns: "jobs", workload: "batch-export", podIP: "10.1.0.13", serviceMetadata: "jobs/batch-export"}
)

const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

// learn plays each sidecar's usual calls a few times, in learn mode.
func learn(t *testing.T, ts *testServer) {
	t.Helper()
	for range 3 {
		for _, r := range []struct {
			s    sidecar
			ip   string
			port int
			host string
		}{
			{checkout, "203.0.113.10", 443, "api.stripe.com"},
			{checkout, "2001:db8::10", 443, "api6.stripe.com"},
			{cart, "10.96.0.20", 8080, "inventory.shop.svc.cluster.local"},
			{batch, "192.0.2.80", 443, "s3.amazonaws.com"},
		} {
			if code, _ := ts.do(t, r.s.request(r.ip, r.port, r.host, "GET", "/", tp)); code != 200 {
				t.Fatalf("learning: %s → %s got %d", r.s.workload, r.host, code)
			}
		}
	}
}

func TestSidecarLearnEnforceQuarantine(t *testing.T) {
	ts := startTestServer(t, t.TempDir())
	learn(t, ts)

	// Identity from node metadata, from the Istio node id alone, and from gRPC metadata.
	code, body := ts.http(t, "GET", "/v1/services", nil)
	var list admin.ServiceList
	if err := json.Unmarshal([]byte(body), &list); code != 200 || err != nil {
		t.Fatalf("GET /v1/services: %d %v", code, err)
	}
	var names []string
	for _, s := range list.Services {
		names = append(names, s.Name+"="+s.Mode.String())
	}
	if want := []string{"jobs/batch-export=learn", "shop/cart=learn", "shop/checkout=learn"}; !slices.Equal(names, want) {
		t.Fatalf("services %v, want %v", names, want)
	}

	for _, s := range []string{"shop/checkout", "shop/cart", "jobs/batch-export"} {
		ts.mustSetMode(t, s, "enforce")
	}
	tests := []struct {
		name    string
		s       sidecar
		ip      string
		port    int
		host    string
		code    int
		reasons []string
	}{
		{"learned IP and host", checkout, "203.0.113.10", 443, "api.stripe.com", 200, nil},
		{"learned IPv6", checkout, "2001:db8::10", 443, "api6.stripe.com", 200, nil},
		{"learned IPv4 seen as IPv4-mapped IPv6", checkout, "::ffff:203.0.113.10", 443, "api.stripe.com", 200, nil},
		{"new IP", checkout, "198.51.100.66", 443, "exfil.example.net", 403, []string{"new_destination"}},
		{"learned host sent to a new IP", checkout, "198.51.100.66", 443, "api.stripe.com", 403, []string{"new_destination"}},
		{"learned IP, new port", cart, "10.96.0.20", 22, "inventory.shop.svc.cluster.local", 403, []string{"new_destination"}},
		{"identity from x-meshguard-service", batch, "192.0.2.80", 443, "s3.amazonaws.com", 200, nil},
		{"another service's destination", cart, "203.0.113.10", 443, "api.stripe.com", 403, []string{"new_destination"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := ts.do(t, tt.s.request(tt.ip, tt.port, tt.host, "POST", "/v1/x", tp))
			if code != tt.code {
				t.Fatalf("HTTP %d, want %d", code, tt.code)
			}
			if code == 403 {
				if body.Verdict != "block" || !slices.Equal(body.Reasons, tt.reasons) || body.TraceID != "4bf92f3577b34da6a3ce929d0e0e4736" {
					t.Fatalf("403 body %+v", body)
				}
			}
		})
	}

	// Quarantine: everything of checkout is blocked but its allow list; others go on.
	if code, body := ts.setMode(t, "shop/checkout", admin.ModeRequest{Mode: "quarantine", Allow: []string{"api6.stripe.com:443", "2001:db8::10"}}); code != 200 {
		t.Fatalf("quarantine: %d %s", code, body)
	}
	if code, body := ts.do(t, checkout.request("203.0.113.10", 443, "api.stripe.com", "GET", "/", tp)); code != 403 || !slices.Equal(body.Reasons, []string{"quarantined"}) {
		t.Fatalf("quarantined learned call: %d %+v", code, body)
	}
	if code, _ := ts.do(t, checkout.request("2001:db8::10", 443, "api6.stripe.com", "GET", "/", tp)); code != 200 {
		t.Fatalf("quarantine allow list: %d", code)
	}
	if code, _ := ts.do(t, cart.request("10.96.0.20", 8080, "inventory.shop.svc.cluster.local", "GET", "/", tp)); code != 200 {
		t.Fatalf("other service during quarantine: %d", code)
	}
}

func TestAdminAPI(t *testing.T) {
	ts := startTestServer(t, t.TempDir())
	learn(t, ts)
	ts.mustSetMode(t, "shop/checkout", "enforce")
	ts.do(t, checkout.request("198.51.100.66", 443, "exfil.example.net", "POST", "/", tp))

	for _, tc := range []struct {
		method, path, body string
		code               int
		want               []string
	}{
		{"GET", "/healthz", "", 200, []string{"ok"}},
		{"GET", "/readyz", "", 200, []string{"ok"}},
		{"GET", "/v1/services/shop%2Fcheckout", "", 200, []string{`"name": "shop/checkout"`, `"mode": "enforce"`, `"destination": "203.0.113.10:443"`, `"blocked": 1`}},
		{"GET", "/v1/services/nobody%2Fhere", "", 404, []string{"unknown service"}},
		{"PUT", "/v1/services/shop%2Fcart/mode", `{"mode":"lockdown"}`, 400, []string{"learn, monitor, enforce, quarantine"}},
		{"PUT", "/v1/services/shop%2Fcart/mode", `{"mode":`, 400, []string{"bad JSON"}},
		{"PUT", "/v1/services/shop%2Fcart/mode", `{"mode":"monitor","allow":["x:1"]}`, 400, []string{"only valid with mode quarantine"}},
		{"PUT", "/v1/services/shop%2Fcart/mode", `{"mode":"monitor"}`, 200, []string{`"mode": "monitor"`, `"mode_set_by": "admin-token`}},
		{"GET", "/metrics", "", 200, []string{
			`meshguard_decisions_total{verdict="block"} 1`,
			`meshguard_decision_reasons_total{reason="new_destination",verdict="block"} 1`,
			`meshguard_services{mode="enforce"} 1`, `meshguard_services{mode="monitor"} 1`,
			"meshguard_decision_duration_seconds_bucket",
		}},
	} {
		code, body := ts.http(t, tc.method, tc.path, []byte(tc.body))
		if code != tc.code {
			t.Errorf("%s %s: %d, want %d: %s", tc.method, tc.path, code, tc.code, body)
			continue
		}
		if err := contains(body, tc.want...); err != nil {
			t.Errorf("%s %s: %v in:\n%s", tc.method, tc.path, err, firstLines(body, 40))
		}
	}
}

func firstLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[:n]
	}
	return strings.Join(lines, "\n")
}

func TestRestartKeepsBaselines(t *testing.T) {
	dir := t.TempDir()
	ts := startTestServer(t, dir)
	learn(t, ts)
	ts.mustSetMode(t, "shop/checkout", "enforce")
	want := map[string]int{}
	probe := func(ts *testServer) map[string]int {
		got := map[string]int{}
		for _, ip := range []string{"203.0.113.10", "2001:db8::10", "198.51.100.66"} {
			code, _ := ts.do(t, checkout.request(ip, 443, "", "GET", "/", ""))
			got[ip] = code
		}
		return got
	}
	want = probe(ts)
	if want["203.0.113.10"] != 200 || want["198.51.100.66"] != 403 {
		t.Fatalf("before restart: %v", want)
	}
	if err := ts.shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}

	ts2 := startTestServer(t, dir)
	if got := probe(ts2); !mapsEqual(got, want) {
		t.Fatalf("after restart %v, before %v", got, want)
	}
	if m, ok := ts2.model.Mode("shop/cart"); !ok || m.String() != "learn" {
		t.Fatalf("shop/cart after restart: %v %v", m, ok)
	}
}

func mapsEqual(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestParseServeReportsEveryProblem(t *testing.T) {
	_, err := parseServe([]string{
		"--admin-listen", "0.0.0.0:9002", "--listen", "nonsense", "--default-mode", "strict",
		"--after-learning", "learn", "--on-missing", "maybe", "--identity-order", "node,dns", "--log-format", "xml",
	})
	if err == nil {
		t.Fatal("want errors")
	}
	if err := contains(err.Error(),
		"--admin-listen 0.0.0.0:9002 is not a loopback address", "--listen \"nonsense\"", "--default-mode",
		"after-learning mode must be", "on-missing \"maybe\"", "unknown identity source \"dns\"", "--log-format"); err != nil {
		t.Fatalf("%v in:\n%s", err, err)
	}
	// Beyond loopback without TLS: --admin-allow-remote waives client certificates, and
	// --insecure-listen plaintext; both are needed.
	if _, err := parseServe([]string{"--admin-listen", "0.0.0.0:9002", "--admin-allow-remote", "--insecure-listen"}); err != nil {
		t.Fatalf("with --admin-allow-remote --insecure-listen: %v", err)
	}
	if _, err := parseServe([]string{"--admin-listen", "0.0.0.0:9002", "--admin-allow-remote"}); err == nil || !strings.Contains(err.Error(), "--insecure-listen") {
		t.Fatalf("--admin-allow-remote alone: %v, want plaintext refused naming --insecure-listen", err)
	}
	if _, err := parseServe([]string{"--listen", "unix:///tmp/mg.sock", "--admin-listen", "unix:///tmp/mg-admin.sock"}); err != nil {
		t.Fatalf("unix sockets: %v", err)
	}
}

func TestUnixSocket(t *testing.T) {
	dir := t.TempDir()
	sock := "unix://" + dir + "/extproc.sock"
	ts := startTestServer(t, dir, "--listen", sock)
	if ts.extprocAddr != sock {
		t.Fatalf("listening on %s, want %s", ts.extprocAddr, sock)
	}
	if code, _ := ts.do(t, checkout.request("203.0.113.10", 443, "api.stripe.com", "GET", "/", "")); code != 200 {
		t.Fatalf("over a unix socket: %d", code)
	}
}
