package main

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshguard/meshguard/controlplane/admin"
	"github.com/meshguard/meshguard/controlplane/policy"
	"github.com/meshguard/meshguard/flowmodel"
	"github.com/meshguard/meshguard/flowmodel/store"
	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/yaml"
)

var policyT0 = time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)

func policyRecords() []flowmodel.ServiceRecord {
	d := func(dest string, n int64, h int, src string) flowmodel.DestinationRecord {
		return flowmodel.DestinationRecord{Destination: dest, Count: n, FirstSeen: policyT0.Add(time.Duration(h) * time.Hour),
			LastSeen: policyT0.Add(time.Duration(h+1) * time.Hour), Source: src}
	}
	return []flowmodel.ServiceRecord{
		{
			Name: "shop/checkout", Mode: flowmodel.ModeEnforce, Requests: 300, FirstSeen: policyT0, LastSeen: policyT0.Add(48 * time.Hour),
			Destinations: []flowmodel.DestinationRecord{
				d("api.example.com:443", 200, 0, "ext_proc"),
				d("hooks.example.com:80", 50, 1, "ext_proc"),
				d("payments.shop.svc.cluster.local:8080", 40, 2, "ext_proc"),
				d("203.0.113.7:5432", 10, 3, "accesslog"),
				d("[2001:db8::7]:443", 1, 4, "pcap"),
			},
			Shapes: []flowmodel.ShapeRecord{{
				Destination: "hooks.example.com:80", Shape: "GET /v1/items/{id} q:[] h:[] ct:- b:0", Method: "GET", Path: "/v1/items/{id}",
				Count: 50, FirstSeen: policyT0.Add(time.Hour), LastSeen: policyT0.Add(2 * time.Hour), Source: "ext_proc",
			}},
		},
		{
			Name: "shop/cart", Mode: flowmodel.ModeMonitor, Requests: 10,
			Destinations: []flowmodel.DestinationRecord{d("api.example.com:443", 10, 5, "ext_proc")},
		},
		{
			Name: "shop/newcomer", Mode: flowmodel.ModeLearn, Requests: 2,
			Destinations: []flowmodel.DestinationRecord{d("new.example.com:443", 2, 6, "ext_proc")},
		},
	}
}

