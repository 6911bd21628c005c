package main

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"github.com/meshguard/meshguard/bench/evaluate"
	"github.com/meshguard/meshguard/bench/roc"
	"github.com/meshguard/meshguard/flowmodel"
)

// modelConfig is the model `meshguard replay` runs with its defaults: a day's learn window
// from the service's first request, then monitor; event time; host names trusted.
// disabled turns detectors off, as replay's --disable does.
func modelConfig(disabled flowmodel.Reasons) flowmodel.Config {
	return flowmodel.Config{EventClock: true, TrustHostNames: true, Disabled: disabled}
}

// Run decides the events in order with the model as `meshguard replay` does (Decide, then
// Observe) and returns the verdicts.
func Run(events []evaluate.Event, disabled flowmodel.Reasons) ([]flowmodel.Verdict, error) {
	m, err := flowmodel.New(modelConfig(disabled))
	if err != nil {
		return nil, err
	}
	out := make([]flowmodel.Verdict, len(events))
	for i := range events {
		f := events[i].Flow
		out[i] = m.Decide(&f)
		m.Observe(&f)
	}
	return out, nil
}

// Figures are one scorer's results on one class of attacks against every scored normal
// request.
type Figures struct {
	Positives int
	AUC       float64
	// RecallAt1 is the best recall at a threshold that flags at most 1% of normal requests.
	RecallAt1 float64
	// AlertRecall is the share of the attacks the scorer's own alerts flag (meshguard's
	// verdicts; the baseline alerts on a tuple never seen).
	AlertRecall float64
}

// ClassRow is one class of attacks.
type ClassRow struct {
	Class string
	// Meshguard is the model as replay runs it by default; NoBurst the same with the burst
	// detector off (replay --disable burst); Baseline the trivial baseline.
	Meshguard, NoBurst, Baseline Figures
	// Reasons counts the reasons of the alerts on the class (without burst).
	Reasons map[string]int
}

// Report is the evaluation's result.
type Report struct {
	Events, Learning, Negatives int
	// FalseAlerts (defaults, without burst) and BaselineAlerts count the normal test
	// requests each flags.
	FalseAlerts    [2]int
	BaselineAlerts int
	// FalseReasons counts the reasons of the false alerts without burst.
	FalseReasons map[string]int
	Rows         []ClassRow // one per class present, then "all"
	SQLiSkipped  bool
	Seed         uint64
	Sessions     [2]int
}

// Row returns the row of class ("all" for every attack).
func (r *Report) Row(class string) (ClassRow, bool) {
	for _, row := range r.Rows {
		if row.Class == class {
			return row, true
		}
	}
	return ClassRow{}, false
}

// scored is one event's scores: meshguard's two runs and the baseline's.
type scored struct {
	score   [3]float64
	alert   [3]bool
	reasons []string
}

// Measure compares the verdicts of the two runs (defaults, without burst; one per event) and
// the baseline's scores with the labels. Events decided in learn mode teach the baseline
// too, and are not scored.
func Measure(events []evaluate.Event, verdicts, noBurst []flowmodel.Verdict) (*Report, error) {
	if len(events) != len(verdicts) || len(events) != len(noBurst) {
		return nil, fmt.Errorf("%d events, %d and %d verdicts", len(events), len(verdicts), len(noBurst))
	}
	rep := &Report{Events: len(events), FalseReasons: map[string]int{}}
	base := NewBaseline()
	var neg []scored
	pos := map[string][]scored{}
	for i := range events {
		e, v, nb := &events[i], verdicts[i], noBurst[i]
		if v.Mode == flowmodel.ModeLearn || nb.Mode == flowmodel.ModeLearn {
			rep.Learning++
			if e.Label != "" {
				return nil, fmt.Errorf("line %d: an attack decided in learn mode: the test part starts too early", e.Line)
			}
			base.Learn(&e.Flow)
			continue
		}
		bs := base.Score(&e.Flow)
		s := scored{score: [3]float64{v.Score, nb.Score, bs}, alert: [3]bool{v.Action != flowmodel.Allow, nb.Action != flowmodel.Allow, bs == 1}}
		if s.alert[1] {
			s.reasons = nb.Reasons.Strings()
		}
		if e.Label == "" {
			neg = append(neg, s)
			for k := range 2 {
				if s.alert[k] {
					rep.FalseAlerts[k]++
				}
			}
			for _, r := range s.reasons {
				rep.FalseReasons[r]++
			}
			if s.alert[2] {
				rep.BaselineAlerts++
			}
			continue
		}
		pos[e.Label] = append(pos[e.Label], s)
		pos["all"] = append(pos["all"], s)
	}
	rep.Negatives = len(neg)
	if len(neg) == 0 {
		return nil, fmt.Errorf("no normal request was scored")
	}
	figures := func(ps []scored, k int) (Figures, error) {
		samples := make([]roc.Sample, 0, len(neg)+len(ps))
		for _, s := range neg {
			samples = append(samples, roc.Sample{Score: s.score[k]})
		}
		alerted := 0
		for _, s := range ps {
			samples = append(samples, roc.Sample{Score: s.score[k], Positive: true})
			if s.alert[k] {
				alerted++
			}
		}
		c, err := roc.New(samples)
		if err != nil {
			return Figures{}, err
		}
		rec, _, _ := c.RecallAtFalsePositives(0.01 * float64(len(neg)))
		return Figures{Positives: len(ps), AUC: c.AUC(), RecallAt1: rec, AlertRecall: float64(alerted) / float64(len(ps))}, nil
	}
	for _, class := range append(slices.Clone(Classes), "all") {
		ps := pos[class]
		if len(ps) == 0 {
			continue
		}
		row := ClassRow{Class: class, Reasons: map[string]int{}}
		for k, out := range []*Figures{&row.Meshguard, &row.NoBurst, &row.Baseline} {
			var err error
			if *out, err = figures(ps, k); err != nil {
				return nil, err
			}
		}
		for _, s := range ps {
			for _, r := range s.reasons {
				row.Reasons[r]++
			}
		}
		rep.Rows = append(rep.Rows, row)
	}
	return rep, nil
}

