package main

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/meshguard/meshguard/bench/evaluate"
	"github.com/meshguard/meshguard/flowmodel"
)

// modelConfig is the model under test: every service learns for the suite's learning days
// from its first event (at the start of the suite), then monitors.
// `meshguard replay --learn-window 72h --learn-min-requests 1` runs the same model on the
// generated file.
func modelConfig(c genConfig) flowmodel.Config {
	return flowmodel.Config{
		LearnWindow:      time.Duration(c.LearnDays) * 24 * time.Hour,
		LearnMinRequests: 1,
		AfterLearning:    flowmodel.ModeMonitor,
		// A replay of recorded events: event time paces probation and learning.
		EventClock: true,
	}
}

// evalRun is one evaluation: the events, the verdicts and what they measure.
type evalRun struct {
	events   []evaluate.Event
	verdicts []flowmodel.Verdict
	report   *evaluate.Report
	// baseline is the trivial baseline's report on the same events.
	baseline *evaluate.Report
	// sha256 is the hex SHA-256 of the events file.
	sha256 string
}

// evaluateSuite measures verdicts (when given) or the model's on the events.
func evaluateSuite(events []evaluate.Event, verdicts []flowmodel.Verdict, c genConfig) (*evalRun, error) {
	if verdicts == nil {
		m, err := flowmodel.New(modelConfig(c))
		if err != nil {
			return nil, err
		}
		verdicts = evaluate.Run(events, m)
	}
	rep, err := evaluate.Measure(events, verdicts, evaluate.Options{})
	if err != nil {
		return nil, err
	}
	base, err := baselineReport(events, c)
	if err != nil {
		return nil, err
	}
	return &evalRun{events: events, verdicts: verdicts, report: rep, baseline: base}, nil
}

func runEval(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("eval", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := suiteFlags(fs)
	eventsFile := fs.String("events", "", "evaluate this flow-event file instead of generating one (generated with the same --learn-days)")
	verdictsFile := fs.String("verdicts", "", "measure these verdicts (one JSON line per event, e.g. from meshguard replay) instead of running the model")
	saveVerdicts := fs.String("save-verdicts", "", "write the verdicts measured to this file")
	out := evaluate.NewResultsFlags(fs, "synth")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := cfg.check(); err != nil {
		return err
	}
	var verdicts []flowmodel.Verdict
	if *verdictsFile != "" {
		f, err := os.Open(*verdictsFile)
		if err != nil {
			return err
		}
		verdicts, err = evaluate.ReadVerdicts(f)
		f.Close()
		if err != nil {
			return err
		}
	}
	var data []byte
	if *eventsFile != "" {
		b, err := os.ReadFile(*eventsFile)
		if err != nil {
			return err
		}
		data = b
	} else {
		recs, _, err := generate(*cfg)
		if err != nil {
			return err
		}
		var buf bytes.Buffer
		if err := evaluate.WriteJSONL(&buf, recs); err != nil {
			return err
		}
		data = buf.Bytes()
	}
	// Evaluate the JSONL, not the records: the same bytes gen writes and a replay reads.
	events, err := evaluate.Read(bytes.NewReader(data))
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	res, err := evaluateSuite(events, verdicts, *cfg)
	if err != nil {
		return err
	}
	res.sha256 = fmt.Sprintf("%x", sha256.Sum256(data))
	if *saveVerdicts != "" {
		var buf bytes.Buffer
		if err := evaluate.WriteVerdicts(&buf, res.verdicts); err != nil {
			return err
		}
		if err := os.WriteFile(*saveVerdicts, buf.Bytes(), 0o644); err != nil {
			return err
		}
	}
	return out.Publish(stdout, stderr, section(command(fs), *cfg, res, *verdictsFile != ""))
}

// command is the command line that reproduces the run, without output-only flags.
func command(fs *flag.FlagSet) string {
	parts := []string{"go run ./bench/synth eval"}
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "results", "save-verdicts":
		case "write":
			parts = append(parts, "--write")
		default:
			parts = append(parts, "--"+f.Name+" "+f.Value.String())
		}
	})
	return strings.Join(parts, " ")
}

var kindText = map[string]string{
	kindNewIP:      "beacons every 5-15 min for 6 h to an IP no service uses, no Host",
	kindHostSpoof:  "the service's usual Host and requests, sent every 6-18 min for 4 h to an IP that name does not resolve to",
	kindNewShape:   "`GET /internal/admin/export?limit=100000` with an extra header, every 4-12 min for 2 h, to the service's usual host and IPs",
	kindRateChange: "a destination called about 5 times an hour called 50 times an hour for 3 h, usual requests",
	kindSlowExfil:  "uploads of about 250 kB every 20-40 min for 24 h to the service's usual upload host and IPs (its own uploads are about 50 kB or 10 kB)",
}

