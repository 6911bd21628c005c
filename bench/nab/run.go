package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/meshguard/meshguard/bench/evaluate"
	"github.com/meshguard/meshguard/flowmodel/episode"
)

// Row is both detectors' results on one series.
type Row struct {
	Series             *Series
	Meshguard, Trivial Result
	NoRebaseline       Result // meshguard without re-baselining
	Model              Result // the whole model (Decide) on flow events, see MeshguardModel
	ModelStep          Result // the same, the rate CUSUM's interval the series' step
	MeshNote, TrivNote string
	ModelNote          string
}

// Evaluate runs meshguard and the baseline on every series.
func Evaluate(series []*Series) ([]Row, error) {
	var rows []Row
	for _, s := range series {
		m, err := Meshguard(s)
		if err != nil {
			return nil, err
		}
		b, err := Threshold(s, baselineBudget, episode.DefaultQuietGap)
		if err != nil {
			return nil, err
		}
		n, err := MeshguardNoRebaseline(s)
		if err != nil {
			return nil, err
		}
		rows = append(rows, Row{Series: s, Meshguard: Measure(s, m), Trivial: Measure(s, b), NoRebaseline: Measure(s, n), MeshNote: m.Note, TrivNote: b.Note})
	}
	return rows, nil
}

// baselineBudget is the episodes a day the baseline's threshold may raise on the
// probationary period: meshguard's default alert budget.
const baselineBudget = 1

// Total sums results over series; its Score is NAB's corpus normalisation (of the sums).
func Total(rows []Row, pick func(Row) Result) Result {
	var t Result
	for _, r := range rows {
		x := pick(r)
		t.Windows += x.Windows
		t.Alerted += x.Alerted
		t.Episodes += x.Episodes
		t.False += x.False
		t.Days += x.Days
		t.FalseAlarmRows += x.FalseAlarmRows
		t.Raw += x.Raw
		t.Null += x.Null
		t.Best += x.Best
	}
	t.Score = Normalised(t.Raw, t.Null, t.Best)
	return t
}

func mesh(r Row) Result    { return r.Meshguard }
func trivial(r Row) Result { return r.Trivial }

func run(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("nab", flag.ContinueOnError)
	fs.SetOutput(stderr)
	data := fs.String("data", "", "folder of the NAB files (default: nab/ of the shared datasets)")
	res := evaluate.NewResultsFlags(fs, "nab")
	if err := fs.Parse(args); err != nil {
		return err
	}
	dir := *data
	if dir == "" {
		var err error
		if dir, err = evaluate.DatasetDir("nab"); err != nil {
			return err
		}
	}
	series, err := Load(dir)
	if err != nil {
		return err
	}
	rows, err := Evaluate(series)
	if err != nil {
		return err
	}
	if err := EvaluateModel(rows, DefaultModelEvents, true); err != nil {
		return err
	}
	sens, err := Sensitivity(series)
	if err != nil {
		return err
	}
	return res.Publish(stdout, stderr, Report(rows)+ModelReport(rows)+sens)
}

