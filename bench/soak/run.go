package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	bencheval "github.com/meshguard/meshguard/bench/evaluate"
	"github.com/meshguard/meshguard/bench/results"
	"github.com/meshguard/meshguard/extproc/envoysim"
)

// Result is a finished soak.
type Result struct {
	Config   Config
	Samples  []Sample // all, warm-up included
	Measured []Sample // after the warm-up
	Growth   []Growth
	Answered int64
	Blocked  int64
	Timeouts int64
	Failed   int64 // stream errors and wrong answers
	Dropped  int64
	FirstErr error
	P50, P99 time.Duration
	Elapsed  time.Duration
	StopErr  error
}

// Failures lists why the soak failed; none when it passed.
func (r Result) Failures() []string {
	var out []string
	for _, g := range r.Growth {
		if g.Exceeded {
			out = append(out, fmt.Sprintf("%s grew by %s (from %s to %s), more than the bound of %s",
				g.Name, g.format(g.End-g.Start), g.format(g.Start), g.format(g.End), g.format(g.Bound)))
		}
	}
	total := r.Answered + r.Timeouts + r.Failed
	if total == 0 {
		out = append(out, "no request was answered")
	} else if share := float64(r.Timeouts+r.Failed) / float64(total); share > r.Config.Bounds.ErrorShare {
		out = append(out, fmt.Sprintf("%.2f%% of requests failed (%d timeouts, %d errors; first: %v), more than %.2f%%",
			100*share, r.Timeouts, r.Failed, r.FirstErr, 100*r.Config.Bounds.ErrorShare))
	}
	if r.Dropped > 0 {
		out = append(out, fmt.Sprintf("%d requests dropped at --max-inflight: the server fell behind the rate", r.Dropped))
	}
	if r.StopErr != nil {
		out = append(out, fmt.Sprintf("shutdown: %v", r.StopErr))
	}
	return out
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseConfig(args, stderr)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	res, err := Soak(ctx, cfg, log)
	if err != nil {
		return err
	}
	md := report(res)
	fmt.Fprint(stdout, md)
	if cfg.Write {
		path := cfg.Results
		if path == "" {
			if path, err = bencheval.ResultsPath(); err != nil {
				return err
			}
		}
		if err := results.WriteSection(path, "soak", md); err != nil {
			return err
		}
	}
	if f := res.Failures(); len(f) > 0 {
		return fmt.Errorf("soak failed:\n  %s", strings.Join(f, "\n  "))
	}
	return nil
}

// Soak runs one soak: build or take the binary, start it, teach it, switch to enforce, drive
// the load for warm-up plus duration while sampling, stop it, and evaluate.
func Soak(ctx context.Context, cfg Config, log *slog.Logger) (Result, error) {
	res := Result{Config: cfg}
	work := cfg.WorkDir
	if work == "" {
		dir, err := os.MkdirTemp("", "meshguard-soak-")
		if err != nil {
			return res, err
		}
		work = dir
		if !cfg.Keep {
			defer os.RemoveAll(dir)
		}
	} else if err := os.MkdirAll(work, 0o755); err != nil {
		return res, err
	}
	bin := cfg.Meshguard
	if bin == "" {
		bin = filepath.Join(work, "meshguard")
		log.Info("building", "out", bin)
		if err := buildMeshguard(ctx, bin); err != nil {
			return res, err
		}
	}
	logPath := filepath.Join(work, "meshguard.log")
	srv, err := startServer(ctx, bin, filepath.Join(work, "data"), logPath, cfg.MeshguardArgs)
	if err != nil {
		return res, err
	}
	stopped := false
	defer func() {
		if !stopped {
			srv.kill()
		}
	}()
	log.Info("meshguard started", "pid", srv.pid(), "ext_proc", srv.extproc, "admin", srv.admin, "log", logPath)

	c, err := dial(srv.extproc, cfg.Conns)
	if err != nil {
		return res, err
	}
	defer c.close()
	m := &mix{services: cfg.Services, dests: cfg.Dests, newShare: cfg.NewDestShare}
	if err := teach(ctx, c, m, cfg, srv); err != nil {
		return res, fmt.Errorf("teach: %w", err)
	}
	log.Info("taught and enforcing", "services", cfg.Services, "destinations", cfg.Services*cfg.Dests)

	var cnt counts
	start := time.Now()
	lctx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	loadDone := make(chan struct{})
	go func() {
		drive(lctx, c, m, cfg.Rate, cfg.Timeout, cfg.MaxInflight, &cnt)
		close(loadDone)
	}()
	err = sampleUntil(lctx, srv, cfg, start, &cnt, &res, log)
	stopLoad()
	<-loadDone
	if err != nil {
		return res, err
	}
	res.Elapsed = time.Since(start)
	res.Answered, res.Blocked = cnt.answered(), cnt.blocked.Load()
	res.Timeouts, res.Failed, res.Dropped = cnt.timeouts.Load(), cnt.failed.Load()+cnt.wrong.Load(), cnt.dropped.Load()
	if e := cnt.firstErr.Load(); e != nil {
		res.FirstErr = *e
	}
	res.P50, res.P99 = cnt.percentile(0.5), cnt.percentile(0.99)
	res.Growth = evaluate(res.Measured, cfg.Bounds)
	stopped = true
	res.StopErr = srv.stop(30 * time.Second)
	return res, nil
}

