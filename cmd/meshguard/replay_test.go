package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestReplay(t *testing.T) {
	events := strings.Join([]string{
		`{"time": "2026-01-02T00:00:00Z", "service": "shop/checkout", "destination": {"ip": "203.0.113.7", "port": 443, "host": "api.example.com"}}`,
		`{"time": "2026-01-02T00:30:00Z", "service": "shop/checkout", "destination": {"ip": "203.0.113.7", "port": 443}}`,
		`not json`,
		`{"time": "2026-01-02T01:00:00Z", "service": "shop/checkout", "destination": {"ip": "203.0.113.7", "port": 443}}`,
		``,
		`{"time": "2026-01-02T01:10:00Z", "service": "shop/checkout", "destination": {"ip": "198.51.100.1", "port": 443}}`,
		`{"time": "2026-01-02T01:20:00Z", "service": "shop/checkout"}`,
		`{"time": 1767317400, "service": "shop/checkout", "destination": {"host": "API.example.com", "port": 443}}`,
	}, "\n")
	path := filepath.Join(t.TempDir(), "events.jsonl")
	if err := os.WriteFile(path, []byte(events), 0o600); err != nil {
		t.Fatal(err)
	}
	want := []replayLine{
		{Seq: 1, Service: "shop/checkout", Mode: "learn", Verdict: "allow", Reasons: []string{}},
		{Seq: 2, Service: "shop/checkout", Mode: "learn", Verdict: "allow", Reasons: []string{}},
		// Third request at one hour: the window and the request count are both reached.
		{Seq: 4, Service: "shop/checkout", Mode: "learn", Verdict: "allow", Reasons: []string{}},
		{Seq: 6, Service: "shop/checkout", Mode: "enforce", Verdict: "block", Score: 0.993, Reasons: []string{"new_destination"}}, // a new destination on a port it uses
		{Seq: 8, Service: "shop/checkout", Mode: "enforce", Verdict: "allow", Reasons: []string{}},
	}
	for _, input := range []string{"file", "stdin"} {
		t.Run(input, func(t *testing.T) {
			args := []string{"replay", "--learn-window", "1h", "--learn-min-requests", "3", "--after-learning", "enforce"}
			stdin := strings.NewReader("")
			if input == "file" {
				args = append(args, path)
			} else {
				args = append(args, "-")
				stdin = strings.NewReader(events)
			}
			var stdout, stderr strings.Builder
			if err := run(context.Background(), args, stdin, &stdout, &stderr); err != nil {
				t.Fatalf("%v\n%s", err, stderr.String())
			}
			var got []replayLine
			sc := bufio.NewScanner(strings.NewReader(stdout.String()))
			for sc.Scan() {
				var l replayLine
				if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
					t.Fatalf("output line %q: %v", sc.Text(), err)
				}
				got = append(got, l)
			}
			if len(got) != len(want) {
				t.Fatalf("got %d lines, want %d:\n%s", len(got), len(want), stdout.String())
			}
			for i := range want {
				g, w := got[i], want[i]
				// A block scores 1; an allowed flow scores below the detectors' alarm level.
				scoreOK := g.Score == w.Score || (w.Score == 0 && g.Score < 0.5)
				if g.Seq != w.Seq || g.Service != w.Service || g.Mode != w.Mode || g.Verdict != w.Verdict || !scoreOK || strings.Join(g.Reasons, ",") != strings.Join(w.Reasons, ",") {
					t.Errorf("line %d: got %+v, want %+v", i, g, w)
				}
			}
			if err := contains(stderr.String(), "line 3:", "line 7: destination.ip or destination.host is required", "5 events (4 allow, 0 alert, 1 block), 2 bad lines"); err != nil {
				t.Errorf("%v in stderr:\n%s", err, stderr.String())
			}
		})
	}
}

func TestReplayFlagErrors(t *testing.T) {
	var stderr strings.Builder
	err := run(context.Background(), []string{"replay", "--after-learning", "learn", "--default-mode", "x", "a", "b"}, strings.NewReader(""), &strings.Builder{}, &stderr)
	if err == nil {
		t.Fatal("want an error")
	}
	if e := contains(err.Error(), "--default-mode", "after-learning", "one input file"); e != nil {
		t.Fatalf("%v in %v", e, err)
	}
	if err := run(context.Background(), []string{"replay", "/does/not/exist"}, nil, &strings.Builder{}, &stderr); err == nil {
		t.Fatal("missing file: want an error")
	}
}

