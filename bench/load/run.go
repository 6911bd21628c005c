package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/meshguard/meshguard/bench/evaluate"
	"github.com/meshguard/meshguard/bench/results"
)

// run wires the benchmark: build and start the servers, teach, measure in alternating
// rounds, profile, run the scale scenario, report.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseConfig(args, stderr)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	if len(cfg.ClientCPUs) > 0 {
		if err := pinSelf(cfg.ClientCPUs); err != nil {
			return err
		}
	}
	root, err := evaluate.RepoRoot()
	if err != nil {
		return err
	}
	work := cfg.WorkDir
	if work == "" {
		if work, err = os.MkdirTemp("", "meshguard-load-"); err != nil {
			return err
		}
		if !cfg.Keep {
			defer os.RemoveAll(work)
		}
	} else if err := os.MkdirAll(work, 0o755); err != nil {
		return err
	}
	rep := &Report{Cfg: cfg, Command: commandLine(args), Machine: machineInfo(), Started: time.Now()}

	bins, err := buildBinaries(ctx, cfg, root, work, log)
	if err != nil {
		return err
	}
	if len(cfg.Targets) > 0 {
		if err := runBench(ctx, cfg, bins, work, rep, stderr, log); err != nil {
			return err
		}
	}
	if cfg.Scale {
		sr, err := runScaleChild(ctx, cfg, bins["meshguard"], work, stderr, log)
		if err != nil {
			return fmt.Errorf("scale: %w", err)
		}
		rep.Scale = sr
	}
	path := cfg.Results
	if path == "" {
		path = filepath.Join(root, "bench", "RESULTS.md")
	}
	for _, sec := range []struct{ name, md string }{{"load", rep.Markdown()}, {"load-scale", rep.ScaleMarkdown()}} {
		if sec.md == "" {
			continue
		}
		fmt.Fprint(stdout, sec.md)
		if !cfg.Write {
			continue
		}
		if err := results.WriteSection(path, sec.name, sec.md); err != nil {
			return err
		}
		log.Info("results written", "file", path, "section", sec.name)
	}
	if s := rep.Scale; s != nil {
		var errs []error
		if !s.AllBlocked {
			errs = append(errs, fmt.Errorf("scale: %d of %d scan requests blocked", s.ScanBlocked, s.ScanIPs))
		}
		if !s.WithinBound {
			errs = append(errs, fmt.Errorf("scale: RSS grew by %s during the scan, bound %s", fmtBytes(s.Growth), fmtBytes(s.Bound)))
		}
		return errors.Join(errs...)
	}
	return nil
}

// buildBinaries builds (or takes from flags) the binaries of the targets.
func buildBinaries(ctx context.Context, cfg Config, root, work string, log *slog.Logger) (map[string]string, error) {
	bins := map[string]string{}
	need := slices.Clone(cfg.Targets)
	if cfg.Scale && !slices.Contains(need, "meshguard") {
		need = append(need, "meshguard")
	}
	for _, t := range need {
		given, pkg := cfg.NullServer, "./bench/load/nullserver"
		if t == "meshguard" {
			given, pkg = cfg.Meshguard, "./cmd/meshguard"
		}
		if given != "" {
			bins[t] = given
			continue
		}
		out := filepath.Join(work, t)
		log.Info("building", "package", pkg, "out", out)
		if err := buildBinary(ctx, root, pkg, out); err != nil {
			return nil, err
		}
		bins[t] = out
	}
	return bins, nil
}

// serverSpec returns how to start target t; dataDir is meshguard's --data-dir.
func serverSpec(cfg Config, t, bin, work, dataDir string, pprofOn bool) (ServerSpec, error) {
	spec := ServerSpec{Name: t, Bin: bin, Env: cfg.ServerEnv, CPUs: cfg.ServerCPUs,
		LogPath: filepath.Join(work, filepath.Base(dataDir)+".log")}
	listen, err := freeAddr()
	if err != nil {
		return spec, err
	}
	spec.Target = listen
	if cfg.Transport == "unix" {
		spec.Target = "unix://" + filepath.Join(work, filepath.Base(dataDir)+".sock")
		listen = spec.Target
	}
	switch t {
	case "meshguard":
		admin, err := freeAddr()
		if err != nil {
			return spec, err
		}
		spec.Admin = "http://" + admin
		RegisterAdminToken(spec.Admin, filepath.Join(dataDir, "admin-token"))
		spec.Args = meshguardArgs(listen, admin, dataDir, cfg.MeshguardArgs)
		if pprofOn {
			spec.Args = append(spec.Args, "--pprof")
		}
	case "null":
		spec.Args = []string{"--listen", listen}
		if pprofOn {
			pp, err := freeAddr()
			if err != nil {
				return spec, err
			}
			spec.Args = append(spec.Args, "--pprof-listen", pp)
			spec.pprofBase = "http://" + pp
		}
	}
	return spec, nil
}