// sampleUntil samples the server every cfg.Sample until warm-up plus duration have passed.
func sampleUntil(ctx context.Context, srv *server, cfg Config, start time.Time, cnt *counts, res *Result, log *slog.Logger) error {
	t := time.NewTicker(cfg.Sample)
	defer t.Stop()
	end := start.Add(cfg.Warmup + cfg.Duration)
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case now := <-t.C:
			s, err := sample(ctx, srv, now.Sub(start), cnt.answered())
			if err != nil {
				return fmt.Errorf("sample: %w", err)
			}
			res.Samples = append(res.Samples, s)
			if s.At > cfg.Warmup {
				res.Measured = append(res.Measured, s)
			}
			log.Info("sample", "at", s.At.Round(time.Second), "goroutines", s.Goroutines,
				"heap_inuse_mib", fmt.Sprintf("%.1f", float64(s.HeapInuse)/(1<<20)), "fds", s.FDs,
				"rss_mib", fmt.Sprintf("%.1f", float64(s.RSS)/(1<<20)), "load", s.Load, "answered", s.Requests,
				"errors", cnt.errors(), "dropped", cnt.dropped.Load())
			if !now.Before(end) {
				return nil
			}
		}
	}
}

// teach sends one request per known (service, destination) while services learn, then
// switches every service to enforce.
func teach(ctx context.Context, c *conns, m *mix, cfg Config, srv *server) error {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	sem := make(chan struct{}, 64)
	for i := range cfg.Services {
		for j := range cfg.Dests {
			ip, host := knownDest(i, j)
			req := buildRequest(i, ip, host)
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				res, err := envoysim.Do(ctx, c.pick(), req, 5*time.Second)
				if err == nil && res.Immediate != nil {
					err = fmt.Errorf("%s blocked while learning", serviceName(i))
				}
				if err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	if len(errs) > 0 {
		return fmt.Errorf("%d of %d requests failed; first: %w", len(errs), cfg.Services*cfg.Dests, errs[0])
	}
	for i := range cfg.Services {
		if err := srv.setMode(ctx, serviceName(i), "enforce"); err != nil {
			return err
		}
	}
	return nil
}

// sample reads the server's goroutines and heap from /metrics, and its open files and RSS
// from /proc.
func sample(ctx context.Context, srv *server, at time.Duration, answered int64) (Sample, error) {
	s := Sample{At: at, Requests: answered}
	mv, err := srv.metrics(ctx, "go_goroutines", "go_memstats_heap_inuse_bytes")
	if err != nil {
		return s, err
	}
	s.Goroutines, s.HeapInuse = int64(mv["go_goroutines"]), int64(mv["go_memstats_heap_inuse_bytes"])
	if s.FDs, err = openFDs(srv.pid()); err != nil {
		return s, err
	}
	if s.RSS, err = rss(srv.pid()); err != nil {
		return s, err
	}
	if s.Load, err = loadAverage(); err != nil {
		return s, err
	}
	return s, nil
}