// section renders the markdown section of bench/RESULTS.md.
func section(cmd string, c genConfig, res *evalRun, replayed bool) string {
	var b strings.Builder
	rep := res.report
	services := map[string]bool{}
	attackEvents := 0
	for _, e := range res.events {
		services[e.Flow.Service] = true
		if e.Label != "" {
			attackEvents++
		}
	}
	first, last := res.events[0].Flow.Time, res.events[len(res.events)-1].Flow.Time
	b.WriteString("## synth: synthetic egress suite with known ground truth\n\n")
	fmt.Fprintf(&b, "Command: `%s` (seconds). The events are those of `go run ./bench/synth gen --out FILE.jsonl` with the same flags (seed %d), byte for byte: SHA-256 `%s`.\n\n", cmd, c.Seed, res.sha256)
	fmt.Fprintf(&b, "Suite: %d events (%d of them attacks) from %d services over %s to %s (%d days). Every service calls its destinations (in-cluster services and external APIs, some behind several IPs) as a Poisson process with a daily cycle and a weekend factor; 1%% of responses are 503s; billing/invoicer runs a weekly batch on Sunday 02:00 to a host it uses for nothing else. Attacks start after the first %d days, %d instances of each kind, on different services:\n\n",
		len(res.events), attackEvents, len(services), first.Format(time.DateOnly), last.Format(time.DateOnly), c.Days, c.LearnDays, c.Instances)
	for _, k := range rep.Kinds {
		fmt.Fprintf(&b, "- `%s`: %s.\n", k.Kind, kindText[k.Kind])
	}
	model := "`flowmodel.Model` with every detector on (destinations, shapes, rates, bursts, volume) and its default alert budget"
	if replayed {
		model = "verdicts read from a file (`--verdicts`)"
	}
	fmt.Fprintf(&b, "\nModel: %s; each service learns for %d days from its first event (at the start of the suite), then monitors: `flowmodel.Config{LearnWindow: %s, LearnMinRequests: 1}`, which `meshguard replay --learn-window %s --learn-min-requests 1` reproduces. Each attack kind is measured against all scored benign events. False alerts per service-day: benign scored events alerted on, over the scored time summed over services; every alerted event counts, repeats included. Time to detect: from an instance's first event to its first alerted event.\n\n",
		model, c.LearnDays, evaluate.ShortDuration(modelConfig(c).LearnWindow), evaluate.ShortDuration(modelConfig(c).LearnWindow))
	fmt.Fprintf(&b, "Replay: `go run ./cmd/meshguard replay --learn-window %s --learn-min-requests 1 FILE.jsonl > VERDICTS.jsonl`, then `go run ./bench/synth eval --events FILE.jsonl --verdicts VERDICTS.jsonl` measures the replayed verdicts; it prints the table below.\n\n",
		evaluate.ShortDuration(modelConfig(c).LearnWindow))
	fmt.Fprintf(&b, "Trivial baseline, beside each kind: a destination (IP and port, or host) the service did not use while learning scores 1; a learned one scores its requests in the current hour against a fixed threshold, mean + %d·sd of its hourly counts while learning (at least 1), alerting at the threshold; bytes are not looked at.\n\n", baselineK)
	rows := make([]evaluate.Row, 0, 2*len(rep.Kinds))
	for _, k := range rep.Kinds {
		rows = append(rows, evaluate.Row{Name: "`" + k.Kind + "`", Report: rep, Kind: k})
		if bk, ok := res.baseline.Kind(k.Kind); ok {
			rows = append(rows, evaluate.Row{Name: "`" + k.Kind + "`, baseline", Report: res.baseline, Kind: bk})
		}
	}
	b.WriteString(evaluate.Table(rows))
	b.WriteString("\nFalse alerts by destination:\n\n")
	fa := falseAlerts(res)
	if len(fa) == 0 {
		b.WriteString("- none\n")
	}
	for _, f := range fa {
		fmt.Fprintf(&b, "- %s → %s: %d\n", f.service, f.dest, f.n)
	}
	b.WriteString("\n")
	return b.String()
}

type destCount struct {
	service, dest string
	n             int
}

// falseAlerts counts the benign events alerted on, per service and destination, most first.
func falseAlerts(res *evalRun) []destCount {
	counts := map[[2]string]int{}
	for i, e := range res.events {
		v := res.verdicts[i]
		if e.Label != "" || v.Mode == flowmodel.ModeLearn || v.Action == flowmodel.Allow {
			continue
		}
		d := e.Flow.Destination
		name := d.String()
		if d.Host != "" && d.IP.IsValid() {
			name += " (" + d.IP.String() + ")"
		}
		counts[[2]string{e.Flow.Service, name}]++
	}
	out := make([]destCount, 0, len(counts))
	for k, n := range counts {
		out = append(out, destCount{k[0], k[1], n})
	}
	slices.SortFunc(out, func(a, b destCount) int {
		if c := cmp.Compare(b.n, a.n); c != 0 {
			return c
		}
		return cmp.Compare(a.service+a.dest, b.service+b.dest)
	})
	return out
}