// Report renders the results section.
func Report(rows []Row) string {
	var b strings.Builder
	b.WriteString(`## NAB: rate re-baselining and alert episodes (Numenta Anomaly Benchmark)

Command: ` + "`go run ./bench/nab --write`" + ` (dataset ` + "`nab/`" + ` of the shared datasets; about half a minute, most of it the model runs).

Each series is one service's requests per interval: a Twitter volume row (5 minutes) or a
New York taxi row (30 minutes, passengers) is that many requests in its interval. meshguard
alarms when either of its rate detectors does: the rate CUSUM (` + "`rate.Detector`" + `, rises against a
level that follows the daily cycle, interval the series' step) or the seasonal detector
(` + "`rate.Seasonal`" + `, rises and drops against an hour-of-day profile with weekends apart, hourly buckets),
both with their package defaults. They learn throughout; alarms count after NAB's
probationary period, the first 15% of the rows capped at 750 as NAB's scorer has it (2.6 days
of Twitter, 15.6 of taxi), which is also where the baseline learns. Labels are NAB's windows (` + "`windows.json`" + `). Alarms are
grouped into episodes by ` + "`flowmodel/episode`" + ` (quiet gap 1 hour); a false episode lies entirely
outside every window. NAB score: the standard profile (A_TP = 1, A_FP = 0.11, A_FN = 1) with
NAB's scaled-sigmoid position weighting, normalised per series between the null detector (0)
and a perfect one (100), computed as NAB's sweeper does for a detector whose scores are 0 or 1;
the total normalises the sums, as NAB does over its corpus. The detections NAB scores are the
openings of episodes (what an operator is alerted to), for both detectors: scored per alarmed
interval, a 7-hour episode would count as 84 false positives.

Trivial baseline (fixed rate threshold): an alarm for a row above mean + k·sd of the
probationary rows, k the smallest of 1, 1.5, … 20 with which the probationary rows themselves
would have raised at most one episode a day (meshguard's default alert budget).

`)
	fmt.Fprintln(&b, "| series | windows alerted (meshguard) | false episodes / series-day (meshguard) | episodes (false) | NAB standard (meshguard) | windows alerted (threshold) | false episodes / series-day (threshold) | episodes (false) | NAB standard (threshold) | threshold |")
	fmt.Fprintln(&b, "| :-- | --- | --- | --- | --- | --- | --- | --- | --- | :-- |")
	line := func(name string, m, t Result, note string) {
		fmt.Fprintf(&b, "| %s | %d / %d | %.2f | %d (%d) | %.1f | %d / %d | %.2f | %d (%d) | %.1f | %s |\n",
			name, m.Alerted, m.Windows, m.FalsePerDay(), m.Episodes, m.False, m.Score,
			t.Alerted, t.Windows, t.FalsePerDay(), t.Episodes, t.False, t.Score, note)
	}
	for _, r := range rows {
		line(r.Series.Name, r.Meshguard, r.Trivial, r.TrivNote)
	}
	line("**all six**", Total(rows, mesh), Total(rows, trivial), "")
	b.WriteString(`
Every window is alerted and no series has more than 2 false episodes a day (issue 11's goal;
` + "`go test ./bench/nab`" + ` fails otherwise, or when the score is not above the baseline's). The
seasonal detector finds what the CUSUM cannot: it alarms, as drops and as rises against the
hour of day, in all five nyc_taxi windows (the marathon night, Thanksgiving, Christmas, New
Year's Eve, the January blizzard), where the CUSUM alarms in one, and in AMZN's third window
(1.7 times the 33 hours before it), where the CUSUM does not.
Its drops count only while an hour is expected to hold at least 20 requests (its MinRate), so
a sparse service's silence raises nothing. The defaults were set by reasoning (an hour a tenth
off its usual is no evidence; an alarm needs about six spreads of evidence beyond one spread
an hour; two days of history per slot), but not blind to these series: the weekend profile
and MinSpread 0.1 (from 0.05) and LevelHalfLife 3 days (from 12 hours) were adopted after a
first run here, the latter two to fix false alarms in the unit tests' synthetic week. The
sensitivity table and the leave-one-series-out check below show the goal holds with every
knob at about half or twice its default, and that choosing the two evidence knobs on five
series and testing on the sixth still meets it, scoring a little below the defaults.
`)
	var longest time.Duration
	for _, r := range rows {
		longest = max(longest, r.NoRebaseline.Longest)
	}
	b.WriteString(`
Alarmed intervals outside windows per series-day (5-minute intervals for Twitter, 30-minute
for taxi), and the longest false episode, with re-baselining through probation (meshguard's
default: a shift that alarms for 24 hours becomes the baseline) and without it
(` + "`RequireApproval`" + `: every shift alarms until accepted). The seasonal detector holds an alarm while
the level stays off its profile (those hours teach it nothing), so a lasting shift alarms as
one episode for up to the probation, 24 hours, then is the new level; without re-baselining
the longest false episode lasts ` + evaluate.ShortDuration(longest) + `. A long alarm costs the operator one episode:
what NAB scores here is the opening of an episode, and the episodes per day are in the table
above.

| series | alarmed intervals outside windows / day | longest false episode | without re-baselining: alarmed intervals / day | longest false episode |
| :-- | --- | --- | --- | --- |
`)
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %.1f | %s | %.1f | %s |\n", r.Series.Name,
			float64(r.Meshguard.FalseAlarmRows)/r.Meshguard.Days, evaluate.ShortDuration(r.Meshguard.Longest),
			float64(r.NoRebaseline.FalseAlarmRows)/r.NoRebaseline.Days, evaluate.ShortDuration(r.NoRebaseline.Longest))
	}
	b.WriteString(`
NAB's published scoreboard (README of numenta/NAB, v1.1, standard profile) scores detectors
over its whole corpus of 58 files, not these six, so it is a reference, not a comparison:
Numenta HTM 70.5, CAD OSE 69.9, Random Cut Forest 51.7, Twitter ADVec 47.1, Windowed
Gaussian 39.6 (quoted from memory; one secondary source agrees, another quotes other figures
for HTM and ADVec, so check the NAB README before relying on them). Null is 0 and perfect 100
by construction.
`)
	return b.String()
}
