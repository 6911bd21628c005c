package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// The scale scenario: load many services with many destinations each through ext_proc streams
// while they learn, switch them all to enforce, read the memory that costs, then let one
// service scan a million addresses it never used and check that every scan request is blocked
// and that memory stays within a stated bound.

// ScaleTarget is the meshguard process the scenario drives.
type ScaleTarget struct {
	Conns *Conns
	PID   int    // whose /proc memory is read
	Admin string // admin base URL
}

// ScaleResult is what the scale scenario measured.
type ScaleResult struct {
	Services, Dests, ScanIPs int
	Bound                    int64 // allowed RSS growth during the scan
	// Memory: at start (after a short warm-up), after loading, after the switch to enforce,
	// after the scan; ScanPeak is the highest RSS sampled during the scan.
	Start, Loaded, Enforced, Scanned Mem
	ScanPeak                         int64
	// Go heap in use from /metrics (go_memstats_heap_inuse_bytes), -1 when not exported.
	HeapStart, HeapLoaded, HeapScanned float64
	// LiveEnforced and LiveScanned are the heap in use right after a garbage collection
	// (forced through /debug/pprof/heap?gc=1): what meshguard retains, before and after the
	// scan; -1 when unknown.
	LiveEnforced, LiveScanned float64
	ServicesListed            int // from GET /v1/services, -1 when not parsable
	Load, Known, Scan         *PhaseResult
	ModeSwitch                time.Duration
	KnownBlocked              uint64 // known-destination requests blocked after enforce
	ScanBlocked               uint64 // scan requests answered with ImmediateResponse 403
	AllBlocked                bool
	Growth                    int64 // max(ScanPeak, Scanned.RSS) - Enforced.RSS
	// The bounds: the scan may make meshguard retain at most Bound more heap (LiveGrowth),
	// and grow its RSS at most by Bound plus the collector's headroom (GOGC=100: as much
	// garbage as live heap may accumulate before a collection).
	LiveGrowth  float64
	RSSBound    int64
	WithinBound bool
}

// PerService returns RSS bytes per loaded service.
func (s *ScaleResult) PerService() float64 {
	return float64(s.Loaded.RSS-s.Start.RSS) / float64(s.Services)
}

// HeapPerService returns Go heap bytes per loaded service, or -1 when unknown.
func (s *ScaleResult) HeapPerService() float64 {
	if s.HeapStart < 0 || s.HeapLoaded < 0 {
		return -1
	}
	return (s.HeapLoaded - s.HeapStart) / float64(s.Services)
}

const (
	warmupExchanges = 1000 // at most, before the memory baseline, so that gRPC's buffers are in it
	knownChecks     = 1000 // at most, known-destination requests after the switch to enforce
	hostileService  = 0    // the service that scans
)

