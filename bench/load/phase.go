package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// Phase is one measured run of load against one server.
type Phase struct {
	Name  string
	Conns *Conns
	Mix   *Mix
	// Source returns the k-th request of the phase (k counts from 0).
	Source func(k uint64, r *rand.Rand) Req
	// Count > 0 runs exactly Count exchanges and measures all of them (teaching, scanning).
	// Otherwise the phase runs Warmup, then measures a window of Duration.
	Count            uint64
	Warmup, Duration time.Duration
	// Rate > 0 runs open-loop: exchange k is due at start + k/Rate and its latency counts
	// from then, however late it starts; at most MaxInflight run at once; every exchange due
	// in the window is measured, however long it takes. Otherwise Concurrency workers run
	// exchanges back to back (closed-loop) and the exchanges that end in the window are
	// measured.
	Rate        float64
	MaxInflight int
	Concurrency int
	// Timeout is the per-message timeout (Envoy's message_timeout).
	Timeout time.Duration
	// PID of the server process whose CPU and memory are read; 0 for none.
	PID int
	// Progress receives a line per second; nil for none.
	Progress io.Writer
	Seed     uint64
}

// PhaseResult is what a phase measured.
type PhaseResult struct {
	Name    string
	Rate    float64       // the open-loop rate asked for, 0 for closed-loop
	Elapsed time.Duration // the measurement window (for a counted phase, its run time)
	OK      uint64        // exchanges that completed without failure (including blocked ones)
	// Immediate counts ImmediateResponses by HTTP status.
	Immediate map[int]uint64
	// Failures counts failed exchanges by kind (fail* constants); FirstFailure is an example.
	Failures     map[string]uint64
	FirstFailure string
	// Latency histograms of the exchanges that completed (see Outcome).
	Decision, Held, Stream *HistSnapshot
	// CPU used by the server, this client and the whole machine over CPUSpan of wall time.
	// For closed-loop phases CPUSpan is about the window; for open-loop and counted phases
	// it runs from the start of the window until the last measured exchange ended, so it
	// holds all the work of the measured exchanges.
	ServerCPU, ClientCPU, MachineCPU time.Duration
	CPUSpan                          time.Duration
	closedLoop                       bool
	// Server memory at the start and end of the CPU span, and the highest RSS sampled.
	MemBefore, MemAfter Mem
	RSSPeak             int64
}

// Throughput returns completed exchanges per second.
func (r *PhaseResult) Throughput() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.OK) / r.Elapsed.Seconds()
}

// FailureCount returns the number of failed exchanges.
func (r *PhaseResult) FailureCount() uint64 {
	var n uint64
	for _, c := range r.Failures {
		n += c
	}
	return n
}

// CPUPer1k returns CPU seconds per 1,000 measured exchanges (decisions) for one of the
// result's CPU figures. A closed-loop phase's CPU is taken as a rate over its window.
func (r *PhaseResult) CPUPer1k(cpu time.Duration) float64 {
	if r.OK == 0 || r.CPUSpan <= 0 {
		return 0
	}
	sec := cpu.Seconds()
	if r.closedLoop {
		sec = sec / r.CPUSpan.Seconds() * r.Elapsed.Seconds()
	}
	return sec / float64(r.OK) * 1000
}

// Cores returns cpu as a number of cores busy over the CPU span.
func (r *PhaseResult) Cores(cpu time.Duration) float64 {
	if r.CPUSpan <= 0 {
		return 0
	}
	return cpu.Seconds() / r.CPUSpan.Seconds()
}

var failKinds = []string{failTimeout, failOutOfOrder, failRPC, failSend, failDrain}

// recorder gathers outcomes from many goroutines. Adds share mu's read side and snapshots
// take its write side, so that a snapshot's counters and histograms agree exactly.
type recorder struct {
	mu                     sync.RWMutex
	ok                     atomic.Uint64
	immediate              [600]atomic.Uint64 // by HTTP status; index 0 for out-of-range
	fails                  [5]atomic.Uint64   // by failKinds index
	firstFail              sync.Once
	firstFailMsg           string
	decision, held, stream Histogram
}

func (rec *recorder) add(out Outcome, err error) {
	rec.mu.RLock()
	defer rec.mu.RUnlock()
	if err != nil {
		var se *StreamError
		kind := failRPC
		if errors.As(err, &se) {
			kind = se.Kind
		}
		for i, k := range failKinds {
			if k == kind {
				rec.fails[i].Add(1)
			}
		}
		rec.firstFail.Do(func() { rec.firstFailMsg = err.Error() })
		return
	}
	rec.ok.Add(1)
	if out.Immediate != 0 {
		i := out.Immediate
		if i < 0 || i >= len(rec.immediate) {
			i = 0
		}
		rec.immediate[i].Add(1)
	}
	rec.decision.Record(out.Decision)
	rec.held.Record(out.Held)
	rec.stream.Record(out.Stream)
}

