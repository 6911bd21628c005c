package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/meshguard/meshguard/flowmodel/rate"
)

// A Variant is a seasonal configuration the sensitivity check runs, named by the knob it
// moves from the defaults.
type Variant struct {
	Name string
	Cfg  rate.SeasonalConfig
}

// Variants move one knob of rate.SeasonalConfig at a time, to about half and twice its
// default (or the other setting of a switch).
var Variants = []Variant{
	{"defaults", rate.SeasonalConfig{}},
	{"MinRate 10", rate.SeasonalConfig{MinRate: 10}},
	{"MinRate 100", rate.SeasonalConfig{MinRate: 100}},
	{"MinSpread 0.05", rate.SeasonalConfig{MinSpread: 0.05}},
	{"MinSpread 0.2", rate.SeasonalConfig{MinSpread: 0.2}},
	{"Allowance 0.5", rate.SeasonalConfig{Allowance: 0.5}},
	{"Allowance 1.5", rate.SeasonalConfig{Allowance: 1.5}},
	{"Threshold 4", rate.SeasonalConfig{Threshold: 4}},
	{"Threshold 8", rate.SeasonalConfig{Threshold: 8}},
	{"Clip 1.5", rate.SeasonalConfig{Clip: 1.5}},
	{"Clip 3", rate.SeasonalConfig{Clip: 3}},
	{"LevelHalfLife 12h", rate.SeasonalConfig{LevelHalfLife: 12 * time.Hour}},
	{"LevelHalfLife 7d", rate.SeasonalConfig{LevelHalfLife: 7 * 24 * time.Hour}},
	{"ProfileHalfLife 3d", rate.SeasonalConfig{ProfileHalfLife: 3 * 24 * time.Hour}},
	{"ProfileHalfLife 14d", rate.SeasonalConfig{ProfileHalfLife: 14 * 24 * time.Hour}},
	{"WarmupDays 1", rate.SeasonalConfig{WarmupDays: 1}},
	{"WarmupDays 3", rate.SeasonalConfig{WarmupDays: 3}},
	{"Probation 12h", rate.SeasonalConfig{Probation: 12 * time.Hour}},
	{"Probation 48h", rate.SeasonalConfig{Probation: 48 * time.Hour}},
	{"SameWeekends", rate.SeasonalConfig{SameWeekends: true}},
	{"seasonal detector off", rate.SeasonalConfig{}},
}

// seasonalOff is the index in Variants of the run without the seasonal detector.
const seasonalOff = "seasonal detector off"

// grid is the configurations the leave-one-series-out check chooses from: the two knobs
// that set how much evidence an alarm needs.
func grid() []Variant {
	var g []Variant
	for _, h := range []float64{4, 6, 8} {
		for _, k := range []float64{0.5, 1, 1.5} {
			g = append(g, Variant{fmt.Sprintf("Threshold %g, Allowance %g", h, k), rate.SeasonalConfig{Threshold: h, Allowance: k}})
		}
	}
	return g
}

// evaluateWith runs meshguard with the seasonal configuration v on every series.
func evaluateWith(series []*Series, v Variant) ([]Result, error) {
	old, oldOff := seasonalBase, seasonalDisabled
	defer func() { seasonalBase, seasonalDisabled = old, oldOff }()
	seasonalBase, seasonalDisabled = v.Cfg, v.Name == seasonalOff
	var out []Result
	for _, s := range series {
		m, err := Meshguard(s)
		if err != nil {
			return nil, err
		}
		out = append(out, Measure(s, m))
	}
	return out, nil
}

// meets reports whether results meet issue 11's goal on every series: every window
// alerted, at most 2 false episodes per series-day.
func meets(rs []Result) bool {
	for _, r := range rs {
		if r.Alerted < r.Windows || r.FalsePerDay() > 2 {
			return false
		}
	}
	return true
}

func total(rs []Result) Result {
	var rows []Row
	for _, r := range rs {
		rows = append(rows, Row{Meshguard: r})
	}
	return Total(rows, mesh)
}

// Sensitivity renders the sensitivity of the result to each knob, and the
// leave-one-series-out check.
func Sensitivity(series []*Series) (string, error) {
	var b strings.Builder
	b.WriteString(`
Sensitivity of meshguard's result to each knob of the seasonal detector (one knob at a time,
the others at their defaults; the rate CUSUM stays at its defaults):

| seasonal configuration | windows alerted | false episodes / series-day (worst series) | NAB standard | every window, ≤ 2 a day on each series |
| :-- | --- | --- | --- | --- |
`)
	for _, v := range Variants {
		rs, err := evaluateWith(series, v)
		if err != nil {
			return "", err
		}
		t := total(rs)
		worst := 0.0
		for _, r := range rs {
			worst = max(worst, r.FalsePerDay())
		}
		fmt.Fprintf(&b, "| %s | %d / %d | %.2f (%.2f) | %.1f | %s |\n", v.Name, t.Alerted, t.Windows, t.FalsePerDay(), worst, t.Score, yes(meets(rs)))
	}
	g := grid()
	res := make([][]Result, len(g))
	for i, v := range g {
		var err error
		if res[i], err = evaluateWith(series, v); err != nil {
			return "", err
		}
	}
	b.WriteString(`
Leave one series out: for each series, the configuration of the grid Threshold ∈ {4, 6, 8} ×
Allowance ∈ {0.5, 1, 1.5} that scores best on the five other series among those that meet the
goal on all five, then its result on the series left out:

| series left out | chosen on the other five | windows alerted | false episodes / series-day | NAB standard | defaults' NAB standard |
| :-- | :-- | --- | --- | --- | --- |
`)
	def, err := evaluateWith(series, Variants[0])
	if err != nil {
		return "", err
	}
	var held []Result
	for j, s := range series {
		best, bestScore, bestMeets := -1, 0.0, false
		for i := range g {
			var others []Result
			for k, r := range res[i] {
				if k != j {
					others = append(others, r)
				}
			}
			sc, ok := total(others).Score, meets(others)
			if best < 0 || (ok && !bestMeets) || (ok == bestMeets && sc > bestScore) {
				best, bestScore, bestMeets = i, sc, ok
			}
		}
		r := res[best][j]
		held = append(held, r)
		fmt.Fprintf(&b, "| %s | %s | %d / %d | %.2f | %.1f | %.1f |\n", s.Name, g[best].Name, r.Alerted, r.Windows, r.FalsePerDay(), r.Score, def[j].Score)
	}
	t := total(held)
	fmt.Fprintf(&b, "| **all six, each left out** | | %d / %d | %.2f | %.1f | %.1f |\n", t.Alerted, t.Windows, t.FalsePerDay(), t.Score, total(def).Score)
	return b.String(), nil
}

func yes(ok bool) string {
	if ok {
		return "yes"
	}
	return "no"
}
