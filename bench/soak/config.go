package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// Config is a soak run, from flags.
type Config struct {
	Meshguard     string   // prebuilt binary; built from ./cmd/meshguard when empty
	MeshguardArgs []string // extra arguments to meshguard serve
	WorkDir       string
	Keep          bool

	Duration     time.Duration // measured window, after Warmup
	Warmup       time.Duration
	Rate         float64 // requests per second
	Sample       time.Duration
	Conns        int
	Timeout      time.Duration // Envoy's message_timeout
	MaxInflight  int
	Services     int
	Dests        int
	NewDestShare float64

	Bounds Bounds

	Write   bool
	Results string
}

// Bounds are the growth a soak tolerates over its measured window.
type Bounds struct {
	Goroutines int64
	HeapBytes  int64
	FDs        int64
	// ErrorShare is the largest share of requests that may fail (timeouts included).
	ErrorShare float64
}

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, " ") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func parseConfig(args []string, stderr io.Writer) (Config, error) {
	var c Config
	fs := flag.NewFlagSet("soak", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: go run ./bench/soak [flags]\n\nRuns meshguard at a steady rate and fails when goroutines, heap or open files grow. Flags:")
		fs.PrintDefaults()
	}
	fs.StringVar(&c.Meshguard, "meshguard", "", "meshguard binary (default: go build ./cmd/meshguard)")
	var mgArgs listFlag
	fs.Var(&mgArgs, "meshguard-arg", "extra argument to meshguard serve, e.g. --meshguard-arg=--decision-budget=20ms (repeatable)")
	fs.StringVar(&c.WorkDir, "work-dir", "", "directory for the binary, data and the server log (default: a temporary one)")
	fs.BoolVar(&c.Keep, "keep", false, "keep the temporary work directory")
	fs.DurationVar(&c.Duration, "duration", 10*time.Minute, "measured time, after the warm-up")
	fs.DurationVar(&c.Warmup, "warmup", time.Minute, "time at the rate before measuring")
	fs.Float64Var(&c.Rate, "rate", 500, "requests per second (open loop)")
	fs.DurationVar(&c.Sample, "sample", 5*time.Second, "time between samples of the process")
	fs.IntVar(&c.Conns, "conns", 4, "HTTP/2 connections to meshguard")
	fs.DurationVar(&c.Timeout, "timeout", 200*time.Millisecond, "per-message timeout (Envoy's message_timeout)")
	fs.IntVar(&c.MaxInflight, "max-inflight", 2000, "concurrent requests at most; requests over it are counted as dropped")
	fs.IntVar(&c.Services, "services", 50, "services")
	fs.IntVar(&c.Dests, "dests", 20, "known destinations per service")
	fs.Float64Var(&c.NewDestShare, "new-dest-share", 0.05, "share of requests to never-seen addresses (blocked)")
	fs.Int64Var(&c.Bounds.Goroutines, "max-goroutine-growth", 50, "goroutines the server may gain over the measured window")
	heap := fs.String("max-heap-growth", "16MiB", "Go heap in use the server may gain over the measured window")
	fs.Int64Var(&c.Bounds.FDs, "max-fd-growth", 8, "open file descriptors the server may gain over the measured window")
	fs.Float64Var(&c.Bounds.ErrorShare, "max-error-share", 0.01, "share of requests that may fail (timeouts, stream errors)")
	fs.BoolVar(&c.Write, "write", false, "write the \"soak\" section of bench/RESULTS.md")
	fs.StringVar(&c.Results, "results", "", "results file (default: bench/RESULTS.md in the module)")
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	c.MeshguardArgs = mgArgs
	var errs []error
	if fs.NArg() > 0 {
		errs = append(errs, fmt.Errorf("unexpected arguments %q", fs.Args()))
	}
	var err error
	if c.Bounds.HeapBytes, err = parseBytes(*heap); err != nil {
		errs = append(errs, fmt.Errorf("--max-heap-growth: %w", err))
	}
	if c.Duration <= 0 || c.Warmup < 0 || c.Sample <= 0 || c.Timeout <= 0 {
		errs = append(errs, errors.New("--duration, --sample and --timeout must be positive, --warmup not negative"))
	}
	if c.Sample > 0 && c.Duration/c.Sample < 5 {
		errs = append(errs, fmt.Errorf("--duration %v holds fewer than 5 samples of %v", c.Duration, c.Sample))
	}
	if c.Rate <= 0 {
		errs = append(errs, errors.New("--rate must be positive"))
	}
	for _, p := range []struct {
		name string
		v    int
	}{{"conns", c.Conns}, {"max-inflight", c.MaxInflight}, {"services", c.Services}, {"dests", c.Dests}} {
		if p.v < 1 {
			errs = append(errs, fmt.Errorf("--%s must be at least 1, got %d", p.name, p.v))
		}
	}
	if c.Services > 1<<16 || c.Dests > 250 {
		errs = append(errs, errors.New("--services at most 65536 and --dests at most 250"))
	}
	if c.NewDestShare < 0 || c.NewDestShare > 1 || c.Bounds.ErrorShare < 0 || c.Bounds.ErrorShare > 1 {
		errs = append(errs, errors.New("--new-dest-share and --max-error-share are shares in [0, 1]"))
	}
	if c.Bounds.Goroutines < 0 || c.Bounds.FDs < 0 || c.Bounds.HeapBytes < 0 {
		errs = append(errs, errors.New("growth bounds must not be negative"))
	}
	return c, errors.Join(errs...)
}

// parseBytes parses "16MiB", "512KiB", "1GiB" or a plain number of bytes.
func parseBytes(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}}
	mult := int64(1)
	for _, u := range units {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = n, u.mult
			break
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q: want a size such as 16MiB", s)
	}
	return n * mult, nil
}