// writeStore writes records to a new store in a temporary directory.
func writeStore(t *testing.T, records []flowmodel.ServiceRecord) string {
	t.Helper()
	dir := t.TempDir()
	st, err := store.Open(dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Save(records); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	return dir
}

func runCmd(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	var stdout, stderr strings.Builder
	err := run(context.Background(), args, strings.NewReader(""), &stdout, &stderr)
	return stdout.String(), stderr.String(), err
}

// exportOf is what the policy package writes for records.
func exportOf(t *testing.T, records []flowmodel.ServiceRecord, opts policy.Options) string {
	t.Helper()
	var b bytes.Buffer
	if err := policy.Export(&b, records, opts); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// networkPolicies decodes a NetworkPolicy export strictly.
func networkPolicies(t *testing.T, out string) map[string]*networkingv1.NetworkPolicy {
	t.Helper()
	nps := map[string]*networkingv1.NetworkPolicy{}
	for _, doc := range strings.Split(out, "\n---\n")[1:] {
		var np networkingv1.NetworkPolicy
		if err := yaml.UnmarshalStrict([]byte(doc), &np); err != nil {
			t.Fatalf("%v\n%s", err, doc)
		}
		nps[np.Namespace+"/"+np.Name] = &np
	}
	return nps
}

func TestPolicyExportFromStore(t *testing.T) {
	records := policyRecords()
	dir := writeStore(t, records)
	for _, f := range policy.Formats {
		t.Run(string(f), func(t *testing.T) {
			stdout, stderr, err := runCmd(t, "policy", "export", "--format", string(f), "--data-dir", dir)
			if err != nil {
				t.Fatalf("%v\n%s", err, stderr)
			}
			if want := exportOf(t, records, policy.Options{Format: f}); stdout != want {
				t.Errorf("output differs from policy.Export of the stored records:\n%s\nwant:\n%s", stdout, want)
			}
			if !strings.Contains(stderr, "from 3 service(s) in "+dir) {
				t.Errorf("stderr %q", stderr)
			}
		})
	}

	stdout, _, err := runCmd(t, "policy", "export", "--format", "networkpolicy", "--data-dir", dir, "--service", "shop/checkout",
		"--workload-label", "app.kubernetes.io/name", "--mesh-peer", "none", "--direct-egress")
	if err != nil {
		t.Fatal(err)
	}
	nps := networkPolicies(t, stdout)
	np := nps["shop/meshguard-egress-checkout"]
	if len(nps) != 1 || np == nil {
		t.Fatalf("policies %v", nps)
	}
	if np.Spec.PodSelector.MatchLabels["app.kubernetes.io/name"] != "checkout" {
		t.Errorf("podSelector %v", np.Spec.PodSelector)
	}
	var cidrs []string
	for _, r := range np.Spec.Egress {
		for _, to := range r.To {
			if to.IPBlock != nil {
				cidrs = append(cidrs, to.IPBlock.CIDR)
			}
		}
	}
	if strings.Join(cidrs, " ") != "203.0.113.7/32 2001:db8::7/128" {
		t.Errorf("ipBlocks %q", cidrs)
	}
	if strings.Contains(stdout, "istiod") || !strings.Contains(stdout, "# - api.example.com:443: 200 request(s)") {
		t.Errorf("flags not applied:\n%s", stdout)
	}
}

// TestPolicyExportWhileServing: a running serve holds the store's lock, so --data-dir
// fails with a hint, and --admin reads the same baselines from the server.
func TestPolicyExportWhileServing(t *testing.T) {
	dir := t.TempDir()
	ts := startTestServer(t, dir)
	app := sidecar{ns: "shop", workload: "checkout", podIP: "10.1.0.5"}
	if code, _ := ts.do(t, app.request("203.0.113.9", 443, "api.example.com", "GET", "/v1/items/1", "")); code != 200 {
		t.Fatalf("learning request: %d", code)
	}

	_, _, err := runCmd(t, "policy", "export", "--format", "istio", "--data-dir", dir, "--lock-timeout", "100ms")
	if err == nil || !strings.Contains(err.Error(), "locked by another process") || !strings.Contains(err.Error(), "--admin http://127.0.0.1:9002") {
		t.Fatalf("got %v, want the lock error with the --admin hint", err)
	}

	stdout, stderr, err := runCmd(t, "policy", "export", "--format", "networkpolicy", "--admin", ts.adminURL, "--admin-token-file", filepath.Join(dir, "admin-token"), "--service", "shop/checkout")
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	if networkPolicies(t, stdout)["shop/meshguard-egress-checkout"] == nil {
		t.Fatalf("no policy for shop/checkout:\n%s", stdout)
	}
	if !strings.Contains(stdout, "INCOMPLETE") || !strings.Contains(stdout, "# api.example.com:443: 1 request(s)") {
		t.Errorf("learning service or its destination missing:\n%s", stdout)
	}
}

func TestPolicyExportFromAdmin(t *testing.T) {
	model, err := flowmodel.New(flowmodel.Config{})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range policyRecords() {
		if err := model.Restore(r); err != nil {
			t.Fatal(err)
		}
	}
	const token = "policy-export-test-token-0123456789abcdef"
	t.Setenv("MESHGUARD_ADMIN_TOKEN", token)
	h, err := admin.New(model, admin.Options{Token: token})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()

	sock := filepath.Join(t.TempDir(), "admin.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	unixSrv := &http.Server{Handler: h}
	go unixSrv.Serve(ln)
	defer unixSrv.Close()

	for _, base := range []string{srv.URL, srv.URL + "/", "unix://" + sock} {
		for _, f := range policy.Formats {
			t.Run(base+" "+string(f), func(t *testing.T) {
				stdout, stderr, err := runCmd(t, "policy", "export", "--format", string(f), "--admin", base, "--include-learning")
				if err != nil {
					t.Fatalf("%v\n%s", err, stderr)
				}
				if want := exportOf(t, model.Services(), policy.Options{Format: f, IncludeLearning: true}); stdout != want {
					t.Errorf("output differs from policy.Export of the model's services:\n%s\nwant:\n%s", stdout, want)
				}
			})
		}
	}
}

func TestPolicyErrors(t *testing.T) {
	dir := writeStore(t, policyRecords())
	failing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, `{"error":"store on fire"}`, http.StatusInternalServerError)
	}))
	defer failing.Close()
	gone := httptest.NewServer(http.NotFoundHandler())
	gone.Close()

	tests := []struct {
		name string
		args []string
		want []string
		is   error
	}{
		{"no subcommand", []string{"policy"}, nil, errUsage},
		{"unknown subcommand", []string{"policy", "import"}, nil, errUsage},
		{"no format", []string{"policy", "export", "--data-dir", dir}, []string{"--format is required"}, nil},
		{"every flag wrong", []string{"policy", "export", "--format", "yaml", "--admin", "ftp://x", "--data-dir", dir,
			"--dns", "kube-system", "--egress-gateway", "istio-system/", "--mesh-peer", "none", "--mesh-peer", "ns/a=b:99999", "extra"},
			[]string{`unknown format "yaml"`, "--admin and --data-dir are exclusive", `--admin "ftp://x"`, "--dns: selector",
				"--egress-gateway: selector", "--mesh-peer: peer", "takes no arguments"}, nil},
		{"none with peers", []string{"policy", "export", "--format", "istio", "--data-dir", dir, "--mesh-peer", "none", "--mesh-peer", "ns/a=b:1"},
			[]string{"--mesh-peer none cannot be combined"}, nil},
		{"bad options", []string{"policy", "export", "--format", "istio", "--data-dir", dir, "--workload-label", "no good"},
			[]string{`workload label "no good"`}, nil},
		{"no store", []string{"policy", "export", "--format", "istio", "--data-dir", t.TempDir()}, []string{"no baseline store at"}, nil},
		{"unknown service", []string{"policy", "export", "--format", "istio", "--data-dir", dir, "--service", "shop/nobody"},
			[]string{`unknown service "shop/nobody"`}, policy.ErrUnknownService},
		{"admin error", []string{"policy", "export", "--format", "istio", "--admin", failing.URL},
			[]string{"500 Internal Server Error: store on fire"}, nil},
		{"admin gone", []string{"policy", "export", "--format", "istio", "--admin", gone.URL}, []string{"read services from " + gone.URL}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stdout, _, err := runCmd(t, tt.args...)
			if err == nil {
				t.Fatalf("no error; stdout:\n%s", stdout)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error %v is not %v", err, tt.is)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if stdout != "" {
				t.Errorf("stdout on error:\n%s", stdout)
			}
		})
	}
}

func TestPolicyHelp(t *testing.T) {
	for _, args := range [][]string{{"policy", "export", "-h"}, {"help", "policy", "export"}, {"policy", "export", "--help"}} {
		stdout, _, err := runCmd(t, args...)
		if err != nil || !strings.Contains(stdout, "meshguard policy export --format istio|cilium|networkpolicy") || !strings.Contains(stdout, "--mesh-peer") {
			t.Errorf("%q: %v\n%s", args, err, stdout)
		}
	}
	stdout, _, err := runCmd(t, "policy", "-h")
	if err != nil || !strings.Contains(stdout, "export") {
		t.Errorf("policy -h: %v\n%s", err, stdout)
	}
	stdout, _, _ = runCmd(t, "help")
	if !strings.Contains(stdout, "\n  policy ") {
		t.Errorf("usage lacks policy:\n%s", stdout)
	}
}
