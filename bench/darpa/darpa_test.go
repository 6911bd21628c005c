package main

import (
	"archive/zip"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	bencheval "github.com/meshguard/meshguard/bench/evaluate"
)

func TestParseMinute(t *testing.T) {
	minute := func(y int, m time.Month, d, h, mi int) int64 {
		return time.Date(y, m, d, h, mi, 0, 0, time.UTC).Unix() / 60
	}
	tests := []struct {
		in   string
		want int64
		bad  bool
	}{
		{in: "06/01/1998-07:55", want: minute(1998, 6, 1, 7, 55)},
		{in: "07/31/1998-23:59", want: minute(1998, 7, 31, 23, 59)},
		{in: "07/32/1998-00:05", want: minute(1998, 8, 1, 0, 5)}, // in the file; rolls over
		{in: "6/1/1998-7:55", bad: true},
		{in: "13/01/1998-00:00", bad: true},
		{in: "06/01/1998-24:00", bad: true},
		{in: "06/01/1998 07:55", bad: true},
		{in: "06/0x/1998-07:55", bad: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseMinute([]byte(tt.in))
			if tt.bad {
				if err == nil {
					t.Fatalf("parseMinute(%q) = %d, want an error", tt.in, got)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("parseMinute(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestReadStream(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		limit   int
		rows    int
		attacks int
		err     string
	}{
		{
			name: "crlf and blank lines",
			in:   "a,b,06/01/1998-07:55,-\r\n\na,c,06/01/1998-07:56,neptune\r\nb,a,06/01/1998-07:56,-",
			rows: 3, attacks: 1,
		},
		{
			name:  "limit",
			in:    "a,b,06/01/1998-07:55,smurf\na,c,06/01/1998-07:56,-\nb,a,06/01/1998-07:56,-\n",
			limit: 2, rows: 2, attacks: 1,
		},
		{name: "bad time names its line", in: "a,b,06/01/1998-07:55,-\na,b,yesterday,-\n", err: "line 2"},
		{name: "too few fields", in: "a,b,06/01/1998-07:55\n", err: "4 comma-separated"},
		{name: "empty label", in: "a,b,06/01/1998-07:55,\n", err: "empty field"},
		{name: "empty", in: "", err: "no rows"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := readStream(strings.NewReader(tt.in), tt.limit)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want one containing %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s.len() != tt.rows || s.attacks != tt.attacks {
				t.Fatalf("%d rows, %d attacks; want %d, %d", s.len(), s.attacks, tt.rows, tt.attacks)
			}
			if s.src[0] == s.dst[0] {
				t.Fatal("source and destination hash alike")
			}
		})
	}
}

// writeZip writes a zip holding one member with the given content.
func writeZip(t *testing.T, member, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "darpa.zip")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	zw := zip.NewWriter(f)
	w, err := zw.Create(member)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte(content)); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// synthetic is a small stream with a flood: normal traffic between a few hosts for an hour,
// then one minute in which one source floods one destination.
func synthetic() string {
	var b strings.Builder
	for m := range 60 {
		for _, e := range []string{"h1,h2", "h2,h1", "h3,h2", "h1,h4"} {
			b.WriteString(e + ",06/01/1998-10:" + pad2(m) + ",-\n")
		}
	}
	for range 200 {
		b.WriteString("x9,h2,06/01/1998-11:00,neptune\n")
	}
	return b.String()
}

func pad2(n int) string { return string([]byte{'0' + byte(n/10), '0' + byte(n%10)}) }

// The whole program on a real zip file: report on stdout, section written with --write.
func TestRunSynthetic(t *testing.T) {
	data := writeZip(t, "data/"+csvName, synthetic())
	resultsPath := filepath.Join(t.TempDir(), "RESULTS.md")
	var stdout, stderr bytes.Buffer
	args := []string{"--data", data, "--write", "--results", resultsPath}
	if err := run(context.Background(), args, &stdout, &stderr); err != nil {
		t.Fatalf("run: %v\n%s", err, stderr.String())
	}
	out := stdout.String()
	for _, want := range []string{
		"`go run ./bench/darpa --data " + data + " --write --results " + resultsPath + "`",
		"440 edges", "200 of them attacks",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	// The flood stands out to the burst detector but for its first few edges (a new source, to a
	// destination with history); to first-seen it is one new edge among 440.
	for name, want := range map[string][2]float64{
		"burst (meshguard)":     {0.98, 1},
		"first-seen edge":       {0.4, 0.6},
		"per-edge rate z-score": {0.5, 1},
	} {
		m := regexp.MustCompile(`\| ` + regexp.QuoteMeta(name) + ` \| ([0-9.]+) \|`).FindStringSubmatch(out)
		if m == nil {
			t.Errorf("report lacks a row for %s:\n%s", name, out)
			continue
		}
		if auc, _ := strconv.ParseFloat(m[1], 64); auc < want[0] || auc > want[1] {
			t.Errorf("%s: ROC-AUC %v, want in [%v, %v]", name, auc, want[0], want[1])
		}
	}
	written, err := os.ReadFile(resultsPath)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(written), "<!-- BEGIN darpa -->\n"+out+"<!-- END darpa -->") {
		t.Errorf("results file does not hold the report in its section:\n%s", written)
	}
}

func TestRunErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nowhere.zip")
	tests := []struct {
		name string
		args []string
		want string
	}{
		{name: "missing data names the path", args: []string{"--data", missing}, want: "DARPA data not found at " + missing},
		{name: "zip without the csv", args: []string{"--data", writeZip(t, "other.csv", "a,b,06/01/1998-07:55,-\n")}, want: "holds no darpa_original.csv"},
		{name: "stray argument", args: []string{"extra"}, want: "unexpected arguments"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := run(context.Background(), tt.args, &stdout, &stderr)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

// On the first 500,000 rows of the real stream (1-18 June; 17.4% attacks, most of them the
// smurf flood of 17 June, then ipsweep, nmap, back and pod), the burst detector with its
// defaults scored ROC-AUC 0.9731 with seed 1 when this test was written (0.9776 since the score is the
// Poisson deviance rather than Pearson's term), 0.9731-0.9866 across
// seeds 1-8, and at least 0.9667 with any one knob of --sweep moved; the baselines score 0.5086
// (first-seen: the flood repeats edges) and 0.7120 (per-edge z-score). The bound of 0.95 leaves
// room for a change of hash or of tie order and still sits far above both baselines.
func TestDARPASlice(t *testing.T) {
	const (
		rows        = 500_000
		wantAttacks = 86_979
		minBurstAUC = 0.95
		maxFirstAUC = 0.6
	)
	path, err := dataPath()
	path = bencheval.NeedDataset(t, path, err)
	s, err := loadZip(path, rows)
	if err != nil {
		t.Fatal(err)
	}
	if s.len() != rows || s.attacks != wantAttacks {
		t.Fatalf("read %d rows with %d attacks, want %d with %d: is this the MIDAS DARPA file?", s.len(), s.attacks, rows, wantAttacks)
	}
	rs, err := evaluate(context.Background(), s, methods(1))
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]result{}
	for _, r := range rs {
		byName[r.name] = r
		t.Logf("%-22s ROC-AUC %.4f  AP %.4f  %.0f ns/edge", r.name, r.auc, r.ap, r.nsPerEdge)
	}
	burstAUC, firstAUC := byName["burst (meshguard)"].auc, byName["first-seen edge"].auc
	if burstAUC < minBurstAUC {
		t.Errorf("burst ROC-AUC %.4f on the first %d rows, want >= %.2f", burstAUC, rows, minBurstAUC)
	}
	if firstAUC > maxFirstAUC {
		t.Errorf("first-seen ROC-AUC %.4f, want <= %.2f: labels or ordering changed?", firstAUC, maxFirstAUC)
	}
	// The detector must not lose to a trivial baseline.
	for _, r := range rs {
		if r.name != "burst (meshguard)" && r.auc >= burstAUC {
			t.Errorf("baseline %s ROC-AUC %.4f, at or above the burst detector's %.4f", r.name, r.auc, burstAUC)
		}
	}
}
