package main

import (
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"
)

// The goals of the issue "Proof under load and faults", on the 2-core machine.
const (
	goalThroughputRatio = 0.9                    // meshguard's saturation throughput / the null server's
	goalAddedP99        = 100 * time.Microsecond // added p99 at OpenFraction of the null saturation rate
)

// TargetResult is one phase's result for one target.
type TargetResult struct {
	Target string
	Round  int
	Result *PhaseResult
}

// TargetMem is a server's memory at some point.
type TargetMem struct {
	Target string
	Mem    Mem
}

// Machine describes where the run happened.
type Machine struct {
	Go, CPU, Kernel string
	NumCPU          int
}

func machineInfo() Machine {
	m := Machine{Go: runtime.Version(), NumCPU: runtime.NumCPU(), CPU: "unknown", Kernel: "unknown"}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	return m
}

// Report gathers a run's results and renders them.
type Report struct {
	Cfg      Config
	Command  string
	Machine  Machine
	Started  time.Time
	Idle     []TargetMem // server memory when ready
	After    []TargetMem // server memory after the measured rounds
	Teach    []TargetResult
	OpenRate float64
	// Saturation and Open hold the closed-loop and open-loop phases in run order.
	Saturation, Open []TargetResult
	Profiles         []string
	Scale            *ScaleResult
}

// MeanThroughput is target's mean saturation throughput over the rounds.
func (r *Report) MeanThroughput(target string) float64 {
	var sum float64
	var n int
	for _, tr := range r.Saturation {
		if tr.Target == target {
			sum += tr.Result.Throughput()
			n++
		}
	}
	if n == 0 {
		return 0
	}
	return sum / float64(n)
}

// aggregate is one target's phases of one kind taken together.
type aggregate struct {
	ok                     uint64
	elapsed                time.Duration
	decision, held, stream HistSnapshot
	server, client         time.Duration
	immediate, failures    uint64
}

func aggregateOf(list []TargetResult, target string) (aggregate, bool) {
	var a aggregate
	found := false
	for _, tr := range list {
		if tr.Target != target {
			continue
		}
		found = true
		p := tr.Result
		a.ok += p.OK
		a.elapsed += p.Elapsed
		a.decision.Merge(p.Decision)
		a.held.Merge(p.Held)
		a.stream.Merge(p.Stream)
		// CPU attributed to the measured decisions (see PhaseResult.CPUPer1k)
		a.server += time.Duration(p.CPUPer1k(p.ServerCPU) * float64(p.OK) / 1000 * float64(time.Second))
		a.client += time.Duration(p.CPUPer1k(p.ClientCPU) * float64(p.OK) / 1000 * float64(time.Second))
		for _, n := range p.Immediate {
			a.immediate += n
		}
		a.failures += p.FailureCount()
	}
	return a, found
}

func per1k(cpu time.Duration, n uint64) float64 {
	if n == 0 {
		return 0
	}
	return cpu.Seconds() / float64(n) * 1000
}

// otherCores is the CPU other processes (other tenants) used during p, in cores.
func otherCores(p *PhaseResult) float64 {
	return max(0, p.Cores(p.MachineCPU-p.ServerCPU-p.ClientCPU))
}

// header writes a section's title, the command and where it ran.
func (r *Report) header(b *strings.Builder, title string) {
	c := r.Cfg
	fmt.Fprintf(b, "## %s\n\n", title)
	fmt.Fprintf(b, "Command (from the repository root):\n\n```\n%s\n```\n\n", r.Command)
	fmt.Fprintf(b, "Run %s on %d × %s, Linux %s, %s. The load generator shares the machine with the server", r.Started.UTC().Format("2006-01-02 15:04 MST"), r.Machine.NumCPU, r.Machine.CPU, r.Machine.Kernel, r.Machine.Go)
	if len(c.ServerCPUs) > 0 || len(c.ClientCPUs) > 0 {
		fmt.Fprintf(b, " (servers pinned to CPUs %v, load generator to %v)", c.ServerCPUs, c.ClientCPUs)
	} else {
		fmt.Fprintf(b, " (no pinning)")
	}
	fmt.Fprintf(b, "; \"other\" is CPU used meanwhile by processes outside this benchmark (other tenants), in cores.\n\n")
}

