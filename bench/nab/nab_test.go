package main

import (
	"math"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshguard/meshguard/bench/evaluate"
)

// synthetic returns a series of n rows a minute apart with windows on [from, to] rows.
func synthetic(n int, windows ...[2]int) *Series {
	s := &Series{Name: "synthetic", Step: time.Minute}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range n {
		s.Times = append(s.Times, t0.Add(time.Duration(i)*time.Minute))
		s.Values = append(s.Values, 1)
	}
	for _, w := range windows {
		s.Windows = append(s.Windows, Window{From: w[0], To: w[1], FromTime: s.Times[w[0]], ToTime: s.Times[w[1]]})
	}
	return s
}

// TestNABScore checks the scorer against values NAB's documentation gives: the scaled
// sigmoid is 0.98661 at a window's left edge (scaled to A_TP = 1), 0 past its right edge and
// −1 three window lengths after it; a missed window costs A_FN; a false positive before
// any window costs A_FP; the probationary rows are not scored.
func TestNABScore(t *testing.T) {
	if got := scaledSigmoid(-1); math.Abs(got-0.98661) > 1e-5 {
		t.Errorf("scaledSigmoid(-1) = %.5f, want 0.98661", got)
	}
	if got := scaledSigmoid(-0.5); math.Abs(got-0.84828) > 1e-5 {
		t.Errorf("scaledSigmoid(-0.5) = %.5f, want 0.84828", got)
	}
	// 1000 rows: probation 150. Windows at 300..399 and 600..699.
	s := synthetic(1000, [2]int{300, 399}, [2]int{600, 699})
	at := func(rows ...int) []bool {
		d := make([]bool, 1000)
		for _, r := range rows {
			d[r] = true
		}
		return d
	}
	for _, tc := range []struct {
		name string
		rows []int
		want float64 // raw
	}{
		{"null", nil, -2},
		{"perfect", []int{300, 600}, 2},
		{"each window at its left edge, and again later", []int{300, 350, 600, 650}, 2},
		{"one window missed", []int{300}, 0},
		{"false positive before any window", []int{200, 300, 600}, 2 - 0.11},
		{"false positive in probation is not scored", []int{100, 300, 600}, 2},
		{"false positive far past a window", []int{300, 600, 999}, 2 - 0.11},
		{"detection halfway in", []int{350, 600}, 1 + scaledSigmoid(-0.5)/scaledSigmoid(-1)},
		{"false positive right after a window costs little", []int{300, 400, 600}, 2 + 0.11*scaledSigmoid(1.0/99)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw, null, perfect := NABScore(s, at(tc.rows...), Standard)
			if math.Abs(raw-tc.want) > 1e-9 || null != -2 || perfect != 2 {
				t.Errorf("raw %.6f (null %g, perfect %g), want %.6f", raw, null, perfect, tc.want)
			}
		})
	}
	if got := Normalised(0, -2, 2); got != 50 {
		t.Errorf("Normalised(0) = %g, want 50", got)
	}
}

func TestProbation(t *testing.T) {
	for n, want := range map[int]int{1000: 150, 4999: 749, 5000: 750, 15902: 750} {
		if got := Probation(n); got != want {
			t.Errorf("Probation(%d) = %d, want %d", n, got, want)
		}
	}
}

// TestEvaluation runs the evaluation on the NAB files: every window alerted, at most 2 false
// episodes per series-day on every series, and meshguard beats the fixed-threshold baseline:
// its NAB standard score over the six series is above the baseline's and its false episodes
// per series-day at most the baseline's.
func TestEvaluation(t *testing.T) {
	dir, err := evaluate.DatasetDir("nab")
	dir = evaluate.NeedDataset(t, filepath.Join(dir, "windows.json"), err)
	series, err := Load(filepath.Dir(dir))
	if err != nil {
		t.Fatal(err)
	}
	rows, err := Evaluate(series)
	if err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + Report(rows))
	for _, r := range rows {
		m := r.Meshguard
		if m.Alerted != m.Windows {
			t.Errorf("%s: %d of %d windows alerted, want all", r.Series.Name, m.Alerted, m.Windows)
		}
		if m.FalsePerDay() > 2 {
			t.Errorf("%s: %.2f false episodes per series-day, want at most 2", r.Series.Name, m.FalsePerDay())
		}
	}
	m, b := Total(rows, mesh), Total(rows, trivial)
	if m.Score <= b.Score {
		t.Errorf("NAB standard score %.1f, below the fixed threshold's %.1f", m.Score, b.Score)
	}
	if m.FalsePerDay() > b.FalsePerDay() {
		t.Errorf("%.2f false episodes per series-day, above the fixed threshold's %.2f", m.FalsePerDay(), b.FalsePerDay())
	}
}

// TestModelEvaluation feeds each NAB series through the whole model (Decide) as flow events
// of one service, learning during NAB's probationary period, and holds the model's verdicts
// to the goal the detectors meet: every window alerted, at most 2 false episodes per
// series-day on every series, and a NAB standard score above the fixed threshold's.
func TestModelEvaluation(t *testing.T) {
	dir, err := evaluate.DatasetDir("nab")
	dir = evaluate.NeedDataset(t, filepath.Join(dir, "windows.json"), err)
	series, err := Load(filepath.Dir(dir))
	if err != nil {
		t.Fatal(err)
	}
	rows, err := Evaluate(series)
	if err != nil {
		t.Fatal(err)
	}
	if err := EvaluateModel(rows, DefaultModelEvents, false); err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + ModelReport(rows))
	for _, r := range rows {
		m := r.Model
		if m.Alerted != m.Windows {
			t.Errorf("%s: %d of %d windows alerted by the model, want all", r.Series.Name, m.Alerted, m.Windows)
		}
		if m.FalsePerDay() > 2 {
			t.Errorf("%s: %.2f false episodes per series-day from the model, want at most 2", r.Series.Name, m.FalsePerDay())
		}
	}
	if m, b := Total(rows, model), Total(rows, trivial); m.Score <= b.Score {
		t.Errorf("model: NAB standard score %.1f, below the fixed threshold's %.1f", m.Score, b.Score)
	}
}
