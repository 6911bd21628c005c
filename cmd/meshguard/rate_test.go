package main

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/meshguard/meshguard/controlplane/admin"
)

// TestRateCommandsSendTokenAndJSON: approve --rate and reject --rate post to the service's
// rate endpoint, with the bearer token, JSON, who decides and why.
func TestRateCommandsSendTokenAndJSON(t *testing.T) {
	var rec adminRecorder
	url := rec.start(t)
	for _, tc := range []struct{ action, path, printed string }{
		{"approve", "/v1/services/shop%2Fcheckout/rate/accept", "approved for shop/checkout: the rate shift (by alice)\n"},
		{"reject", "/v1/services/shop%2Fcheckout/rate/reject", "rejected for shop/checkout: the rate shift (by alice)\n"},
	} {
		t.Run(tc.action, func(t *testing.T) {
			stdout, _, err := runEnv(t, map[string]string{adminTokenEnv: "from-env"},
				tc.action, "--rate", "--admin", url, "--by", "alice", "--reason", "INC-7", "shop/checkout")
			if err != nil {
				t.Fatal(err)
			}
			r := rec.last(t)
			if r.method != http.MethodPost || r.path != tc.path || r.auth != "Bearer from-env" || r.contentType != "application/json" ||
				r.body.By != "alice" || r.body.Reason != "INC-7" || r.body.Destination != "" {
				t.Errorf("sent %+v", r)
			}
			if stdout != tc.printed {
				t.Errorf("printed %q, want %q", stdout, tc.printed)
			}
		})
	}
}

// TestRateCommandsUsage: --rate takes the service alone.
func TestRateCommandsUsage(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no service", []string{"approve", "--rate"}, "want SERVICE with --rate, got 0 arguments"},
		{"a destination too", []string{"reject", "--rate", "shop/checkout", "api.example.com:443"}, "want SERVICE with --rate, got 2 arguments"},
		{"without --rate, a destination is needed", []string{"reject", "shop/checkout"}, "want SERVICE DESTINATION [SHAPE], got 1 arguments"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := runEnv(t, nil, tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("%v, want %q", err, tc.want)
			}
		})
	}
}

// TestApproveAndRejectRateCommands runs reject --rate and approve --rate against a real
// serve, over TCP with the token from the data directory and over a unix socket: each
// answers what it did and is in the audit log with who and why; an unknown service is 404.
func TestApproveAndRejectRateCommands(t *testing.T) {
	dir := t.TempDir()
	ts := startTestServer(t, dir)
	learn(t, ts)
	cli := func(args ...string) (string, error) {
		t.Helper()
		var out, errOut strings.Builder
		err := run(context.Background(), args, nil, &out, &errOut)
		return out.String(), err
	}
	out, err := cli("reject", "--rate", "--admin", ts.adminURL, "--data-dir", dir, "--by", "bob", "--reason", "INC-7: exfiltration", "shop/checkout")
	if err != nil {
		t.Fatal(err)
	}
	if err := contains(out, "rejected for shop/checkout: the rate shift (by bob)", "note: no rate alarm is open"); err != nil {
		t.Errorf("%v in:\n%s", err, out)
	}
	if out, err = cli("approve", "--rate", "--admin", ts.adminURL, "--data-dir", dir, "--by", "alice", "shop/checkout"); err != nil {
		t.Fatal(err)
	}
	if err := contains(out, "approved for shop/checkout: the rate shift (by alice)"); err != nil {
		t.Errorf("%v in:\n%s", err, out)
	}
	code, body := ts.http(t, "GET", "/v1/audit", nil)
	var list admin.AuditList
	if err := json.Unmarshal([]byte(body), &list); code != 200 || err != nil {
		t.Fatalf("GET /v1/audit: %d %v", code, err)
	}
	var got []string
	for _, a := range list.Records {
		if strings.HasSuffix(a.Action, "_rate") {
			var after struct{ Decision, By string }
			_ = json.Unmarshal(a.After, &after)
			got = append(got, a.Action+" "+a.Service+" by "+after.By+" ("+a.Reason+")")
		}
	}
	want := []string{ // newest first
		"accept_rate shop/checkout by alice (admin-token) ()",
		"reject_rate shop/checkout by bob (admin-token) (INC-7: exfiltration)",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("audit log:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	_, err = cli("reject", "--rate", "--admin", ts.adminURL, "--data-dir", dir, "--by", "bob", "nobody/here")
	if err == nil || !strings.Contains(err.Error(), "404") || !strings.Contains(err.Error(), "unknown service") {
		t.Fatalf("unknown service: %v", err)
	}

	// Over a unix socket, the admin listener of another serve.
	dir2 := t.TempDir()
	sock := "unix://" + dir2 + "/admin.sock"
	ts2 := startTestServer(t, dir2, "--admin-listen", sock)
	learn(t, ts2)
	if out, err = cli("approve", "--rate", "--admin", sock, "--data-dir", dir2, "--by", "carol", "shop/checkout"); err != nil {
		t.Fatal(err)
	}
	if err := contains(out, "approved for shop/checkout: the rate shift (by carol)"); err != nil {
		t.Errorf("%v in:\n%s", err, out)
	}
}