// Markdown renders the measured rounds as the "load" section of bench/RESULTS.md, empty when
// no target was measured.
func (r *Report) Markdown() string {
	if len(r.Saturation) == 0 && len(r.Open) == 0 {
		return ""
	}
	var b strings.Builder
	c := r.Cfg
	w := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	r.header(&b, "Load: ext_proc decisions, meshguard against a null server")
	phases := "request_headers"
	if c.Mix.Body {
		phases += fmt.Sprintf(", request_body (BUFFERED, %d B, POST/PUT only)", c.Mix.BodyBytes)
	}
	if c.Mix.Response {
		phases += ", response_headers"
	}
	w("Traffic: %d services in %d namespaces, %d known destinations each, %.1f%% of requests to never-seen destinations; phases %s; %d HTTP/2 connections per server, message timeout %v. Each server first got %d request(s) per (service, destination) pair while learning", c.Mix.Services, c.Mix.Namespaces, c.Mix.DestsPerService, 100*c.Mix.NewDestShare, phases, c.Conns, c.Timeout, c.Teach)
	if c.EnforceMode != "" {
		w("; meshguard's services were then switched to `%s`", c.EnforceMode)
	}
	w(".\n\n")
	if len(r.Saturation) > 0 {
		w("### Saturation (closed loop, %d concurrent streams, %v measured per phase after %v warm-up)\n\n", c.Concurrency, c.Duration, c.Warmup)
		r.phaseTable(&b, r.Saturation)
	}
	if len(r.Open) > 0 {
		w("### Open loop at %.0f decisions/s", r.OpenRate)
		if c.OpenRate <= 0 {
			w(" (%.0f%% of the null server's saturation throughput)", 100*c.OpenFraction)
		}
		w("\n\nLatency counts from each request's intended start, so a server that falls behind is charged for the wait (no coordinated omission).\n\n")
		r.phaseTable(&b, r.Open)
	}
	r.goals(&b)
	if worst := r.worstOther(); worst > noisyOther {
		w("**Noisy run:** processes outside the benchmark used up to %.2f cores during a measured phase (column \"other\"), so these figures understate what the machine can do and the rounds disagree; rerun on a quiet machine before drawing conclusions.\n\n", worst)
	}
	if len(r.Idle) > 0 {
		w("Server memory (RSS): ")
		var parts []string
		for _, m := range r.Idle {
			after := ""
			for _, a := range r.After {
				if a.Target == m.Target {
					after = fmt.Sprintf(", %s after the rounds", fmtBytes(a.Mem.RSS))
				}
			}
			parts = append(parts, fmt.Sprintf("%s %s when ready%s", m.Target, fmtBytes(m.Mem.RSS), after))
		}
		w("%s.\n\n", strings.Join(parts, "; "))
	}
	if len(r.Profiles) > 0 {
		w("CPU profiles under saturation (`go tool pprof -top FILE`): %s.\n\n", strings.Join(r.Profiles, ", "))
	}
	return b.String()
}

// ScaleMarkdown renders the scale scenario as the "load-scale" section of bench/RESULTS.md,
// empty when it did not run.
func (r *Report) ScaleMarkdown() string {
	if r.Scale == nil {
		return ""
	}
	var b strings.Builder
	r.header(&b, "Load at scale: many services, then a hostile scan")
	r.scale(&b)
	return b.String()
}