// counts is a recorder's state at one instant.
type counts struct {
	ok                     uint64
	immediate              [600]uint64
	fails                  [5]uint64
	decision, held, stream *HistSnapshot
}

func (rec *recorder) snapshot() counts {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	c := counts{ok: rec.ok.Load()}
	for i := range rec.immediate {
		c.immediate[i] = rec.immediate[i].Load()
	}
	for i := range rec.fails {
		c.fails[i] = rec.fails[i].Load()
	}
	c.decision, c.held, c.stream = rec.decision.Snapshot(), rec.held.Snapshot(), rec.stream.Snapshot()
	return c
}

// clocks are the CPU clocks and server memory at one instant.
type clocks struct {
	at                   time.Time
	server, client, mach time.Duration
	mem                  Mem
}

func readClocks(pid int) clocks {
	c := clocks{at: time.Now(), client: SelfCPU(), mach: MachineCPU()}
	if pid > 0 {
		c.server, _ = ProcCPU(pid)
		c.mem, _ = ProcMem(pid)
	}
	return c
}

// between returns the results recorded from a to b, with the CPU used from ca to cb.
func between(name string, a, b counts, ca, cb clocks) *PhaseResult {
	r := &PhaseResult{
		Name: name, Elapsed: cb.at.Sub(ca.at), OK: b.ok - a.ok,
		Immediate: map[int]uint64{}, Failures: map[string]uint64{},
		Decision: b.decision.Sub(a.decision), Held: b.held.Sub(a.held), Stream: b.stream.Sub(a.stream),
		ServerCPU: cb.server - ca.server, ClientCPU: cb.client - ca.client, MachineCPU: cb.mach - ca.mach,
		CPUSpan: cb.at.Sub(ca.at), MemBefore: ca.mem, MemAfter: cb.mem, RSSPeak: max(ca.mem.RSS, cb.mem.RSS),
	}
	for i := range b.immediate {
		if n := b.immediate[i] - a.immediate[i]; n > 0 {
			r.Immediate[i] = n
		}
	}
	for i, k := range failKinds {
		if n := b.fails[i] - a.fails[i]; n > 0 {
			r.Failures[k] = n
		}
	}
	return r
}

