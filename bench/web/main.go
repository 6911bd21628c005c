// Command web evaluates meshguard on the requests of one web application, generated in code:
// a small shop's normal traffic (GET queries, form-encoded and multipart POSTs, JSON calls)
// is learned for a day, then its normal requests of the next hours are scored beside attacks
// of each class (SQL injection, XSS, path traversal, command injection, CRLF, oversized
// values, tampered parameters, file probes, typing errors, bodies under a false content
// type), each a normal request with one thing changed. It prints per class meshguard's
// figures beside issue 11's trivial baseline.
//
//	go run ./bench/web gen [--seed 1] --out FILE.jsonl
//	go run ./bench/web eval [--seed 1] [--events FILE.jsonl] [--verdicts FILE.jsonl] [--write]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"

	"github.com/meshguard/meshguard/bench/evaluate"
	"github.com/meshguard/meshguard/flowmodel"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "web:", err)
		stop()
		os.Exit(1)
	}
}

const usage = `usage:
  web gen [--seed 1] [--learn-sessions N] [--test-sessions N] [--per-class N] --out FILE.jsonl
  web eval [--seed 1] [--learn-sessions N] [--test-sessions N] [--per-class N]
           [--events FILE.jsonl] [--verdicts FILE.jsonl] [--write]
`

// defaults of the full evaluation.
var defaults = genConfig{Seed: 1, LearnSessions: 2500, TestSessions: 1200, PerClass: 300}

func run(_ context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("missing command")
	}
	switch args[0] {
	case "gen", "eval":
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("unknown command %q", args[0])
	}
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := defaults
	fs.Uint64Var(&c.Seed, "seed", c.Seed, "random seed")
	fs.IntVar(&c.LearnSessions, "learn-sessions", c.LearnSessions, "browser sessions of the learning day")
	fs.IntVar(&c.TestSessions, "test-sessions", c.TestSessions, "browser sessions of the test hours")
	fs.IntVar(&c.PerClass, "per-class", c.PerClass, "attacks of each class")
	data := fs.String("data", "", "modsec-learn folder for the SQL injection payloads (default: modsec-learn of the shared datasets; without it sqli is left out)")
	out := fs.String("out", "", "gen: flow-event JSONL file to write (- for standard output)")
	eventsFile := fs.String("events", "", "eval: evaluate this flow-event file instead of generating one")
	verdictsFile := fs.String("verdicts", "", "eval: measure these verdicts (meshguard replay's output for --events) in place of the model's default run (the column without burst is still run here)")
	rf := evaluate.NewResultsFlags(fs, "web")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	sqli, err := sqliPayloads(*data)
	if err != nil {
		return err
	}
	if sqli == nil {
		fmt.Fprintln(stderr, "web: modsec-learn payloads not found: the sqli and smuggle classes are left out")
	}
	c.SQLi = sqli
	if args[0] == "gen" {
		if *out == "" {
			return errors.New("gen: --out is required")
		}
		recs, err := generate(c)
		if err != nil {
			return fmt.Errorf("gen: %w", err)
		}
		if err := evaluate.WriteJSONLFile(*out, stdout, recs); err != nil {
			return fmt.Errorf("gen: %w", err)
		}
		fmt.Fprintf(stderr, "wrote %d events\n", len(recs))
		return nil
	}
	rep, err := evalRun(c, *eventsFile, *verdictsFile)
	if err != nil {
		return fmt.Errorf("eval: %w", err)
	}
	return rf.Publish(stdout, stderr, rep.Markdown())
}

// sqliPayloads reads the payloads from dir, or from the shared datasets when dir is empty;
// nil when the datasets are not there.
func sqliPayloads(dir string) ([]string, error) {
	if dir == "" {
		d, err := evaluate.DatasetDir("modsec-learn")
		if err != nil {
			return nil, nil
		}
		dir = d
	}
	return loadSQLi(dir)
}

// evalRun generates (or reads) the events, decides them (or reads the verdicts) and
// measures them.
func evalRun(c genConfig, eventsFile, verdictsFile string) (*Report, error) {
	events, err := loadEvents(c, eventsFile)
	if err != nil {
		return nil, err
	}
	var verdicts []flowmodel.Verdict
	if verdictsFile != "" {
		f, err := os.Open(verdictsFile)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		if verdicts, err = evaluate.ReadVerdicts(f); err != nil {
			return nil, err
		}
	} else if verdicts, err = Run(events, 0); err != nil {
		return nil, err
	}
	noBurst, err := Run(events, flowmodel.Reasons(0).With(flowmodel.ReasonBurst))
	if err != nil {
		return nil, err
	}
	rep, err := Measure(events, verdicts, noBurst)
	if err != nil {
		return nil, err
	}
	rep.Seed, rep.Sessions, rep.SQLiSkipped = c.Seed, [2]int{c.LearnSessions, c.TestSessions}, c.SQLi == nil
	return rep, nil
}

// loadEvents reads the events file, or generates the events and reads them back through the
// flow-event format, so that the model scores the bytes a replay would read.
func loadEvents(c genConfig, file string) ([]evaluate.Event, error) {
	if file != "" {
		f, err := os.Open(file)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		return evaluate.Read(f)
	}
	recs, err := generate(c)
	if err != nil {
		return nil, err
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(evaluate.WriteJSONL(pw, recs)) }()
	return evaluate.Read(pr)
}
