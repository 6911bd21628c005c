package main

import (
	"fmt"
	"runtime"
	"strings"
	"time"
)

// report is the markdown of a soak.
func report(r Result) string {
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	c := r.Config
	w("## soak: steady load, no growth\n\n")
	w("Command: `go run ./bench/soak --duration %v --warmup %v --rate %g --services %d --dests %d --new-dest-share %g` (%s, %s/%s, %d CPUs).\n\n",
		c.Duration, c.Warmup, c.Rate, c.Services, c.Dests, c.NewDestShare, runtime.Version(), runtime.GOOS, runtime.GOARCH, runtime.NumCPU())
	verdict := "**passed**"
	if f := r.Failures(); len(f) > 0 {
		verdict = "**failed**: " + strings.Join(f, "; ")
	}
	w("%d requests answered in %v (%.0f/s; %d blocked as never-seen destinations), %d timeouts, %d errors, %d dropped; latency p50 %v, p99 %v. Verdict: %s.\n\n",
		r.Answered, r.Elapsed.Round(time.Second), float64(r.Answered)/max(r.Elapsed.Seconds(), 1e-9), r.Blocked, r.Timeouts, r.Failed, r.Dropped,
		r.P50.Round(time.Microsecond), r.P99.Round(time.Microsecond), verdict)
	var maxLoad float64
	for _, s := range r.Samples {
		maxLoad = max(maxLoad, s.Load)
	}
	w("The machine's 1-minute load average reached %.1f on %d CPUs during the run", maxLoad, runtime.NumCPU())
	if maxLoad > float64(runtime.NumCPU()) {
		w(": other work competed for the CPUs, and timeouts may be its doing rather than meshguard's")
	}
	w(".\n\n")
	w("Growth over the %v after the warm-up (median of the last fifth of the samples minus median of the first fifth):\n\n", c.Duration)
	w("| resource | start | end | max | growth | bound |\n|---|---|---|---|---|---|\n")
	for _, g := range r.Growth {
		mark := ""
		if g.Exceeded {
			mark = " ✗"
		}
		w("| %s | %s | %s | %s | %s%s | %s |\n", g.Name, g.format(g.Start), g.format(g.End), g.format(g.Max), g.format(g.End-g.Start), mark, g.format(g.Bound))
	}
	w("\nSamples (every %v; RSS for reference, not bounded):\n\n", c.Sample)
	w("| at | goroutines | heap in use | open fds | RSS | answered | load |\n|---|---|---|---|---|---|---|\n")
	step := max(1, len(r.Samples)/20)
	for i, s := range r.Samples {
		if i%step != 0 && i != len(r.Samples)-1 {
			continue
		}
		w("| %v | %d | %.1f MiB | %d | %.1f MiB | %d | %.1f |\n", s.At.Round(time.Second), s.Goroutines, float64(s.HeapInuse)/(1<<20), s.FDs, float64(s.RSS)/(1<<20), s.Requests, s.Load)
	}
	w("\n")
	return b.String()
}