// Run runs the phase and returns its measurements. It returns early, with what it measured so
// far, when ctx is cancelled.
func (p *Phase) Run(ctx context.Context) (*PhaseResult, error) {
	if p.Count == 0 && p.Duration <= 0 {
		return nil, fmt.Errorf("phase %s: needs a count or a duration", p.Name)
	}
	if p.Rate <= 0 && p.Concurrency < 1 {
		return nil, fmt.Errorf("phase %s: closed-loop needs concurrency >= 1", p.Name)
	}
	if p.Timeout <= 0 {
		return nil, fmt.Errorf("phase %s: needs a message timeout", p.Name)
	}
	closed, counted := p.Rate <= 0, p.Count > 0
	// rec holds the measured exchanges, warm those before the window; closed-loop exchanges
	// that end after the window are dropped.
	rec, warm := &recorder{}, &recorder{}
	var stop atomic.Bool
	var next atomic.Uint64 // next k, closed-loop
	var wg sync.WaitGroup
	var cpuStart clocks
	started := false
	if counted {
		cpuStart, started = readClocks(p.PID), true
	}
	begin := time.Now()
	measureFrom := begin.Add(p.Warmup)
	if counted {
		measureFrom = begin
	}
	end := measureFrom.Add(p.Duration)
	one := func(k uint64, r *rand.Rand, due time.Time) {
		ex := p.Mix.Build(p.Source(k, r), r)
		out, err := RunExchange(ctx, p.Conns.Pick(), ex, p.Timeout, due)
		switch {
		case counted:
			rec.add(out, err)
		case !closed: // open loop: by the time it was due
			if due.Before(measureFrom) {
				warm.add(out, err)
			} else {
				rec.add(out, err)
			}
		default: // closed loop: by the time it ended
			switch now := time.Now(); {
			case now.Before(measureFrom):
				warm.add(out, err)
			case now.Before(end):
				rec.add(out, err)
			}
		}
	}

	if closed {
		for w := range p.Concurrency {
			wg.Go(func() {
				r := rand.New(rand.NewPCG(p.Seed, uint64(w)))
				for !stop.Load() && ctx.Err() == nil {
					k := next.Add(1) - 1
					if counted && k >= p.Count {
						return
					}
					one(k, r, time.Now())
				}
			})
		}
	} else {
		sem := make(chan struct{}, max(p.MaxInflight, 1))
		wg.Go(func() {
			interval := float64(time.Second) / p.Rate
			for k := uint64(0); !stop.Load(); k++ {
				due := begin.Add(time.Duration(float64(k) * interval))
				if (counted && k >= p.Count) || (!counted && !due.Before(end)) {
					return
				}
				if d := time.Until(due); d > 0 {
					time.Sleep(d)
				}
				select {
				case sem <- struct{}{}:
				case <-ctx.Done():
					return
				}
				wg.Go(func() {
					defer func() { <-sem }()
					one(k, rand.New(rand.NewPCG(p.Seed, k)), due)
				})
			}
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()

	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var peak int64
	prevCounts, prevClocks := warm.snapshot(), readClocks(p.PID)
	var cpuEnd clocks
	finished := false
	for !finished {
		var timer <-chan time.Time
		switch {
		case !started:
			timer = time.After(time.Until(measureFrom))
		case closed && !counted && !stop.Load():
			timer = time.After(time.Until(end))
		}
		select {
		case <-timer:
			if !started {
				cpuStart, started = readClocks(p.PID), true
				prevCounts, prevClocks = rec.snapshot(), cpuStart
				continue
			}
			stop.Store(true) // closed loop: the window is over; let the in-flight finish
			cpuEnd = readClocks(p.PID)
		case <-done:
			if cpuEnd.at.IsZero() {
				cpuEnd = readClocks(p.PID)
			}
			finished = true
		case <-ctx.Done():
			stop.Store(true)
			<-done // in-flight exchanges end at once: their context is gone
			if cpuEnd.at.IsZero() {
				cpuEnd = readClocks(p.PID)
			}
			finished = true
		case <-tick.C:
			src := rec
			if !started {
				src = warm
			}
			cur, curClocks := src.snapshot(), readClocks(p.PID)
			peak = max(peak, curClocks.mem.RSS)
			// The first tick after the window opens covers only part of a second; /proc's
			// 10ms CPU ticks make such a short interval meaningless, so it is not printed.
			if p.Progress != nil && curClocks.at.Sub(prevClocks.at) >= 500*time.Millisecond {
				progressLine(p.Progress, p.Name, begin, between(p.Name, prevCounts, cur, prevClocks, curClocks), started)
			}
			prevCounts, prevClocks = cur, curClocks
		}
	}
	if !started {
		cpuStart = cpuEnd
	}
	result := between(p.Name, counts{decision: &HistSnapshot{}, held: &HistSnapshot{}, stream: &HistSnapshot{}}, rec.snapshot(), cpuStart, cpuEnd)
	result.Rate, result.closedLoop = p.Rate, closed && !counted
	if !counted {
		result.Elapsed = p.Duration
	}
	result.RSSPeak = max(result.RSSPeak, peak)
	result.FirstFailure = rec.firstFailMsg
	if err := ctx.Err(); err != nil {
		return result, fmt.Errorf("phase %s: %w", p.Name, err)
	}
	return result, nil
}

func progressLine(w io.Writer, name string, begin time.Time, iv *PhaseResult, measuring bool) {
	state := "warmup"
	if measuring {
		state = "measure"
	}
	var imm uint64
	for _, n := range iv.Immediate {
		imm += n
	}
	fmt.Fprintf(w, "%-16s %4.0fs %-7s %8.0f/s  decision p50 %7s p99 %7s  immediate %d  failures %d  server cpu %3.0f%%  client cpu %3.0f%%  rss %s\n",
		name, time.Since(begin).Seconds(), state, iv.Throughput(),
		fmtDur(iv.Decision.Quantile(0.5)), fmtDur(iv.Decision.Quantile(0.99)),
		imm, iv.FailureCount(),
		100*iv.Cores(iv.ServerCPU), 100*iv.Cores(iv.ClientCPU), fmtBytes(iv.MemAfter.RSS))
}

// fmtDur prints a latency with three significant digits in µs or ms.
func fmtDur(d time.Duration) string {
	switch {
	case d < 10*time.Microsecond:
		return fmt.Sprintf("%.2fµs", float64(d)/1e3)
	case d < time.Millisecond:
		return fmt.Sprintf("%.0fµs", float64(d)/1e3)
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.2fms", float64(d)/1e6)
	default:
		return fmt.Sprintf("%.0fms", float64(d)/1e6)
	}
}

// fmtBytes prints a size in MiB (or KiB below 1 MiB).
func fmtBytes(n int64) string {
	if n > -1<<20 && n < 1<<20 {
		return fmt.Sprintf("%.1f KiB", float64(n)/1024)
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}