func TestDemo(t *testing.T) {
	var out, errOut strings.Builder
	if err := run(context.Background(), []string{"demo", "--learn-window", "500ms"}, nil, &out, &errOut); err != nil {
		t.Fatalf("%v\n%s", err, errOut.String())
	}
	s := out.String()
	if err := contains(s, "ALERT    new_destination", "403    BLOCK    new_destination", "403    BLOCK    quarantined",
		"shop/checkout     quarantine", "billing/invoices  enforce"); err != nil {
		t.Fatalf("%v in demo output:\n%s", err, s)
	}
}

// TestReplayAllGarbage: input with no valid event fails, and the bad lines are counted on
// stderr; an empty input is no error.
func TestReplayAllGarbage(t *testing.T) {
	for _, tc := range []struct {
		name, input string
		fails       bool
		summary     string
	}{
		{"garbage", "not json\n{\"service\": 1}\n\n", true, "0 events (0 allow, 0 alert, 0 block), 2 bad lines"},
		{"empty", "", false, "0 events (0 allow, 0 alert, 0 block), 0 bad lines"},
		{"one good line", "nope\n" + `{"time": "2026-01-02T00:00:00Z", "service": "a/b", "destination": {"ip": "203.0.113.7", "port": 443}}`, false,
			"1 events (1 allow, 0 alert, 0 block), 1 bad lines"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr strings.Builder
			err := run(context.Background(), []string{"replay"}, strings.NewReader(tc.input), &stdout, &stderr)
			if (err != nil) != tc.fails {
				t.Fatalf("error %v, want failure %v", err, tc.fails)
			}
			if tc.fails && !strings.Contains(err.Error(), "no valid flow event, 2 bad lines") {
				t.Errorf("error %q", err)
			}
			if !strings.Contains(stderr.String(), "replay: "+tc.summary) {
				t.Errorf("stderr lacks %q:\n%s", tc.summary, stderr.String())
			}
		})
	}
}

// TestReplayJudgesParameterValues: flow events carry query strings and bodies
// (request.body), and replay judges their values against what the service learned: an SQL
// injection in a known JSON field or query parameter is parameter_value, named benign
// values are not.
func TestReplayJudgesParameterValues(t *testing.T) {
	var lines []string
	t0 := time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC)
	event := func(at time.Duration, path, body string) string {
		b, _ := json.Marshal(map[string]any{
			"time": t0.Add(at).Format(time.RFC3339Nano), "service": "shop/checkout",
			"destination": map[string]any{"ip": "203.0.113.7", "port": 443, "host": "api.example.com"},
			"request": map[string]any{"method": "POST", "path": path, "body": body,
				"headers": map[string]string{"content-type": "application/json"}},
		})
		return string(b)
	}
	skus := []string{"A-1001", "B-2044", "C-3120", "D-0457", "E-9981"}
	for i := range 200 {
		lines = append(lines, event(time.Duration(i)*time.Minute, fmt.Sprintf("/v1/orders?page=%d&sort=price", i%7+1),
			fmt.Sprintf(`{"sku":%q,"qty":%d,"note":"deliver to door %d"}`, skus[i%len(skus)], i%9+1, i%40)))
	}
	after := 4 * time.Hour
	lines = append(lines,
		event(after, "/v1/orders?page=3&sort=price", `{"sku":"C-3120","qty":4,"note":"deliver to door 12"}`),
		event(after+time.Minute, "/v1/orders?page=3&sort=price", `{"sku":"C-3120' OR '1'='1","qty":4,"note":"deliver to door 12"}`),
		event(after+2*time.Minute, "/v1/orders?page=1%20UNION%20SELECT%20password%20FROM%20users--&sort=price", `{"sku":"A-1001","qty":2,"note":"deliver to door 3"}`),
	)
	var stdout, stderr strings.Builder
	args := []string{"replay", "--learn-window", "3h", "--learn-min-requests", "100", "--after-learning", "monitor", "-"}
	if err := run(context.Background(), args, strings.NewReader(strings.Join(lines, "\n")), &stdout, &stderr); err != nil {
		t.Fatalf("%v\n%s", err, stderr.String())
	}
	out := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	last := out[len(out)-3:]
	var got []replayLine
	for _, l := range last {
		var r replayLine
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("%q: %v", l, err)
		}
		got = append(got, r)
	}
	if got[0].Mode != "monitor" || slices.Contains(got[0].Reasons, "parameter_value") {
		t.Errorf("benign request after learning: %+v", got[0])
	}
	for i, what := range []string{"injection in a JSON body field", "injection in a query parameter"} {
		if g := got[i+1]; g.Verdict != "alert" || !slices.Contains(g.Reasons, "parameter_value") {
			t.Errorf("%s: %+v, want an alert with parameter_value", what, g)
		}
	}
}