// meshguardArgs is the `meshguard serve` command line (the CLI contract in COMMON.md): every
// service starts in learn mode and stays there (a learn window and request minimum no run
// reaches) until the load generator switches it with PUT /v1/services/{service}/mode.
func meshguardArgs(listen, admin, dataDir string, extra []string) []string {
	return append([]string{"serve",
		"--listen", listen, "--admin-listen", admin, "--data-dir", dataDir, "--xds-listen", "off",
		"--default-mode", "learn", "--learn-window", "87600h", "--learn-min-requests", "1000000000000",
	}, extra...)
}

// runBench runs the alternating rounds against the configured targets.
func runBench(ctx context.Context, cfg Config, bins map[string]string, work string, rep *Report, stderr io.Writer, log *slog.Logger) error {
	mix, err := NewMix(cfg.Mix)
	if err != nil {
		return err
	}
	servers := map[string]*Server{}
	conns := map[string]*Conns{}
	defer func() {
		for _, t := range cfg.Targets {
			if c := conns[t]; c != nil {
				c.Close()
			}
			if s := servers[t]; s != nil {
				if err := s.Stop(); err != nil {
					log.Warn("stop", "server", t, "err", err)
				}
			}
		}
	}()
	for _, t := range cfg.Targets {
		spec, err := serverSpec(cfg, t, bins[t], work, filepath.Join(work, "bench-"+t), cfg.PprofDir != "")
		if err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Join(work, "bench-"+t), 0o755); err != nil {
			return err
		}
		s, err := StartServer(ctx, spec)
		if err != nil {
			return err
		}
		servers[t] = s
		if conns[t], err = Dial(ctx, spec.Target, cfg.Conns); err != nil {
			return err
		}
		m, _ := ProcMem(s.PID)
		rep.Idle = append(rep.Idle, TargetMem{Target: t, Mem: m})
		log.Info("server ready", "target", t, "pid", s.PID, "addr", spec.Target, "rss", fmtBytes(m.RSS), "log", spec.LogPath)
	}
	phase := func(name, t string) *Phase {
		return &Phase{Name: name, Conns: conns[t], Mix: mix, Timeout: cfg.Timeout, PID: servers[t].PID,
			Progress: stderr, Seed: cfg.Seed, Concurrency: cfg.Concurrency, MaxInflight: cfg.MaxInflight,
			Warmup: cfg.Warmup, Duration: cfg.Duration,
			Source: func(_ uint64, r *rand.Rand) Req { return mix.Pick(r) }}
	}
	check := func(t string) error {
		if !servers[t].Alive() {
			return fmt.Errorf("%s exited (log: %s)", t, servers[t].Spec.LogPath)
		}
		return nil
	}

	// Teach every (service, destination) pair, then switch meshguard's services to enforce.
	pairs := uint64(cfg.Mix.Services * cfg.Mix.DestsPerService)
	for _, t := range cfg.Targets {
		if cfg.Teach == 0 {
			break
		}
		p := phase("teach-"+t, t)
		p.Count = pairs * uint64(cfg.Teach)
		p.Source = func(k uint64, _ *rand.Rand) Req { return mix.Pair(int(k % pairs)) }
		r, err := p.Run(ctx)
		if err != nil {
			return err
		}
		rep.Teach = append(rep.Teach, TargetResult{Target: t, Result: r})
		if t == "meshguard" && cfg.EnforceMode != "" {
			took, err := SetModes(ctx, servers[t].Spec.Admin, cfg.Mix.Services, mix.ServiceName, cfg.EnforceMode)
			if err != nil {
				return fmt.Errorf("switch services to %s: %w", cfg.EnforceMode, err)
			}
			log.Info("services switched", "mode", cfg.EnforceMode, "services", cfg.Mix.Services, "took", took)
		}
		if err := check(t); err != nil {
			return err
		}
	}

	// Saturation: closed loop, alternating targets round by round.
	for round := 1; round <= cfg.Rounds; round++ {
		for _, t := range cfg.Targets {
			r, err := phase(fmt.Sprintf("%s-sat-%d", t, round), t).Run(ctx)
			if err != nil {
				return err
			}
			rep.Saturation = append(rep.Saturation, TargetResult{Target: t, Round: round, Result: r})
			if err := check(t); err != nil {
				return err
			}
		}
	}

	// Open loop at a fixed rate: a fraction of the null server's saturation throughput.
	rep.OpenRate = cfg.OpenRate
	if rep.OpenRate <= 0 {
		rep.OpenRate = cfg.OpenFraction * rep.MeanThroughput("null")
	}
	if rep.OpenRate <= 0 {
		var detail []string
		for _, tr := range rep.Saturation {
			detail = append(detail, fmt.Sprintf("%s: %d ok in %v, failures %s %s", tr.Result.Name, tr.Result.OK, tr.Result.Elapsed, failures(tr.Result), tr.Result.FirstFailure))
		}
		return fmt.Errorf("open loop: no rate, the null server completed nothing (%s)", strings.Join(detail, "; "))
	}
	for round := 1; round <= cfg.Rounds; round++ {
		for _, t := range cfg.Targets {
			p := phase(fmt.Sprintf("%s-open-%d", t, round), t)
			p.Rate = rep.OpenRate
			r, err := p.Run(ctx)
			if err != nil {
				return err
			}
			rep.Open = append(rep.Open, TargetResult{Target: t, Round: round, Result: r})
			if err := check(t); err != nil {
				return err
			}
		}
	}
	for _, t := range cfg.Targets {
		m, _ := ProcMem(servers[t].PID)
		rep.After = append(rep.After, TargetMem{Target: t, Mem: m})
	}

	if cfg.PprofDir != "" {
		if err := os.MkdirAll(cfg.PprofDir, 0o755); err != nil {
			return err
		}
		for _, t := range cfg.Targets {
			p := phase(t+"-profile", t)
			p.Warmup, p.Duration = time.Second, time.Duration(cfg.ProfileSeconds+1)*time.Second
			files, err := profilePhase(ctx, p, servers[t].Spec, cfg.PprofDir, cfg.ProfileSeconds)
			if err != nil {
				log.Warn("profile", "target", t, "err", err)
			}
			rep.Profiles = append(rep.Profiles, files...)
		}
	}
	return nil
}

