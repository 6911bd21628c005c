package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Config is the load generator's configuration, from flags.
type Config struct {
	Targets       []string // "null", "meshguard", in the order phases alternate
	Meshguard     string   // prebuilt meshguard binary; built from ./cmd/meshguard when empty
	MeshguardArgs []string // extra arguments to `meshguard serve`
	NullServer    string   // prebuilt null server; built from ./bench/load/nullserver when empty
	ServerEnv     []string // KEY=VALUE for both servers
	ServerCPUs    []int
	ClientCPUs    []int
	Transport     string // tcp or unix
	WorkDir       string
	Keep          bool

	Conns        int
	Concurrency  int
	Duration     time.Duration
	Warmup       time.Duration
	Rounds       int
	Timeout      time.Duration
	OpenFraction float64
	OpenRate     float64
	MaxInflight  int
	Teach        int
	EnforceMode  string
	Mix          MixConfig

	Scale            bool
	ScaleServices    int
	ScaleDests       int
	ScanIPs          int
	ScanRSSBound     int64
	ScaleConcurrency int

	PprofDir       string
	ProfileSeconds int

	Write   bool
	Results string
	Seed    uint64
}

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, " ") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// parseConfig parses args and checks every value, reporting all problems at once.
func parseConfig(args []string, stderr io.Writer) (Config, error) {
	var c Config
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: go run ./bench/load [flags]\n\nDrives ext_proc load as Envoy does against a null server and meshguard, alternately, and\nreports throughput, latency, CPU and memory. Flags:")
		fs.PrintDefaults()
	}
	targets := fs.String("targets", "null,meshguard", "servers to measure, comma-separated: null, meshguard")
	fs.StringVar(&c.Meshguard, "meshguard", "", "meshguard binary (default: go build ./cmd/meshguard)")
	var mgArgs, env listFlag
	fs.Var(&mgArgs, "meshguard-arg", "extra argument to meshguard serve, e.g. --meshguard-arg=--log-level=warn (repeatable)")
	fs.StringVar(&c.NullServer, "null-server", "", "null server binary (default: go build ./bench/load/nullserver)")
	fs.Var(&env, "server-env", "KEY=VALUE in the environment of both servers, e.g. GOMAXPROCS=2 (repeatable)")
	serverCPUs := fs.String("server-cpus", "", "pin both servers to these CPUs, e.g. 1 or 0-1 (default: no pinning)")
	clientCPUs := fs.String("client-cpus", "", "pin the load generator to these CPUs (default: no pinning)")
	fs.StringVar(&c.Transport, "transport", "tcp", "ext_proc transport: tcp (loopback) or unix (socket)")
	fs.StringVar(&c.WorkDir, "work-dir", "", "directory for binaries, data and server logs (default: a temporary one)")
	fs.BoolVar(&c.Keep, "keep", false, "keep the temporary work directory")

	fs.IntVar(&c.Conns, "conns", 4, "HTTP/2 connections per server; streams are spread over them")
	fs.IntVar(&c.Concurrency, "concurrency", 64, "closed-loop concurrent streams (saturation)")
	fs.DurationVar(&c.Duration, "duration", 10*time.Second, "measured time of each phase")
	fs.DurationVar(&c.Warmup, "warmup", 2*time.Second, "unmeasured time before each phase")
	fs.IntVar(&c.Rounds, "rounds", 2, "rounds of alternating phases per server")
	fs.DurationVar(&c.Timeout, "timeout", 200*time.Millisecond, "per-message timeout (Envoy's message_timeout)")
	fs.Float64Var(&c.OpenFraction, "open-fraction", 0.5, "open-loop rate as a fraction of the null server's saturation throughput")
	fs.Float64Var(&c.OpenRate, "open-rate", 0, "open-loop rate in decisions/s (overrides --open-fraction; needed without the null target)")
	fs.IntVar(&c.MaxInflight, "max-inflight", 10000, "open-loop cap on concurrent streams")
	fs.IntVar(&c.Teach, "teach", 1, "requests per (service, destination) pair sent before the measured phases, while services learn")
	fs.StringVar(&c.EnforceMode, "mode", "enforce", "mode meshguard's services are switched to after teaching (empty: stay in learn)")

	fs.IntVar(&c.Mix.Services, "services", 100, "services (namespace/workload)")
	fs.IntVar(&c.Mix.Namespaces, "namespaces", 10, "namespaces the services are spread over")
	fs.IntVar(&c.Mix.DestsPerService, "dests", 20, "known destinations per service")
	fs.Float64Var(&c.Mix.NewDestShare, "new-dest-share", 0.01, "share of requests to never-seen destinations")
	fs.BoolVar(&c.Mix.Body, "body", false, "send a request_body phase (BUFFERED) for POST and PUT requests")
	fs.IntVar(&c.Mix.BodyBytes, "body-bytes", 1024, "request body size of POST and PUT requests")
	fs.BoolVar(&c.Mix.Response, "response", true, "send a response_headers phase")
	fs.BoolVar(&c.Mix.ProtocolConfig, "protocol-config", true, "send protocol_config on the first message")

	fs.BoolVar(&c.Scale, "scale", false, "run the scale scenario (meshguard only): many services, then a hostile scan")
	fs.IntVar(&c.ScaleServices, "scale-services", 10000, "scale: services loaded")
	fs.IntVar(&c.ScaleDests, "scale-dests", 100, "scale: destinations per service")
	fs.IntVar(&c.ScanIPs, "scan-ips", 1_000_000, "scale: distinct IPs the hostile service scans")
	bound := fs.String("scan-rss-bound", "64MiB", "scale: allowed RSS growth during the scan")
	fs.IntVar(&c.ScaleConcurrency, "scale-concurrency", 64, "scale: concurrent streams while loading and scanning")

	fs.StringVar(&c.PprofDir, "pprof", "", "after the measured rounds, save CPU profiles of each server (from /debug/pprof on its admin address) and of this client under saturation into this directory")
	fs.IntVar(&c.ProfileSeconds, "profile-seconds", 10, "length of each profile")

	fs.BoolVar(&c.Write, "write", false, "write the \"load\" section of bench/RESULTS.md (and \"load-scale\" with --scale)")
	fs.StringVar(&c.Results, "results", "", "results file (default: bench/RESULTS.md in the module)")
	fs.Uint64Var(&c.Seed, "seed", 1, "random seed")
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	c.MeshguardArgs, c.ServerEnv = mgArgs, env

	var errs []error
	for t := range strings.SplitSeq(*targets, ",") {
		t = strings.TrimSpace(t)
		switch {
		case t == "":
		case t != "null" && t != "meshguard":
			errs = append(errs, fmt.Errorf("--targets: unknown target %q (want null, meshguard)", t))
		case slices.Contains(c.Targets, t):
			errs = append(errs, fmt.Errorf("--targets: %q twice", t))
		default:
			c.Targets = append(c.Targets, t)
		}
	}
	if len(c.Targets) == 0 && !c.Scale {
		errs = append(errs, errors.New("--targets: nothing to measure"))
	}
	var err error
	if c.ServerCPUs, err = parseCPUs(*serverCPUs); err != nil {
		errs = append(errs, fmt.Errorf("--server-cpus: %w", err))
	}
	if c.ClientCPUs, err = parseCPUs(*clientCPUs); err != nil {
		errs = append(errs, fmt.Errorf("--client-cpus: %w", err))
	}
	if c.ScanRSSBound, err = parseBytes(*bound); err != nil {
		errs = append(errs, fmt.Errorf("--scan-rss-bound: %w", err))
	}
	for _, kv := range c.ServerEnv {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			errs = append(errs, fmt.Errorf("--server-env: %q is not KEY=VALUE", kv))
		}
	}
	positive := []struct {
		name string
		v    int
	}{{"conns", c.Conns}, {"concurrency", c.Concurrency}, {"rounds", c.Rounds}, {"max-inflight", c.MaxInflight},
		{"scale-services", c.ScaleServices}, {"scale-dests", c.ScaleDests}, {"scan-ips", c.ScanIPs},
		{"scale-concurrency", c.ScaleConcurrency}, {"profile-seconds", c.ProfileSeconds}}
	for _, p := range positive {
		if p.v < 1 {
			errs = append(errs, fmt.Errorf("--%s must be at least 1, got %d", p.name, p.v))
		}
	}
	if c.Teach < 0 {
		errs = append(errs, fmt.Errorf("--teach must not be negative, got %d", c.Teach))
	}
	if c.Teach == 0 && c.EnforceMode != "" && slices.Contains(c.Targets, "meshguard") {
		errs = append(errs, fmt.Errorf("--teach 0 leaves meshguard no services to switch to %q; add --mode ''", c.EnforceMode))
	}
	if c.ScanIPs > unseenSpan {
		errs = append(errs, fmt.Errorf("--scan-ips: at most %d distinct addresses (100.64.0.0/10), got %d", unseenSpan, c.ScanIPs))
	}
	if c.Duration <= 0 || c.Timeout <= 0 || c.Warmup < 0 {
		errs = append(errs, fmt.Errorf("--duration and --timeout must be positive and --warmup not negative (got %v, %v, %v)", c.Duration, c.Timeout, c.Warmup))
	}
	if c.OpenFraction <= 0 && c.OpenRate <= 0 {
		errs = append(errs, errors.New("--open-fraction or --open-rate must be positive"))
	}
	if c.OpenRate <= 0 && !slices.Contains(c.Targets, "null") && len(c.Targets) > 0 {
		errs = append(errs, errors.New("--open-rate is needed when the null target is not measured"))
	}
	if c.Transport != "tcp" && c.Transport != "unix" {
		errs = append(errs, fmt.Errorf("--transport: want tcp or unix, got %q", c.Transport))
	}
	if _, err := NewMix(c.Mix); err != nil {
		errs = append(errs, err)
	}
	if c.Scale {
		if _, err := NewMix(MixConfig{Services: c.ScaleServices, Namespaces: c.Mix.Namespaces, DestsPerService: c.ScaleDests}); err != nil {
			errs = append(errs, fmt.Errorf("scale: %w", err))
		}
	}
	return c, errors.Join(errs...)
}

// parseCPUs parses a CPU list such as "0", "0-1" or "0,2-3".
func parseCPUs(s string) ([]int, error) {
	var cpus []int
	if s == "" {
		return nil, nil
	}
	for part := range strings.SplitSeq(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil || a < 0 {
			return nil, fmt.Errorf("bad CPU %q", part)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return nil, fmt.Errorf("bad CPU range %q", part)
			}
		}
		for i := a; i <= b; i++ {
			cpus = append(cpus, i)
		}
	}
	return cpus, nil
}

// parseBytes parses a size such as 64MiB, 512KiB, 1GiB or a plain number of bytes.
func parseBytes(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}, {"", 1}}
	for _, u := range units {
		if num, ok := strings.CutSuffix(s, u.suffix); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
			if err != nil || v < 0 {
				return 0, fmt.Errorf("bad size %q", s)
			}
			return int64(v * float64(u.mult)), nil
		}
	}
	return 0, fmt.Errorf("bad size %q", s)
}
