package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/meshguard/meshguard/bench/evaluate"
)

const usage = `usage:
  synth gen --seed 1 --out FILE.jsonl [--days 14] [--learn-days 3] [--scale 1] [--instances 3]
  synth eval [--seed 1] [--days 14] [--learn-days 3] [--scale 1] [--instances 3]
             [--events FILE.jsonl] [--verdicts FILE.jsonl] [--save-verdicts FILE.jsonl] [--write]
`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("missing command")
	}
	switch args[0] {
	case "gen":
		return runGen(args[1:], stdout, stderr)
	case "eval":
		return runEval(ctx, args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", args[0])
}

// Defaults of the full suite.
var fullSuite = genConfig{Seed: 1, Days: 14, LearnDays: 3, Scale: 1, Instances: 3}

// suiteFlags registers the generator's flags on fs.
func suiteFlags(fs *flag.FlagSet) *genConfig {
	c := fullSuite
	fs.Uint64Var(&c.Seed, "seed", c.Seed, "random seed")
	fs.IntVar(&c.Days, "days", c.Days, "days of event time")
	fs.IntVar(&c.LearnDays, "learn-days", c.LearnDays, "first days without attacks, for learning (eval: the model's learn window)")
	fs.Float64Var(&c.Scale, "scale", c.Scale, "multiplier of the services' request rates")
	fs.IntVar(&c.Instances, "instances", c.Instances, "instances of each attack kind")
	return &c
}

func runGen(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("gen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := suiteFlags(fs)
	out := fs.String("out", "", "flow-event JSONL file to write (- for standard output)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" {
		return errors.New("gen: --out is required")
	}
	recs, attacks, err := generate(*cfg)
	if err != nil {
		return fmt.Errorf("gen: %w", err)
	}
	if err := evaluate.WriteJSONLFile(*out, stdout, recs); err != nil {
		return fmt.Errorf("gen: %w", err)
	}
	fmt.Fprintf(stderr, "wrote %d events (%d attack instances)\n", len(recs), len(attacks))
	return nil
}