// profilePhase runs p while taking a CPU profile of the server (from its /debug/pprof) and of
// this client; it returns the files written.
func profilePhase(ctx context.Context, p *Phase, spec ServerSpec, dir string, seconds int) ([]string, error) {
	base := spec.pprofBase
	if base == "" {
		base = spec.Admin
	}
	serverFile := filepath.Join(dir, spec.Name+"-cpu.pprof")
	clientFile := filepath.Join(dir, "client-"+spec.Name+"-cpu.pprof")
	cf, err := os.Create(clientFile)
	if err != nil {
		return nil, err
	}
	defer cf.Close()
	errc := make(chan error, 1)
	go func() {
		select { // start both profiles once the warmup is over
		case <-time.After(p.Warmup):
		case <-ctx.Done():
		}
		if base == "" {
			errc <- errors.New("the server has no pprof endpoint")
			return
		}
		errc <- FetchProfile(ctx, base, seconds, serverFile)
	}()
	go func() {
		time.Sleep(p.Warmup)
		if err := pprof.StartCPUProfile(cf); err == nil {
			time.Sleep(time.Duration(seconds) * time.Second)
			pprof.StopCPUProfile()
		}
	}()
	if _, err := p.Run(ctx); err != nil {
		return nil, err
	}
	files := []string{clientFile}
	if err := <-errc; err != nil {
		return files, fmt.Errorf("server profile: %w", err)
	}
	return append(files, serverFile), nil
}

// pinSelf sets the CPU affinity of every thread of this process; threads created later
// inherit it.
func pinSelf(cpus []int) error {
	var set unix.CPUSet
	for _, c := range cpus {
		set.Set(c)
	}
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return err
	}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := unix.SchedSetaffinity(tid, &set); err != nil {
			return fmt.Errorf("pin thread %d to %v: %w", tid, cpus, err)
		}
	}
	return nil
}

// commandLine is the command that reproduces this run, for the results.
func commandLine(args []string) string {
	parts := []string{"go", "run", "./bench/load"}
	for _, a := range args {
		if a == "" || strings.ContainsAny(a, " \t\"'$\\|&;<>()*?[]{}~`") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		parts = append(parts, a)
	}
	return strings.Join(parts, " ")
}
