package main

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/meshguard/meshguard/controlplane/admin"
	"github.com/meshguard/meshguard/flowmodel"
	"github.com/meshguard/meshguard/flowmodel/rate"
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

// TestRateOptions: the rate detectors' options reach the model's configuration from the
// defaults, a file, the environment and the flags, and the model serve runs uses them.
func TestRateOptions(t *testing.T) {
	cfg, err := parseServe(nil)
	if err != nil {
		t.Fatal(err)
	}
	want := flowmodel.Config{
		Rate: rate.Config{Interval: flowmodel.DefaultRateInterval, Probation: 24 * time.Hour},
		Seasonal: rate.SeasonalConfig{WarmupDays: rate.DefaultWarmupDays, Threshold: rate.DefaultSeasonThreshold,
			MinRate: rate.DefaultMinRate, Probation: 24 * time.Hour},
	}
	check := func(name string, got flowmodel.Config) {
		t.Helper()
		r, s := got.Rate, got.Seasonal
		wr, ws := want.Rate, want.Seasonal
		if r.Interval != wr.Interval || r.Probation != wr.Probation || r.RequireApproval != wr.RequireApproval ||
			s.WarmupDays != ws.WarmupDays || s.Threshold != ws.Threshold || s.MinRate != ws.MinRate || s.Offset != ws.Offset ||
			s.SameWeekends != ws.SameWeekends || s.Probation != ws.Probation || s.RequireApproval != ws.RequireApproval {
			t.Errorf("%s: rate %+v\nseasonal %+v\nwant rate %+v\nseasonal %+v", name, r, s, wr, ws)
		}
	}
	check("defaults", cfg.model)

	file := writeFile(t, "rate.yaml", "rate-interval: 1m\nseasonal-threshold: 8.5\nseasonal-utc-offset: -5h\nseasonal-same-weekends: true\n")
	vars := map[string]string{"MESHGUARD_RATE_PROBATION": "72h", "MESHGUARD_SEASONAL_MIN_RATE": "5"}
	var f serveFlags
	fs := newServeFlagSet(&f)
	if err := fs.Parse([]string{"--seasonal-warmup-days", "7"}); err != nil {
		t.Fatal(err)
	}
	cfg, _, err = resolveServe(fs, &f, file, func(k string) (string, bool) { v, ok := vars[k]; return v, ok })
	if err != nil {
		t.Fatal(err)
	}
	want.Rate = rate.Config{Interval: time.Minute, Probation: 72 * time.Hour}
	want.Seasonal = rate.SeasonalConfig{WarmupDays: 7, Threshold: 8.5, MinRate: 5, Offset: -5 * time.Hour, SameWeekends: true,
		Probation: 72 * time.Hour}
	check("file, environment and flags", cfg.model)

	ts := startTestServer(t, t.TempDir(), "--rate-interval", "1m", "--seasonal-threshold", "8.5", "--seasonal-utc-offset", "-5h",
		"--seasonal-same-weekends", "--rate-probation", "72h", "--seasonal-min-rate", "5", "--seasonal-warmup-days", "7")
	check("the model serve runs", ts.model.Config())
}

// TestRateOptionErrors: a bad value of a rate option is one error naming the option and
// where its value came from, with every other problem in the same report, and never a
// second, vaguer one from the model's own check or from the value pflag left behind.
func TestRateOptionErrors(t *testing.T) {
	file := writeFile(t, "bad.yaml", "rate-interval: 0s\nseasonal-threshold: -1\nseasonal-min-rate: .nan\nseasonal-utc-offset: 15h\n")
	vars := map[string]string{"MESHGUARD_RATE_PROBATION": "30m", "MESHGUARD_SEASONAL_WARMUP_DAYS": "0", "MESHGUARD_SEASONAL_SAME_WEEKENDS": "maybe"}
	_, _, err := runEnv(t, vars, "serve", "--config", file, "--rate-interval", "2h")
	if err == nil {
		t.Fatal("want an error")
	}
	msg := err.Error()
	if err := contains(msg,
		"--rate-interval must be between 1s and 1h (whole milliseconds), got 2h0m0s\n", // the flag wins over the file
		"--seasonal-threshold must be a positive number, got -1 (file "+file+":2)",
		file+`:3: seasonal-min-rate ".nan": want a number`,
		"--seasonal-utc-offset must be whole minutes between -14h and 14h, got 15h0m0s (file "+file+":4)",
		"--rate-probation must be at least 1h, got 30m0s (env MESHGUARD_RATE_PROBATION)",
		"--seasonal-warmup-days must be between 1 and 30, got 0 (env MESHGUARD_SEASONAL_WARMUP_DAYS)",
		`MESHGUARD_SEASONAL_SAME_WEEKENDS: seasonal-same-weekends "maybe": want true or false`,
	); err != nil {
		t.Fatalf("%v in:\n%s", err, msg)
	}
	if n := strings.Count(msg, "\n") + 1; n != 7 {
		t.Errorf("%d lines, want one per problem (7):\n%s", n, msg)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"interval under a second", []string{"--rate-interval", "500ms"}, "--rate-interval must be between 1s and 1h"},
		{"interval not whole milliseconds", []string{"--rate-interval", "1.0000001s"}, "--rate-interval must be between 1s and 1h (whole milliseconds)"},
		{"infinite threshold", []string{"--seasonal-threshold", "+Inf"}, "--seasonal-threshold must be a positive number, got +Inf"},
		{"NaN min rate", []string{"--seasonal-min-rate", "NaN"}, "--seasonal-min-rate must be a positive number, got NaN"},
		{"zero threshold", []string{"--seasonal-threshold", "0"}, "--seasonal-threshold must be a positive number, got 0"},
		{"warm-up of a year", []string{"--seasonal-warmup-days", "365"}, "--seasonal-warmup-days must be between 1 and 30, got 365"},
		{"offset in seconds", []string{"--seasonal-utc-offset", "1h30s"}, "--seasonal-utc-offset must be whole minutes"},
		{"offset west of the date line", []string{"--seasonal-utc-offset", "-14h1m"}, "--seasonal-utc-offset must be whole minutes between -14h and 14h"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseServe(tc.args)
			if err == nil || err.Error() != tc.want && !strings.HasPrefix(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("%v, want one error starting %q", err, tc.want)
			}
		})
	}
	for _, args := range [][]string{
		{"--rate-interval", "1s", "--rate-probation", "1h", "--seasonal-utc-offset", "14h", "--seasonal-warmup-days", "30"},
		{"--rate-interval", "1h", "--seasonal-utc-offset", "-14h", "--seasonal-utc-offset", "5h30m", "--seasonal-warmup-days", "1"},
	} {
		if _, err := parseServe(args); err != nil {
			t.Errorf("%q: %v", args, err)
		}
	}
}