func (r *Report) phaseTable(b *strings.Builder, list []TargetResult) {
	fmt.Fprintf(b, "| phase | decisions/s | decision p50 | p90 | p99 | p99.9 | held p99 | p99.9 | server CPU s/1k | client CPU s/1k | other | immediate | failures |\n")
	fmt.Fprintf(b, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, tr := range list {
		p := tr.Result
		var imm uint64
		for _, n := range p.Immediate {
			imm += n
		}
		fmt.Fprintf(b, "| %s | %.0f | %s | %s | %s | %s | %s | %s | %.4f | %.4f | %.2f | %d | %s |\n",
			p.Name, p.Throughput(),
			fmtDur(p.Decision.Quantile(0.5)), fmtDur(p.Decision.Quantile(0.9)), fmtDur(p.Decision.Quantile(0.99)), fmtDur(p.Decision.Quantile(0.999)),
			fmtDur(p.Held.Quantile(0.99)), fmtDur(p.Held.Quantile(0.999)),
			p.CPUPer1k(p.ServerCPU), p.CPUPer1k(p.ClientCPU), otherCores(p), imm, failures(p))
	}
	fmt.Fprintln(b)
}

func failures(p *PhaseResult) string {
	if len(p.Failures) == 0 {
		return "0"
	}
	keys := make([]string, 0, len(p.Failures))
	for k := range p.Failures {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%d %s", p.Failures[k], k))
	}
	return strings.Join(parts, ", ")
}

func (r *Report) goals(b *strings.Builder) {
	nullSat, okN := aggregateOf(r.Saturation, "null")
	mgSat, okM := aggregateOf(r.Saturation, "meshguard")
	if !okN || !okM {
		fmt.Fprintf(b, "Ratios to the null server need both targets in one run (measured here: %s).\n\n", strings.Join(r.Cfg.Targets, ", "))
		return
	}
	nullOpen, _ := aggregateOf(r.Open, "null")
	mgOpen, _ := aggregateOf(r.Open, "meshguard")
	noisy := ""
	if r.worstOther() > noisyOther {
		noisy = " (noisy run)"
	}
	verdict := func(met bool) string {
		if met {
			return "met" + noisy
		}
		return "**not met**" + noisy
	}
	tn, tm := r.MeanThroughput("null"), r.MeanThroughput("meshguard")
	ratio := 0.0
	if tn > 0 {
		ratio = tm / tn
	}
	fmt.Fprintf(b, "### Against the goals (all rounds of each server taken together)\n\n")
	fmt.Fprintf(b, "| measure | null | meshguard | meshguard vs null | goal | status |\n|---|--:|--:|--:|--:|---|\n")
	var perRound []string
	for round := 1; round <= r.Cfg.Rounds; round++ {
		var n, m float64
		for _, tr := range r.Saturation {
			if tr.Round == round && tr.Target == "null" {
				n = tr.Result.Throughput()
			}
			if tr.Round == round && tr.Target == "meshguard" {
				m = tr.Result.Throughput()
			}
		}
		if n > 0 && m > 0 {
			perRound = append(perRound, fmt.Sprintf("×%.2f", m/n))
		}
	}
	fmt.Fprintf(b, "| saturation throughput (decisions/s, mean of rounds) | %.0f | %.0f | ×%.3f (rounds: %s) | ≥ ×%.1f | %s |\n", tn, tm, ratio, strings.Join(perRound, ", "), goalThroughputRatio, verdict(ratio >= goalThroughputRatio))
	for _, q := range []struct {
		name string
		hn   *HistSnapshot
		hm   *HistSnapshot
		goal bool
	}{
		{"decision p99 (request headers), open loop", &nullOpen.decision, &mgOpen.decision, true},
		{"held p99 (all phases), open loop", &nullOpen.held, &mgOpen.held, true},
		{"decision p50, open loop", &nullOpen.decision, &mgOpen.decision, false},
	} {
		pct := 0.99
		if !q.goal {
			pct = 0.5
		}
		vn, vm := q.hn.Quantile(pct), q.hm.Quantile(pct)
		goal, status := "", ""
		if q.goal {
			goal, status = "≤ +"+fmtDur(goalAddedP99), verdict(vm-vn <= goalAddedP99)
		}
		fmt.Fprintf(b, "| %s | %s | %s | %s | %s | %s |\n", q.name, fmtDur(vn), fmtDur(vm), fmtDelta(vm-vn), goal, status)
	}
	sn, sm := per1k(nullSat.server, nullSat.ok), per1k(mgSat.server, mgSat.ok)
	fmt.Fprintf(b, "| server CPU s per 1,000 decisions, saturation | %.4f | %.4f | ×%.2f | | |\n", sn, sm, safeDiv(sm, sn))
	cn, cm := per1k(nullSat.client, nullSat.ok), per1k(mgSat.client, mgSat.ok)
	fmt.Fprintf(b, "| client CPU s per 1,000 decisions, saturation | %.4f | %.4f | ×%.2f | | |\n", cn, cm, safeDiv(cm, cn))
	var rn, rm int64
	for _, a := range r.After {
		switch a.Target {
		case "null":
			rn = a.Mem.RSS
		case "meshguard":
			rm = a.Mem.RSS
		}
	}
	fmt.Fprintf(b, "| server RSS after the rounds | %s | %s | ×%.2f | | |\n\n", fmtBytes(rn), fmtBytes(rm), safeDiv(float64(rm), float64(rn)))
	fmt.Fprintf(b, "The client runs on the same cores: at saturation it used %.4f CPU s per 1,000 decisions against the null server, which is CPU the server under test could not have. A throughput ratio below the goal can come from the server's own cost per decision (server CPU row) or from the client taking a larger share of the cores; read the two CPU rows together.\n\n", cn)
}

// noisyOther is the CPU (in cores) other processes may use during a phase before the report
// calls the run noisy.
const noisyOther = 0.2

func (r *Report) worstOther() float64 {
	var worst float64
	for _, list := range [][]TargetResult{r.Saturation, r.Open} {
		for _, tr := range list {
			worst = max(worst, otherCores(tr.Result))
		}
	}
	return worst
}

// fmtDelta prints a signed latency difference.
func fmtDelta(d time.Duration) string {
	if d < 0 {
		return "−" + fmtDur(-d)
	}
	return "+" + fmtDur(d)
}

func safeDiv(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

func (r *Report) scale(b *strings.Builder) {
	s := r.Scale
	w := func(format string, a ...any) { fmt.Fprintf(b, format, a...) }
	w("### %d services × %d destinations, then one service scans %d addresses\n\n", s.Services, s.Dests, s.ScanIPs)
	w("A fresh meshguard learned every (service, destination) pair through ext_proc streams, then every service was switched to `enforce` (%v for %d PUTs). Service `%s` then sent one request to each of %d distinct addresses it had never used.\n\n", s.ModeSwitch.Round(time.Millisecond), s.Services, "ns-0/wl-0", s.ScanIPs)
	w("| point | RSS | anon | file | Go heap in use |\n|---|--:|--:|--:|--:|\n")
	heap := func(v float64) string {
		if v < 0 {
			return "n/a"
		}
		return fmtBytes(int64(v))
	}
	w("| start (after %d warm-up requests) | %s | %s | %s | %s |\n", min(warmupExchanges, s.Services*s.Dests), fmtBytes(s.Start.RSS), fmtBytes(s.Start.Anon), fmtBytes(s.Start.File), heap(s.HeapStart))
	w("| loaded (%d destinations) | %s | %s | %s | %s |\n", s.Services*s.Dests, fmtBytes(s.Loaded.RSS), fmtBytes(s.Loaded.Anon), fmtBytes(s.Loaded.File), heap(s.HeapLoaded))
	w("| enforcing | %s | %s | %s | |\n", fmtBytes(s.Enforced.RSS), fmtBytes(s.Enforced.Anon), fmtBytes(s.Enforced.File))
	w("| after the scan (peak during it %s) | %s | %s | %s | %s |\n\n", fmtBytes(s.ScanPeak), fmtBytes(s.Scanned.RSS), fmtBytes(s.Scanned.Anon), fmtBytes(s.Scanned.File), heap(s.HeapScanned))
	w("- Memory per service (%d destinations): %s RSS", s.Dests, fmtBytes(int64(s.PerService())))
	if h := s.HeapPerService(); h >= 0 {
		w(", %s Go heap", fmtBytes(int64(h)))
	}
	w(".\n")
	if s.ServicesListed >= 0 {
		w("- `GET /v1/services` listed %d services.\n", s.ServicesListed)
	}
	if s.Load != nil {
		w("- Loading: %.0f decisions/s, %s failures.\n", s.Load.Throughput(), failures(s.Load))
	}
	if s.Known != nil {
		w("- After the switch, %d of %d requests to known destinations were blocked (should be 0).\n", s.KnownBlocked, s.Known.OK+s.Known.FailureCount())
	}
	if s.Scan != nil {
		w("- Scan: %d of %d requests answered with ImmediateResponse 403, %s failures, %.0f decisions/s, decision p99 %s: **%s**.\n",
			s.ScanBlocked, s.ScanIPs, failures(s.Scan), s.Scan.Throughput(), fmtDur(s.Scan.Decision.Quantile(0.99)), passFail(s.AllBlocked, "every scan request blocked", "NOT every scan request blocked"))
		live := "n/a"
		if s.LiveGrowth != -1 {
			live = fmtBytes(int64(s.LiveGrowth))
		}
		w("- Memory during the scan: meshguard retained %s more heap (live heap after a forced collection: %s before, %s after; bound ±%s), and its RSS grew by %s (bound %s: %s plus the collector's headroom, as much as the live heap with GOGC=100): **%s**. The bounds: meshguard keeps at most a fixed number of destinations per service (least recently used forgotten first) and must not remember what it blocks, so a scan of %d addresses may cost garbage, never retained memory proportional to the addresses.\n",
			live, heap(s.LiveEnforced), heap(s.LiveScanned), fmtBytes(s.Bound), fmtBytes(s.Growth), fmtBytes(s.RSSBound), fmtBytes(s.Bound),
			passFail(s.WithinBound, "within", "EXCEEDED"), s.ScanIPs)
	}
	w("\n")
}

func passFail(ok bool, yes, no string) string {
	if ok {
		return yes
	}
	return no
}
