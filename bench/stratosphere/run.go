package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/meshguard/meshguard/bench/evaluate"
)

const usage = `usage:
  stratosphere convert [--data DIR] --out FILE.jsonl   Zeek logs to flow events
  stratosphere eval [--data DIR] [--learn 4h,8h,12h] [--write]
`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("missing command")
	}
	switch args[0] {
	case "convert":
		return runConvert(args[1:], stdout, stderr)
	case "eval":
		return runEval(ctx, args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", args[0])
}

// dataDir is --data, else the stratosphere folder of the shared datasets.
func dataDir(flagValue string) (string, error) {
	if flagValue != "" {
		if _, err := os.Stat(flagValue); err != nil {
			return "", fmt.Errorf("--data: %w", err)
		}
		return flagValue, nil
	}
	return evaluate.DatasetDir("stratosphere")
}

func runConvert(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("convert", flag.ContinueOnError)
	fs.SetOutput(stderr)
	data := fs.String("data", "", "folder of captures (default: $MESHGUARD_DATASETS/stratosphere or ../shared/datasets/stratosphere)")
	out := fs.String("out", "", "flow-event JSONL file to write (- for standard output)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" {
		return errors.New("convert: --out is required")
	}
	dir, err := dataDir(*data)
	if err != nil {
		return err
	}
	recs, st, err := convertDir(dir)
	if err != nil {
		return err
	}
	if err := evaluate.WriteJSONLFile(*out, stdout, recs); err != nil {
		return fmt.Errorf("convert: %w", err)
	}
	for _, s := range st {
		fmt.Fprintln(stderr, s)
	}
	fmt.Fprintf(stderr, "wrote %d flow events\n", len(recs))
	return nil
}

// durations parses "4h,8h,12h".
func durations(s string) ([]time.Duration, error) {
	var out []time.Duration
	for _, p := range strings.Split(s, ",") {
		d, err := time.ParseDuration(strings.TrimSpace(p))
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("bad learn window %q", p)
		}
		out = append(out, d)
	}
	return out, nil
}
