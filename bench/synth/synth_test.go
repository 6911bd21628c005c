package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshguard/meshguard/bench/evaluate"
)

// slice is the small suite CI runs: three days, one of learning, a fifth of the traffic.
var slice = genConfig{Seed: 1, Days: 3, LearnDays: 1, Scale: 0.2, Instances: 3}

// sliceSHA256 pins the slice's bytes. A change to the generator changes it: check that the
// change is meant, then update it (and rerun the full suite for bench/RESULTS.md).
const sliceSHA256 = "68f24cc4c42c0b02b7af092ac6f2efb25dbf3704fe9073cd61e3d26932961c9a"

func genBytes(t *testing.T, c genConfig) []byte {
	t.Helper()
	recs, _, err := generate(c)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := evaluate.WriteJSONL(&buf, recs); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func hash(b []byte) string { return fmt.Sprintf("%x", sha256.Sum256(b)) }

func TestGenerateDeterministic(t *testing.T) {
	a, b := genBytes(t, slice), genBytes(t, slice)
	if hash(a) != hash(b) {
		t.Fatal("two runs with seed 1 differ")
	}
	if got := hash(a); got != sliceSHA256 {
		t.Errorf("slice SHA-256 = %s, want %s", got, sliceSHA256)
	}
	other := slice
	other.Seed = 2
	if hash(genBytes(t, other)) == hash(a) {
		t.Error("seeds 1 and 2 give the same suite")
	}
}

// TestGenerateGroundTruth checks what the labels promise: attacks only after learning, each
// kind as described, and every event a valid flow event in time order.
func TestGenerateGroundTruth(t *testing.T) {
	data := genBytes(t, slice)
	events, err := evaluate.Read(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	learnEnd := start.Add(time.Duration(slice.LearnDays) * 24 * time.Hour)
	firstOf := map[string]time.Time{}
	perKind := map[string]int{}
	instances := map[string]map[string]bool{}
	known := map[string]map[string]bool{} // service → "host ip" seen while learning
	for i, e := range events {
		f := e.Flow
		if i > 0 && f.Time.Before(events[i-1].Flow.Time) {
			t.Fatalf("event %d out of time order", i+1)
		}
		if _, ok := firstOf[f.Service]; !ok {
			firstOf[f.Service] = f.Time
		}
		if known[f.Service] == nil {
			known[f.Service] = map[string]bool{}
		}
		if e.Label == "" {
			if f.Time.Before(learnEnd) {
				known[f.Service][f.Destination.Host+" "+f.Destination.IP.String()] = true
				known[f.Service]["ip "+f.Destination.IP.String()] = true
				known[f.Service]["host "+f.Destination.Host] = true
			}
			continue
		}
		if !slices.Contains(kinds, e.Label) || !strings.HasPrefix(e.Attack, e.Label+"-") {
			t.Fatalf("event %d: label %q attack %q", i+1, e.Label, e.Attack)
		}
		if f.Time.Before(learnEnd) {
			t.Fatalf("event %d: attack %s during learning at %v", i+1, e.Attack, f.Time)
		}
		perKind[e.Label]++
		if instances[e.Label] == nil {
			instances[e.Label] = map[string]bool{}
		}
		instances[e.Label][e.Attack+" "+f.Service] = true
		d := f.Destination
		k := known[f.Service]
		switch e.Label {
		case kindNewIP:
			if d.Host != "" || k["ip "+d.IP.String()] {
				t.Errorf("new_ip event %d goes to %v, known or named", i+1, d)
			}
		case kindHostSpoof:
			if !k["host "+d.Host] || k["ip "+d.IP.String()] {
				t.Errorf("host_spoof event %d goes to %v: want a known host at an unknown IP", i+1, d)
			}
		case kindNewShape, kindRateChange, kindSlowExfil:
			if !k[d.Host+" "+d.IP.String()] {
				t.Errorf("%s event %d goes to %v, not a known destination", e.Label, i+1, d)
			}
		}
		if e.Label == kindNewShape && (f.Method != "GET" || !strings.HasPrefix(f.Path, "/internal/admin/export")) {
			t.Errorf("new_shape event %d is %s %s", i+1, f.Method, f.Path)
		}
		if e.Label == kindSlowExfil && f.RequestBytes < 100000 {
			t.Errorf("slow_exfil event %d uploads only %d bytes", i+1, f.RequestBytes)
		}
	}
	for i, s := range estate {
		if want := start.Add(time.Duration(i) * time.Second); !firstOf[s.name].Equal(want) {
			t.Errorf("%s first calls at %v, want %v (its deployment)", s.name, firstOf[s.name], want)
		}
	}
	for _, k := range kinds {
		if perKind[k] == 0 || len(instances[k]) != slice.Instances {
			t.Errorf("%s: %d events in %d instance-service pairs, want some in %d", k, perKind[k], len(instances[k]), slice.Instances)
		}
	}
	// rate_change multiplies the rate by 10 over 3 hours: at scale 0.2, about 30 per instance.
	if n := perKind[kindRateChange]; n < 60 || n > 130 {
		t.Errorf("rate_change: %d events, want about 90", n)
	}
}

// TestEvalSlice runs the evaluation on the slice and checks real figures of the model with
// every detector: attacks on a new IP are found at once, the other kinds are found too, and
// false alerts stay near the alert budget of one per service-day.
func TestEvalSlice(t *testing.T) {
	events, err := evaluate.Read(bytes.NewReader(genBytes(t, slice)))
	if err != nil {
		t.Fatal(err)
	}
	res, err := evaluateSuite(events, nil, slice)
	if err != nil {
		t.Fatal(err)
	}
	rep := res.report
	// Five services scored for the two days after learning.
	if rep.ServiceDays < 9.5 || rep.ServiceDays > 10 {
		t.Errorf("service-days = %.2f, want about 10", rep.ServiceDays)
	}
	// Measured: 10 false alerts (1.01 per service-day); the slice's budget is 1 a day.
	if fa := rep.FalseAlertsPerServiceDay(); fa > 1.5 {
		t.Errorf("false alerts %.2f per service-day, want at most 1.5; by destination: %v", fa, falseAlerts(res))
	}
	if len(rep.Kinds) != len(kinds) {
		t.Fatalf("kinds measured: %d, want %d", len(rep.Kinds), len(kinds))
	}
	for _, k := range rep.Kinds {
		if k.InLearning != 0 || k.Instances != slice.Instances || !(k.AUC >= 0 && k.AUC <= 1) || !(k.AP > 0 && k.AP <= 1) {
			t.Errorf("%s: not measured: %+v", k.Kind, k)
		}
	}
	for _, kind := range []string{kindNewIP, kindHostSpoof} {
		k, _ := rep.Kind(kind)
		// Budget: 1 false alert per service-day, i.e. 9.9 false alerts in the slice.
		if br := k.Recall[0]; br.PerServiceDay != 1 || br.Recall != 1 || !br.OK {
			t.Errorf("%s: recall at %v false alerts per service-day = %v (ok %v), want 1", kind, br.PerServiceDay, br.Recall, br.OK)
		}
		if k.AUC < 0.99 || k.AlertRecall != 1 || k.Detected != slice.Instances {
			t.Errorf("%s: AUC %v, alert recall %v, detected %d/%d; want >= 0.99, 1, all", kind, k.AUC, k.AlertRecall, k.Detected, k.Instances)
		}
		if ttd, _ := k.MaxTimeToDetect(); ttd != 0 {
			t.Errorf("%s: time to detect %v, want 0: the first event goes to a new IP", kind, ttd)
		}
	}
	// Measured on the slice: new_shape AUC 0.996; rate_change 0.927, every instance found;
	// slow_exfil 0.978 (0.926 before sparse keys aged by requests), two instances of three.
	// rate_change was 0.965 while rate and volume scores far below their alarm still ranked
	// flows (see quiet in flowmodel): that noise also ranked a benign host's flows above a
	// learned beacon on bench/stratosphere. The bound is 0.92 since.
	for _, want := range []struct {
		kind     string
		auc      float64
		detected int
	}{{kindNewShape, 0.98, 3}, {kindRateChange, 0.92, 3}, {kindSlowExfil, 0.95, 2}} {
		k, _ := rep.Kind(want.kind)
		if k.AUC < want.auc || k.Detected < want.detected {
			t.Errorf("%s: AUC %.3f, detected %d/%d; want >= %.2f and >= %d", want.kind, k.AUC, k.Detected, k.Instances, want.auc, want.detected)
		}
	}
	// The model does not lose to the trivial baseline (first-seen destination and a fixed
	// rate threshold): no kind ranks worse by ROC-AUC (0.002 of slack for ties at 0.999),
	// and it raises no more false alerts.
	base := res.baseline
	for _, k := range rep.Kinds {
		bk, ok := base.Kind(k.Kind)
		if !ok {
			t.Errorf("%s: the baseline was not measured", k.Kind)
			continue
		}
		t.Logf("%s: AUC %.3f, baseline %.3f", k.Kind, k.AUC, bk.AUC)
		if k.AUC < bk.AUC-0.002 {
			t.Errorf("%s: AUC %.3f, below the baseline's %.3f", k.Kind, k.AUC, bk.AUC)
		}
	}
	if fa, bfa := rep.FalseAlertsPerServiceDay(), base.FalseAlertsPerServiceDay(); fa > bfa {
		t.Errorf("%.2f false alerts per service-day, above the baseline's %.2f", fa, bfa)
	}
}

// TestReplayEquivalence checks that a replay gives the in-process scores: the generated file
// decided by the meshguard binary's replay command (built here, run as a user runs it) gives
// the same verdicts, and the same table, as the in-process evaluation.
func TestReplayEquivalence(t *testing.T) {
	dir := t.TempDir()
	eventsFile := filepath.Join(dir, "suite.jsonl")
	var stdout, stderr bytes.Buffer
	sliceFlags := []string{"--days", "3", "--learn-days", "1", "--scale", "0.2"}
	if err := run(context.Background(), append([]string{"gen", "--seed", "1", "--out", eventsFile}, sliceFlags...), &stdout, &stderr); err != nil {
		t.Fatalf("gen: %v: %s", err, stderr.String())
	}
	data, err := os.ReadFile(eventsFile)
	if err != nil {
		t.Fatal(err)
	}
	if hash(data) != sliceSHA256 {
		t.Fatalf("gen wrote other bytes than generate: %s", hash(data))
	}

	// The replay, as a user runs it: the meshguard binary's replay command.
	bin := filepath.Join(dir, "meshguard")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/meshguard").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	verdictsFile := filepath.Join(dir, "verdicts.jsonl")
	out, err := os.Create(verdictsFile)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "replay", "--learn-window", "24h", "--learn-min-requests", "1", eventsFile)
	cmd.Stdout, cmd.Stderr = out, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("meshguard replay: %v: %s", err, stderr.String())
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	replayedBytes, err := os.ReadFile(verdictsFile)
	if err != nil {
		t.Fatal(err)
	}
	replayed, err := evaluate.ReadVerdicts(bytes.NewReader(replayedBytes))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := evaluate.WriteVerdicts(&buf, replayed); err != nil {
		t.Fatal(err)
	}

	saved := filepath.Join(dir, "inprocess.jsonl")
	stdout.Reset()
	if err := run(context.Background(), append([]string{"eval", "--save-verdicts", saved}, sliceFlags...), &stdout, &stderr); err != nil {
		t.Fatalf("eval: %v: %s", err, stderr.String())
	}
	inProcess := stdout.String()
	inVerdicts, err := os.ReadFile(saved)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(inVerdicts, buf.Bytes()) {
		t.Error("the in-process verdicts differ from those of meshguard replay")
	}

	stdout.Reset()
	if err := run(context.Background(), append([]string{"eval", "--events", eventsFile, "--verdicts", verdictsFile}, sliceFlags...), &stdout, &stderr); err != nil {
		t.Fatalf("eval --verdicts: %v: %s", err, stderr.String())
	}
	fromReplay := stdout.String()
	table := func(s string) string { return s[strings.Index(s, "\n| "):] }
	if table(fromReplay) != table(inProcess) {
		t.Errorf("replayed table differs from the in-process one:\n%s\nvs\n%s", table(fromReplay), table(inProcess))
	}
	if !strings.Contains(inProcess, sliceSHA256) || !strings.Contains(fromReplay, sliceSHA256) {
		t.Error("the sections do not name the events' SHA-256")
	}
}

func TestCommands(t *testing.T) {
	results := filepath.Join(t.TempDir(), "RESULTS.md")
	var stdout, stderr bytes.Buffer
	if err := run(context.Background(), []string{"eval", "--days", "3", "--learn-days", "1", "--scale", "0.2", "--write", "--results", results}, &stdout, &stderr); err != nil {
		t.Fatalf("eval: %v: %s", err, stderr.String())
	}
	b, err := os.ReadFile(results)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"<!-- BEGIN synth -->",
		"Command: `go run ./bench/synth eval --days 3 --learn-days 1 --scale 0.2 --write`",
		"| `new_ip` | 108 (0) |",
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("results lack %q:\n%s", want, b)
		}
	}
	for _, args := range [][]string{{}, {"nope"}, {"gen"}, {"gen", "--out", "-", "--days", "1"}, {"eval", "--learn-days", "0"}, {"eval", "--scale", "-1"}, {"eval", "--verdicts", "/nonexistent"}} {
		if err := run(context.Background(), args, io.Discard, io.Discard); err == nil {
			t.Errorf("run %q succeeded", args)
		}
	}
}