// topReasons lists the most frequent reasons, most frequent first.
func topReasons(m map[string]int, n int) string {
	type kv struct {
		k string
		v int
	}
	var kvs []kv
	for k, v := range m {
		kvs = append(kvs, kv{k, v})
	}
	slices.SortFunc(kvs, func(a, b kv) int { return cmp.Or(cmp.Compare(b.v, a.v), cmp.Compare(a.k, b.k)) })
	var out []string
	for i, e := range kvs {
		if i == n {
			break
		}
		out = append(out, fmt.Sprintf("%s %d", e.k, e.v))
	}
	if len(out) == 0 {
		return "-"
	}
	return strings.Join(out, ", ")
}

// Markdown renders the report as the web section of bench/RESULTS.md.
func (r *Report) Markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "## web: one shop application's requests, normal and attacks (synthetic)\n\n")
	fmt.Fprintf(&b, "Command: `go run ./bench/web eval --write` (seed %d; the events: `go run ./bench/web gen --out web.jsonl`, "+
		"which `meshguard replay web.jsonl` decides with its defaults as `eval` does; `eval --verdicts` measures its output).\n\n", r.Seed)
	fmt.Fprintf(&b, "A shop of 23 endpoints generated in code (`bench/web/app.go`): GET queries, form-encoded POSTs "+
		"(30%% of sessions in Latin-1, the rest UTF-8), JSON calls, one multipart upload form, a session cookie per session, "+
		"names and addresses with accents, e-mails, passwords, card numbers, free-text reviews, search words, enums. "+
		"%d sessions on the first day are learned (the model's default 24h window, %d events decided in learn mode); "+
		"%d sessions in the 12 hours after give %d normal test requests, and each attack class is a normal test "+
		"request with one thing changed. The events go through the flow-event JSONL and `flowmodel.Model` as `meshguard replay` "+
		"builds it (EventClock, TrustHostNames, defaults).\n\n",
		r.Sessions[0], r.Learning, r.Sessions[1], r.Negatives)
	fmt.Fprintf(&b, "- **meshguard**: the verdict's score, as `meshguard replay` prints it; its own alerts flag %d of %d normal "+
		"test requests (%.2f%%).\n", r.FalseAlerts[0], r.Negatives, 100*float64(r.FalseAlerts[0])/float64(r.Negatives))
	fmt.Fprintf(&b, "- **without burst**: the same with the burst detector off (`meshguard replay --disable burst`); its alerts "+
		"flag %d normal test requests (%.2f%%): %s.\n", r.FalseAlerts[1], 100*float64(r.FalseAlerts[1])/float64(r.Negatives),
		topReasons(r.FalseReasons, 4))
	fmt.Fprintf(&b, "- **baseline** (issue 11's trivial one): method + path ({id} for numbers) + query and body keys with the "+
		"character classes of each value (lower, upper, digit, space, other ASCII symbol, other byte) + body size bucket; "+
		"a request scores 1/(1+n) for a tuple seen n times in learning, and \"alerts\" on a tuple never seen: %d normal "+
		"test requests (%.2f%%).\n\n", r.BaselineAlerts, 100*float64(r.BaselineAlerts)/float64(r.Negatives))
	fmt.Fprintf(&b, "| class | attacks | meshguard AUC | recall @1%% FP | alerts: recall | without burst: AUC | recall @1%% FP | alerts: recall | baseline AUC | recall @1%% FP | alerts: recall | alert reasons (without burst) |\n")
	fmt.Fprintf(&b, "| :-- | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: | :-- |\n")
	for _, row := range r.Rows {
		name := row.Class
		if name == "all" {
			name = "**all**"
		}
		fmt.Fprintf(&b, "| %s | %d ", name, row.Meshguard.Positives)
		for _, f := range []Figures{row.Meshguard, row.NoBurst, row.Baseline} {
			fmt.Fprintf(&b, "| %.4f | %.4f | %.4f ", f.AUC, f.RecallAt1, f.AlertRecall)
		}
		fmt.Fprintf(&b, "| %s |\n", topReasons(row.Reasons, 3))
	}
	if r.SQLiSkipped {
		b.WriteString("\nThe sqli and smuggle classes were left out: the modsec-learn payloads were not found.\n")
	}
	b.WriteString("\nClasses: sqli, a value replaced by one of modsec-learn's sqlmap or hand-written injections; xss, script in a " +
		"value; traversal, `../` and kin in a value (mostly those holding file names or paths) or in the path; cmdi, a shell " +
		"command appended to a value; crlf, CR/LF and a header after a value; overflow, a value of 300-4300 bytes; tamper, " +
		"letters or an out-of-range number in a numeric value, a changed enum; probe, a backup or configuration file " +
		"(`.bak`, `~`, `/WEB-INF/web.xml`, `.git/config`); typo, an e-mail without its @ or with two, a letter for a digit; " +
		"smuggle, an injection in a body whose content type names another format (form fields as text/plain or JSON, " +
		"JSON as a form); inject, SSI, LDAP, XPath, format-string, template, JNDI and XXE payloads in a value.\n\n")
	b.WriteString("Replay reproduces it: `meshguard replay web.jsonl` and `meshguard replay --disable burst web.jsonl` on the " +
		"generated file, measured with `eval --events web.jsonl --verdicts FILE`, give the two meshguard columns to the last digit.\n\n")
	b.WriteString("Findings outside the parameter models. (1) Fixed: the burst detector held every request of the shop's " +
		"one steady edge (about 30 a minute) at 0.86-0.99, because the edge's first tick was partial, its second scored high " +
		"against that low mean and was filtered (MIDAS-F merges the mean, not the count), and the mean never caught up; the " +
		"alert threshold calibrated above it and the score ranked nothing (ROC-AUC 0.69). A bucket now scores from its third " +
		"tick and an anomalous tick merges up to twice the mean (`flowmodel/burst`, TestSteadyEdgeStartingMidTick). " +
		"(2) Open: the burst score assumes Poisson counts, and a session-driven edge varies several times more, so with " +
		"burst on a few hundred ordinary requests outrank the weakest typo attacks (recall at 1% false positives 0.82 " +
		"against the baseline's 0.84; 0.92 without burst). (3) Numbered static files (`/images/p/48.jpg`) are not " +
		"templated as `{id}.jpg` (`invoice_123456.pdf` is: numbers of two digits stay literal, like API versions), so each " +
		"image is a shape of its own: they are the top-scoring normal requests (new_shape and rare_shape).\n\n")
	b.WriteString("What it shows, and what not. It is synthetic: the application, its value populations and the attacks are " +
		"written here, from public knowledge of how shops and attacks look, and the same authors wrote the detector. It shows " +
		"that the pipeline (flow events, body parsing of form, JSON and multipart, Latin-1 and UTF-8 encodings, scoring per " +
		"event) works end to end, which attack classes the models see, and what the other detectors do to the verdict's " +
		"score, next to the trivial baseline on the same events. It does not predict the held-out web set's figure: real " +
		"populations are richer (values the learning never saw, endpoints rarely used), and the baseline is strong here " +
		"(0.98) because the generator's normal traffic is regular; the parameter models were changed on principle, not " +
		"tuned to this table (their one tuned constant, the length tail, was set on bench/modsec). Tamper and typo attacks " +
		"that keep a value's characters and kind (a quantity of 5 where 4 was the most, a country changed to another learned " +
		"one, `SKU-O1117` for `SKU-01117`, `a@@b.com`) are invisible to any value model and stay so; most missed typos are those.\n\n")
	return b.String()
}
