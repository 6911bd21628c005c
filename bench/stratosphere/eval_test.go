package main

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshguard/meshguard/bench/evaluate"
	"github.com/meshguard/meshguard/flowmodel"
)

// realData returns the Stratosphere captures or fails the test saying where it looked: the
// evaluation is part of CI, so a missing dataset is an error, not a skip.
func realData(t *testing.T) string {
	t.Helper()
	dir, err := dataDir("")
	return evaluate.NeedDataset(t, dir, err)
}

func TestDataDirMissing(t *testing.T) {
	t.Setenv("MESHGUARD_DATASETS", filepath.Join(t.TempDir(), "nowhere"))
	_, err := dataDir("")
	if err == nil || !strings.Contains(err.Error(), "MESHGUARD_DATASETS") || !strings.Contains(err.Error(), "nowhere") {
		t.Fatalf("err = %v, want a message naming MESHGUARD_DATASETS and the path tried", err)
	}
}

// TestEvalReal evaluates the current model on the real captures. The counts of the data and
// the split are fixed by the dataset; the detection figures are lower bounds that any model
// with a new-destination detector must reach (Kovter keeps contacting new IPs), and the
// model's ROC-AUC and AP must reach the first-seen baseline's on both views of the capture.
func TestEvalReal(t *testing.T) {
	dir := realData(t)
	events, _, starts, err := readCaptures(dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg := evalConfig{Benign: benignHost, Infected: kovterHost, Learn: []time.Duration{8 * time.Hour}}
	res, excluded, err := evaluateEvents(context.Background(), events, starts, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(events) != 7229 || excluded != 4201 {
		t.Errorf("events %d, excluded %d; want 7229 and 4201 (the inbound scans)", len(events), excluded)
	}
	if len(res) != 2 {
		t.Fatalf("got %d results, want own and replica baselines", len(res))
	}
	for _, r := range res {
		t.Run(r.name(), func(t *testing.T) {
			k, ok := r.Report.Kind("malicious")
			if !ok {
				t.Fatal("no malicious flows scored")
			}
			if k.Positives != 1462 {
				t.Errorf("malicious flows = %d, want 1462 (all of 009's but two)", k.Positives)
			}
			for _, v := range []float64{k.AUC, k.AP, k.Recall[0].Recall, k.Recall[1].Recall} {
				if !(v >= 0 && v <= 1) {
					t.Errorf("metric %v is not computed: %+v", v, k)
				}
			}
			if !(r.Report.ServiceDays > 0.9) || r.Report.Negatives < 1000 {
				t.Errorf("%.2f service-days, %d benign flows scored; want about a day and over 1000", r.Report.ServiceDays, r.Report.Negatives)
			}
			// Issue 11: the model does not rank worse than the trivial baseline beside it.
			tk, ok := r.Trivial.Kind("malicious")
			if !ok {
				t.Fatal("first-seen baseline: no malicious flows scored")
			}
			t.Logf("ROC-AUC %.3f, AP %.3f; first-seen baseline %.3f, %.3f", k.AUC, k.AP, tk.AUC, tk.AP)
			if k.AUC < tk.AUC-1e-9 || k.AP < tk.AP-1e-9 {
				t.Errorf("ROC-AUC %.4f, AP %.4f: below the first-seen baseline's %.4f, %.4f", k.AUC, k.AP, tk.AUC, tk.AP)
			}
			benign, kovter := r.Hosts[0], r.Hosts[1]
			// 008 starts 2022-06-12T21:59:58Z: its first 8 hours hold 492 flows.
			if benign.Learning != 492 || benign.Malicious != 0 {
				t.Errorf("benign host: %d flows in learning, %d malicious; want 492 and 0", benign.Learning, benign.Malicious)
			}
			if benign.FalseAlertDests > benign.FalseAlerts || benign.FalseAlertsKnownName > benign.FalseAlerts || (benign.FalseAlerts > 0) != (benign.FalseAlertDests > 0) {
				t.Errorf("benign host: %d false alerts on %d destinations, %d to learned names", benign.FalseAlerts, benign.FalseAlertDests, benign.FalseAlertsKnownName)
			}
			switch r.Baseline {
			case ownBaseline:
				if kovter.MaliciousInLearn != 1181 || kovter.Malicious != 281 {
					t.Errorf("Kovter: %d malicious in learning, %d scored; want 1181 and 281", kovter.MaliciousInLearn, kovter.Malicious)
				}
				// After 8 hours Kovter only contacts IPs it never contacted before.
				if kovter.MaliciousAlerted != kovter.Malicious {
					t.Errorf("Kovter: %d of %d scored malicious flows alerted, want all", kovter.MaliciousAlerted, kovter.Malicious)
				}
				if ttd, _ := k.MaxTimeToDetect(); k.Detected != 1 || ttd < 8*time.Hour-5*time.Minute || ttd > 8*time.Hour+5*time.Minute {
					t.Errorf("time to detect %v (detected %d), want about the 8h learning", ttd, k.Detected)
				}
			case replicaBaseline:
				if k.AlertRecall != 1 || k.InLearning != 0 {
					t.Errorf("replica: alert recall %v, %d in learning; want 1 and 0", k.AlertRecall, k.InLearning)
				}
				if ttd, _ := k.MaxTimeToDetect(); ttd != 0 {
					t.Errorf("replica: time to detect %v, want 0", ttd)
				}
			}
		})
	}
}

// TestEveryWindowHoldsTheBaseline: with each learn window of the published table (4h, 8h,
// 12h) and both ways of scoring the Kovter host, the model ranks the malicious flows at
// least as well as the first-seen baseline beside it (issue 11). At 4h, own baseline, this
// failed (0.203 against 0.309) while the burst detector's Pearson term and sub-alarm rate
// noise ranked the benign host's known flows above the Kovter host's learned beacons.
func TestEveryWindowHoldsTheBaseline(t *testing.T) {
	dir := realData(t)
	events, _, starts, err := readCaptures(dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg := evalConfig{Benign: benignHost, Infected: kovterHost, Learn: []time.Duration{4 * time.Hour, 8 * time.Hour, 12 * time.Hour}}
	res, _, err := evaluateEvents(context.Background(), events, starts, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 6 {
		t.Fatalf("got %d results, want 3 windows × 2 baselines", len(res))
	}
	for _, r := range res {
		k, _ := r.Report.Kind("malicious")
		tk, _ := r.Trivial.Kind("malicious")
		t.Logf("%s: ROC-AUC %.3f, first-seen %.3f", r.name(), k.AUC, tk.AUC)
		if k.Positives == 0 || k.AUC < tk.AUC-1e-9 {
			t.Errorf("%s: ROC-AUC %.4f (%d malicious), below the first-seen baseline's %.4f", r.name(), k.AUC, k.Positives, tk.AUC)
		}
	}
}

// TestFirstC2AfterWindowIsAlerted checks issue 11's "judge after the window" on the Kovter
// capture, with the model's own promotion (no split): the Kovter host learns for 8 hours of
// event time from its first flow; the first malicious flow once that window has passed is
// decided in monitor mode and alerted, not learned, and so is every later one.
func TestFirstC2AfterWindowIsAlerted(t *testing.T) {
	dir := realData(t)
	events, _, _, err := readCaptures(dir)
	if err != nil {
		t.Fatal(err)
	}
	const window = 8 * time.Hour
	m, err := flowmodel.New(flowmodel.Config{LearnWindow: window, LearnMinRequests: 1, AfterLearning: flowmodel.ModeMonitor, EventClock: true})
	if err != nil {
		t.Fatal(err)
	}
	var start time.Time
	seen, alerted := 0, 0
	for _, e := range events {
		if e.Flow.Service != kovterHost {
			continue
		}
		f := e.Flow
		if start.IsZero() {
			start = f.Time
		}
		v := m.Decide(&f)
		if e.Label != "malicious" || f.Time.Sub(start) < window {
			continue
		}
		if seen == 0 && (v.Mode != flowmodel.ModeMonitor || v.Action == flowmodel.Allow) {
			t.Errorf("first C2 flow after the window (%s, %s after the first flow, to %s): %s in %s mode, want alerted in monitor",
				f.Time.Format(time.RFC3339), f.Time.Sub(start), f.Destination, v.Action, v.Mode)
		}
		seen++
		if v.Action != flowmodel.Allow {
			alerted++
		}
	}
	if seen == 0 {
		t.Fatal("no malicious flow after the window")
	}
	if alerted != seen {
		t.Errorf("%d of %d malicious flows after the window alerted, want all", alerted, seen)
	}
	t.Logf("%d malicious flows after the %s window, %d alerted", seen, window, alerted)
}

func TestCommands(t *testing.T) {
	dir := realData(t)
	out := filepath.Join(t.TempDir(), "flows.jsonl")
	var stdout, stderr bytes.Buffer
	if err := run(context.Background(), []string{"convert", "--data", dir, "--out", out}, &stdout, &stderr); err != nil {
		t.Fatalf("convert: %v\n%s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "wrote 7229 flow events") {
		t.Errorf("convert said %q", stderr.String())
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	events, err := evaluate.Read(bufio.NewReader(f))
	if err != nil {
		t.Fatal(err)
	}
	if len(events) != 7229 {
		t.Fatalf("read back %d events, want 7229", len(events))
	}
	for i := 1; i < len(events); i++ {
		if events[i].Flow.Time.Before(events[i-1].Flow.Time) {
			t.Fatalf("events %d and %d out of time order", i, i+1)
		}
	}

	results := filepath.Join(t.TempDir(), "RESULTS.md")
	stdout.Reset()
	if err := run(context.Background(), []string{"eval", "--data", dir, "--learn", "8h", "--write", "--results", results}, &stdout, &stderr); err != nil {
		t.Fatalf("eval: %v\n%s", err, stderr.String())
	}
	b, err := os.ReadFile(results)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"<!-- BEGIN stratosphere -->",
		"Command: `go run ./bench/stratosphere eval --write --learn 8h`",
		"| own baseline, learn 8h | 1462 (1181) | 1020 |",
		"| replica of benign host, learn 8h | 1462 (0) |",
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("results lack %q:\n%s", want, b)
		}
	}
	if !bytes.Contains(b, stdout.Bytes()) {
		t.Error("the section written differs from the one printed")
	}

	for _, args := range [][]string{{}, {"nope"}, {"convert"}, {"eval", "--learn", "0h"}} {
		if err := run(context.Background(), args, &stdout, &stderr); err == nil {
			t.Errorf("run %q succeeded", args)
		}
	}
}