// RunScale runs the scenario against t.
func RunScale(ctx context.Context, t ScaleTarget, cfg Config, progress io.Writer, log *slog.Logger) (*ScaleResult, error) {
	mix, err := NewMix(MixConfig{Services: cfg.ScaleServices, Namespaces: cfg.Mix.Namespaces, DestsPerService: cfg.ScaleDests,
		Response: cfg.Mix.Response, ProtocolConfig: cfg.Mix.ProtocolConfig})
	if err != nil {
		return nil, err
	}
	res := &ScaleResult{Services: cfg.ScaleServices, Dests: cfg.ScaleDests, ScanIPs: cfg.ScanIPs, Bound: cfg.ScanRSSBound}
	phase := func(name string, count uint64, src func(uint64, *rand.Rand) Req) *Phase {
		return &Phase{Name: name, Conns: t.Conns, Mix: mix, Source: src, Count: count, Concurrency: cfg.ScaleConcurrency,
			Timeout: cfg.Timeout, PID: t.PID, Progress: progress, Seed: cfg.Seed}
	}
	heap := func() float64 {
		v, ok, err := Metric(ctx, t.Admin, "go_memstats_heap_inuse_bytes")
		if err != nil || !ok {
			return -1
		}
		return v
	}

	pairs := uint64(cfg.ScaleServices * cfg.ScaleDests)
	if _, err := phase("scale-warmup", min(warmupExchanges, pairs), func(k uint64, _ *rand.Rand) Req { return mix.Pair(int(k % pairs)) }).Run(ctx); err != nil {
		return nil, err
	}
	res.Start, res.HeapStart = mustMem(t.PID), heap()

	if res.Load, err = phase("scale-load", pairs, func(k uint64, _ *rand.Rand) Req { return mix.Pair(int(k)) }).Run(ctx); err != nil {
		return nil, err
	}
	// A few timeouts while a million destinations are learned are reported (the report's
	// loading line); more than 1% means the run measured nothing.
	if n := res.Load.FailureCount(); n*100 > pairs {
		return res, fmt.Errorf("loading: %d of %d exchanges failed, first: %s", n, pairs, res.Load.FirstFailure)
	}
	res.Loaded, res.HeapLoaded = mustMem(t.PID), heap()
	res.ServicesListed = -1
	if n, ok, err := ServiceCount(ctx, t.Admin); err == nil && ok {
		res.ServicesListed = n
	}
	log.Info("scale: loaded", "services", cfg.ScaleServices, "destinations", pairs, "rss", fmtBytes(res.Loaded.RSS))

	if res.ModeSwitch, err = SetModes(ctx, t.Admin, cfg.ScaleServices, mix.ServiceName, "enforce"); err != nil {
		return res, fmt.Errorf("switch to enforce: %w", err)
	}
	if res.Known, err = phase("scale-known", min(knownChecks, pairs), func(_ uint64, r *rand.Rand) Req {
		return mix.Known(r.IntN(cfg.ScaleServices), r.IntN(cfg.ScaleDests))
	}).Run(ctx); err != nil {
		return res, err
	}
	for _, n := range res.Known.Immediate {
		res.KnownBlocked += n
	}
	res.Enforced = mustMem(t.PID)
	res.LiveEnforced = liveHeap(ctx, t.Admin)
	log.Info("scale: enforcing", "took", res.ModeSwitch, "known_blocked", res.KnownBlocked, "rss", fmtBytes(res.Enforced.RSS))

	if res.Scan, err = phase("scale-scan", uint64(cfg.ScanIPs), func(k uint64, _ *rand.Rand) Req {
		return mix.Unseen(hostileService, uint32(k))
	}).Run(ctx); err != nil {
		return res, err
	}
	res.Scanned, res.HeapScanned = mustMem(t.PID), heap()
	res.LiveScanned = liveHeap(ctx, t.Admin)
	res.ScanPeak = res.Scan.RSSPeak
	res.ScanBlocked = res.Scan.Immediate[403]
	res.AllBlocked = res.ScanBlocked == uint64(cfg.ScanIPs) && res.Scan.FailureCount() == 0
	res.Growth = max(res.ScanPeak, res.Scanned.RSS) - res.Enforced.RSS
	res.RSSBound = res.Bound
	if res.LiveEnforced >= 0 {
		res.RSSBound += int64(res.LiveEnforced)
	}
	res.LiveGrowth = -1
	if res.LiveEnforced >= 0 && res.LiveScanned >= 0 {
		res.LiveGrowth = res.LiveScanned - res.LiveEnforced
	}
	res.WithinBound = res.Growth <= res.RSSBound && res.LiveGrowth >= -float64(res.Bound) && res.LiveGrowth <= float64(res.Bound)
	return res, nil
}

// liveHeap forces a garbage collection in meshguard (its /debug/pprof/heap?gc=1, with
// --pprof) and returns the heap in use after it, or -1.
func liveHeap(ctx context.Context, admin string) float64 {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, admin+"/debug/pprof/heap?gc=1", nil)
	if err != nil {
		return -1
	}
	resp, err := adminClient.Do(req)
	if err != nil {
		return -1
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return -1
	}
	v, ok, err := Metric(ctx, admin, "go_memstats_heap_inuse_bytes")
	if err != nil || !ok {
		return -1
	}
	return v
}

func mustMem(pid int) Mem {
	m, _ := ProcMem(pid) // zero when unreadable; the report shows it as such
	return m
}

// runScaleChild starts a fresh meshguard for the scale scenario and runs it.
func runScaleChild(ctx context.Context, cfg Config, bin, work string, progress io.Writer, log *slog.Logger) (*ScaleResult, error) {
	dataDir := filepath.Join(work, "scale-meshguard")
	if err := os.MkdirAll(dataDir, 0o755); err != nil {
		return nil, err
	}
	spec, err := serverSpec(cfg, "meshguard", bin, work, dataDir, true) // --pprof: live heap after a forced GC
	if err != nil {
		return nil, err
	}
	s, err := StartServer(ctx, spec)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err := s.Stop(); err != nil {
			log.Warn("stop", "server", "meshguard", "err", err)
		}
	}()
	conns, err := Dial(ctx, spec.Target, cfg.Conns)
	if err != nil {
		return nil, err
	}
	defer conns.Close()
	res, err := RunScale(ctx, ScaleTarget{Conns: conns, PID: s.PID, Admin: spec.Admin}, cfg, progress, log)
	if err == nil && !s.Alive() {
		err = fmt.Errorf("meshguard exited during the scenario (log: %s)", spec.LogPath)
	}
	return res, err
}
