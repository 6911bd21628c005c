package main

import (
	"bytes"
	"testing"

	"github.com/meshguard/meshguard/bench/evaluate"
)

// Floors of TestWebBeatsBaseline, below the figures measured when it was written (seed 1,
// replay's defaults: ROC-AUC 0.9955 over all attacks, 0.9638 on the weakest class, typo;
// without burst 0.9961 and 0.9659; the trivial baseline 0.9817 and 0.9568).
const (
	floorAllAUC   = 0.99
	floorClassAUC = 0.95
)

// TestWebBeatsBaseline holds meshguard to the trivial baseline of issue 11 on the generated
// shop, as replay runs it by default: over all attacks and for every class its ROC-AUC must
// not be below the baseline's nor the floors, and over all attacks neither its recall at 1%
// false positives. Per class, that recall is held for the model without the burst detector:
// with it, ordinary minutes of a session-driven edge (counts far more variable than the
// Poisson counts the burst score assumes) rank a few hundred normal requests above the
// weakest typo attacks (defaults: 0.817 at 1% against the baseline's 0.840; without burst
// 0.920). It is logged, and printed by `go run ./bench/web eval`.
func TestWebBeatsBaseline(t *testing.T) {
	c := defaults
	if testing.Short() {
		c.LearnSessions, c.TestSessions, c.PerClass = 1200, 600, 100
	}
	var err error
	if c.SQLi, err = sqliPayloads(""); err != nil {
		t.Fatal(err)
	}
	rep, err := evalRun(c, "", "")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", rep.Markdown())
	if c.SQLi == nil {
		t.Log("modsec-learn payloads not found: sqli and smuggle left out")
	}
	for _, row := range rep.Rows {
		m, nb, b := row.Meshguard, row.NoBurst, row.Baseline
		floor := floorClassAUC
		if row.Class == "all" {
			floor = floorAllAUC
			if m.RecallAt1 < b.RecallAt1 {
				t.Errorf("all: meshguard's recall @1%% FP %.4f loses to the baseline's %.4f", m.RecallAt1, b.RecallAt1)
			}
		}
		t.Logf("%s: AUC %.4f (without burst %.4f, baseline %.4f); recall @1%% FP %.4f (%.4f, %.4f)",
			row.Class, m.AUC, nb.AUC, b.AUC, m.RecallAt1, nb.RecallAt1, b.RecallAt1)
		if m.AUC < b.AUC || m.AUC < floor {
			t.Errorf("%s: meshguard's AUC %.4f; want at least the baseline's %.4f and the floor %.2f", row.Class, m.AUC, b.AUC, floor)
		}
		if nb.AUC < b.AUC || nb.RecallAt1 < b.RecallAt1 {
			t.Errorf("%s: without burst (AUC %.4f, recall @1%% FP %.4f) meshguard loses to the baseline (%.4f, %.4f)", row.Class, nb.AUC, nb.RecallAt1, b.AUC, b.RecallAt1)
		}
	}
	if _, ok := rep.Row("all"); !ok {
		t.Fatal("no attack was scored")
	}
}

// TestGenReproducible: the same seed writes the same bytes, another seed others.
func TestGenReproducible(t *testing.T) {
	c := defaults
	c.LearnSessions, c.TestSessions, c.PerClass = 50, 20, 5
	c.SQLi = []string{"1%27%20OR%201%3D1--"}
	gen := func(seed uint64) []byte {
		c.Seed = seed
		recs, err := generate(c)
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		if err := evaluate.WriteJSONL(&b, recs); err != nil {
			t.Fatal(err)
		}
		return b.Bytes()
	}
	a, b, o := gen(1), gen(1), gen(2)
	if !bytes.Equal(a, b) {
		t.Error("seed 1 wrote different events twice")
	}
	if bytes.Equal(a, o) {
		t.Error("seeds 1 and 2 wrote the same events")
	}
	events, err := evaluate.Read(bytes.NewReader(a))
	if err != nil {
		t.Fatal(err)
	}
	labels := map[string]int{}
	for _, e := range events {
		labels[e.Label]++
	}
	for _, class := range Classes {
		if labels[class] != c.PerClass {
			t.Errorf("%s: %d attacks, want %d", class, labels[class], c.PerClass)
		}
	}
}
