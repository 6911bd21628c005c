// Package volume detects unusual amounts of data sent per key (a service, a service and
// destination) on event time: a single large upload, and slow exfiltration, many intervals
// each somewhat above normal.
//
// The baseline is the distribution of a key's request sizes, kept as exponentially decaying
// sums (half-life of hours) of the sizes, the log2 sizes and their squares: the mean size,
// and the mean and standard deviation of log2 size. Request sizes are roughly log-normal and
// heavy-tailed, so the tests work on log2 sizes, where they are well behaved.
//
// A single large upload is a request whose log2 size is SpikeZ standard deviations above the
// mean and that is at least MinSpikeBytes: a request of 50 MB to a destination that usually
// receives 8 KB stands out even in a busy interval.
//
// Slow exfiltration is caught by a CUSUM over intervals (default one minute): an interval
// whose n requests have log2 sizes l1..ln scores z = Σ(li − mean)/(√n·sd), which is standard
// normal when the requests are ordinary and grows with √n when they all carry more than they
// used to. The CUSUM adds min(z, Cap) − Allowance per interval with requests (an empty
// interval says nothing: over a gap the CUSUM fades with the baseline's half-life, so that a
// key uploading every half hour is judged on its uploads) and raises an alarm at
// Threshold once the bytes above the baseline (n times the mean size, summed since the CUSUM
// left zero) reach MinExcessBytes. Scoring the requests of an interval rather than its total
// makes the test blind to the daily ups and downs of traffic (they change n, not what each
// request carries), which the rate detector watches instead.
//
// A request that raises a spike or arrives while the CUSUM alarms is not learned, and an
// interval that ends in alarm does not age the baseline, so an attack does not become normal
// while it is being reported. The requests of a sustained alarm are kept apart instead (as
// decayed sums like the baseline's): when the alarm has lasted Probation they become the
// baseline, because a lasting change nobody objected to is the new normal and an alarm that
// never ends is an alert storm. Reject keeps the old baseline and the alarm (an operator says
// the shift is not normal); Config.RequireApproval makes every shift wait for Accept.
//
// Between shifts the typical request size may not rise faster than MaxGrowth a day (a
// ceiling on the mean log2 size, MaxGrowth's log2 bits a day), once the key's first day of
// history has set it, so an attacker cannot walk the baseline up by growing its requests
// slowly: with the defaults, sizes growing slower than 25% a day are absorbed (at most ×4.8
// in a week), and sizes growing faster run ahead of the ceiling until the CUSUM alarms: at
// ×2 a day, within a day on a key with a request a minute (the 6-hour half-life alone would
// follow that ramp unnoticed there). The ceiling relaxes towards a lower baseline with a
// half-life of a week.
//
// Gaps cost O(1), and the baseline ages for at most MaxIdle of a gap. An event older than
// the current interval counts in it, so the same events in the same order give the same
// results. A sustained alarm belongs to the key's current interval: while it lasts, every
// request of the key gets it.
//
// A Detector holds the configuration and is safe for concurrent use; a State is one key's
// memory (144 bytes, no pointers) and is not.
package volume

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/meshguard/meshguard/flowmodel/internal/interval"
	"github.com/meshguard/meshguard/flowmodel/internal/wire"
)

// Config tunes a Detector. The zero value of a field means its default.
type Config struct {
	// Interval is the period the CUSUM steps by, at least 1ms. Default: 1 minute.
	Interval time.Duration
	// HalfLife is the event time after which a request weighs half as much in the baseline.
	// Default: 6 hours.
	HalfLife time.Duration
	// Warmup is the history a key needs before its CUSUM may alarm. Default: 1 hour.
	Warmup time.Duration
	// MinRequests is the (decayed) number of requests the baseline needs before any alarm.
	// Default: 20.
	MinRequests float64
	// MaxIdle is the longest part of a gap during which the baseline decays. Default: 1 hour.
	MaxIdle time.Duration

	// SpikeZ is how many standard deviations of log2 size above the mean make a request a
	// spike. Default: 6.
	SpikeZ float64
	// MinSigmaBits is the smallest standard deviation of log2 sizes, so that a key whose
	// requests are all alike (or all empty) does not alarm on a slightly larger one.
	// Default: 1 (a factor of two).
	MinSigmaBits float64
	// MinSpikeBytes is the smallest request that can be a spike. Default: 1 MiB.
	MinSpikeBytes float64

	// Allowance is subtracted from each interval's z: intervals less than Allowance above
	// the baseline lower the CUSUM. Default: 0.5.
	Allowance float64
	// Cap bounds each interval's z, so that one large request (the spike test's business)
	// or a heavy tail does not raise the CUSUM alone. Default: 3.
	Cap float64
	// Threshold is the CUSUM value that raises an alarm. Default: 12.
	Threshold float64
	// MinExcessBytes is the smallest excess over the baseline, summed since the CUSUM last
	// left zero, that raises an alarm. Default: 1 MiB.
	MinExcessBytes float64

	// Probation is how long a sustained alarm must last before the requests it held out
	// become the baseline on their own (unless rejected). At least one interval. Default: 24
	// hours.
	Probation time.Duration
	// RequireApproval, when set, keeps a shift alarming until an operator accepts it: no
	// shift becomes the baseline on its own.
	RequireApproval bool
	// MaxGrowth is the largest factor by which the typical request size may rise in a day,
	// outside probation and Accept, once the key's first day of history has set it; above
	// 1. Default: 1.25.
	MaxGrowth float64
}

// Defaults for zero Config fields.
const (
	DefaultInterval       = time.Minute
	DefaultHalfLife       = 6 * time.Hour
	DefaultWarmup         = time.Hour
	DefaultMinRequests    = 20
	DefaultMaxIdle        = time.Hour
	DefaultSpikeZ         = 6
	DefaultMinSigmaBits   = 1
	DefaultMinSpikeBytes  = 1 << 20
	DefaultAllowance      = 0.5
	DefaultCap            = 3
	DefaultThreshold      = 12
	DefaultMinExcessBytes = 1 << 20
	DefaultProbation      = 24 * time.Hour
	DefaultMaxGrowth      = 1.25
)

// ceilHalfLife is how fast the ceiling of the baseline relaxes towards a baseline below it.
const ceilHalfLife = 7 * 24 * time.Hour

// minWeight is the least weight (in requests) that time alone ages a key's baseline down to.
const minWeight = 100

// cusumFloor is the CUSUM below which a fading one is cleared (with its excess).
const cusumFloor = 1e-3

// Check applies defaults and reports every problem in c.
func (c Config) Check() (Config, error) {
	c.Interval = cmp.Or(c.Interval, DefaultInterval)
	c.HalfLife = cmp.Or(c.HalfLife, DefaultHalfLife)
	c.Warmup = cmp.Or(c.Warmup, DefaultWarmup)
	c.MaxIdle = cmp.Or(c.MaxIdle, DefaultMaxIdle)
	c.MinRequests = cmp.Or(c.MinRequests, DefaultMinRequests)
	c.SpikeZ = cmp.Or(c.SpikeZ, DefaultSpikeZ)
	c.MinSigmaBits = cmp.Or(c.MinSigmaBits, DefaultMinSigmaBits)
	c.MinSpikeBytes = cmp.Or(c.MinSpikeBytes, DefaultMinSpikeBytes)
	c.Allowance = cmp.Or(c.Allowance, DefaultAllowance)
	c.Cap = cmp.Or(c.Cap, DefaultCap)
	c.Threshold = cmp.Or(c.Threshold, DefaultThreshold)
	c.MinExcessBytes = cmp.Or(c.MinExcessBytes, DefaultMinExcessBytes)
	c.MaxGrowth = cmp.Or(c.MaxGrowth, DefaultMaxGrowth)
	c.Probation = cmp.Or(c.Probation, DefaultProbation)

	var errs []error
	errs = append(errs, interval.Check("volume", c.Interval, c.HalfLife)...)
	if c.Warmup < 0 || c.MaxIdle < 0 {
		errs = append(errs, fmt.Errorf("volume warmup and max idle must not be negative, got %s and %s", c.Warmup, c.MaxIdle))
	}
	for _, f := range []struct {
		name string
		v    float64
	}{
		{"min requests", c.MinRequests}, {"spike z", c.SpikeZ}, {"min sigma bits", c.MinSigmaBits},
		{"min spike bytes", c.MinSpikeBytes}, {"allowance", c.Allowance}, {"cap", c.Cap},
		{"threshold", c.Threshold}, {"min excess bytes", c.MinExcessBytes},
	} {
		if !(f.v > 0) || math.IsInf(f.v, 0) {
			errs = append(errs, fmt.Errorf("volume %s must be positive, got %g", f.name, f.v))
		}
	}
	if c.Probation < c.Interval {
		errs = append(errs, fmt.Errorf("volume probation %s is shorter than the interval %s", c.Probation, c.Interval))
	}
	if !(c.MaxGrowth > 1) || math.IsInf(c.MaxGrowth, 0) {
		errs = append(errs, fmt.Errorf("volume max growth must be above 1, got %g", c.MaxGrowth))
	}
	if c.Cap <= c.Allowance {
		errs = append(errs, fmt.Errorf("volume cap %g must exceed the allowance %g", c.Cap, c.Allowance))
	}
	return c, errors.Join(errs...)
}

// Detector scores the bytes keys send. It is immutable and safe for concurrent use; the
// States it updates are not.
type Detector struct {
	cfg        Config
	intervalMS int64
	keep       float64 // 1 − alpha: the weight an interval boundary leaves to the past
	warmN      int64   // intervals of history before the CUSUM may alarm
	idleN      int64   // empty intervals of a gap during which the baseline decays
	probN      int64   // intervals of alarm before a shift is adopted
	dayN       int64   // intervals in a day: the history that sets the ceiling freely
	growBits   float64 // the ceiling's largest rise per interval, in bits
	ceilKeep   float64 // the weight an interval leaves to a ceiling above the baseline
	// Reciprocals of thresholds, to multiply by on the request path.
	invSpikeZ, invSpikeBytes, invThreshold, invExcess float64
}

// New returns a Detector for cfg.
func New(cfg Config) (*Detector, error) {
	cfg, err := cfg.Check()
	if err != nil {
		return nil, err
	}
	iv := cfg.Interval
	return &Detector{
		cfg:           cfg,
		intervalMS:    iv.Milliseconds(),
		keep:          math.Exp(-math.Ln2 * float64(iv) / float64(cfg.HalfLife)),
		warmN:         int64(cfg.Warmup / iv),
		idleN:         int64(cfg.MaxIdle / iv),
		probN:         int64(cfg.Probation / iv),
		dayN:          int64(24 * time.Hour / iv),
		growBits:      math.Log2(cfg.MaxGrowth) * float64(iv) / float64(24*time.Hour),
		ceilKeep:      math.Exp(-math.Ln2 * float64(iv) / float64(ceilHalfLife)),
		invSpikeZ:     1 / cfg.SpikeZ,
		invSpikeBytes: 1 / cfg.MinSpikeBytes,
		invThreshold:  1 / cfg.Threshold,
		invExcess:     1 / cfg.MinExcessBytes,
	}, nil
}

// Config returns the detector's configuration with defaults applied.
func (d *Detector) Config() Config { return d.cfg }

// State is the memory of one key: 144 bytes, no pointers. The zero value is a key never
// seen. It is not safe for concurrent use.
type State struct {
	cur, start int64 // current and first interval
	// The current interval: bytes, requests of known size, sum of their log2 sizes.
	bytes, reqs, lsum float64
	// Baseline: decayed request count and sums of sizes, log2 sizes and squared log2 sizes.
	w, s1, l1, l2 float64
	// The same sums of the requests held out by the current sustained alarm.
	hw, hs1, hl1, hl2 float64
	cusum             float64
	excess            float64 // bytes above the baseline since the CUSUM left zero
	ceil              float64 // the highest the mean log2 size may be
	// held counts the intervals of the current alarm (towards probation) or, once the
	// shift is rejected, the quiet intervals since (a quiet probation lifts the rejection).
	held     int64
	seen     bool
	rejected bool
}

// Result is the verdict on one request and on its interval.
type Result struct {
	// Score is in [0,1] and at least 0.5 exactly when Alarm is set: half the larger of the
	// spike and sustained strengths, each 1 at its threshold.
	Score float64
	// Alarm is Spike || Sustained.
	Alarm bool
	// Spike is set when this request is a single large upload.
	Spike bool
	// Sustained is set when the key's intervals have carried more than their requests
	// normally do for long enough and by enough bytes: slow exfiltration.
	Sustained bool
	// Z is this request's log2 size in standard deviations above the key's mean.
	Z float64
	// Excess is the number of bytes above the baseline since the CUSUM last left zero.
	Excess float64
}

// Observe counts a request of the given size sent at t and returns the verdict on it and
// its interval. A negative size (unknown) is not counted. A t before the current interval
// counts in the current interval.
func (d *Detector) Observe(s *State, t time.Time, bytes int64) Result {
	iv := interval.FloorDiv(t.UnixMilli(), d.intervalMS)
	switch {
	case !s.seen:
		s.seen, s.cur, s.start = true, iv, iv
	case iv > s.cur:
		d.close(s, iv)
	}
	if bytes < 0 {
		return d.result(s, -1, 0)
	}
	x := float64(bytes)
	lg := math.Log2(1 + x)
	s.bytes += x
	s.reqs++
	s.lsum += lg
	r := d.result(s, x, lg)
	switch {
	case !r.Alarm:
		s.w++
		s.s1 += x
		s.l1 += lg
		s.l2 += lg * lg
	case r.Sustained && !r.Spike:
		s.hw++
		s.hs1 += x
		s.hl1 += lg
		s.hl2 += lg * lg
	}
	return r
}

// Peek returns the verdict on s's current interval without counting anything.
func (d *Detector) Peek(s *State) Result { return d.result(s, -1, 0) }

// Typical returns the key's typical request size in bytes (the geometric mean), for
// explanations such as "sent 50 MB where 8 KB is typical"; 0 for a key with no baseline.
func (d *Detector) Typical(s *State) float64 {
	if s.w == 0 {
		return 0
	}
	return math.Exp2(s.l1/s.w) - 1
}

// Accept clears the CUSUM, the excess and any rejection, and makes the requests the current
// alarm held out (if any) the baseline: an operator has judged the recent volume normal.
func (d *Detector) Accept(s *State) {
	d.adopt(s)
	s.rejected = false
}

// Reject keeps the key's baseline as it is: the current shift, or one that starts before a
// probation period has passed without an alarm, keeps alarming instead of becoming the
// baseline after probation. Accept lifts a rejection.
func (d *Detector) Reject(s *State) {
	s.rejected, s.held = true, 0
}

// Shift reports the key's current alarm: how long it has been held out of the baseline
// (towards Probation), and whether it was rejected.
func (d *Detector) Shift(s *State) (held time.Duration, rejected bool) {
	if s.rejected {
		return 0, true
	}
	return time.Duration(s.held) * d.cfg.Interval, false
}

// adopt makes the held-out requests the baseline and clears the alarm. Their sums are
// weighted up to MinRequests at least, so that a quiet key's new baseline can judge.
func (d *Detector) adopt(s *State) {
	if s.hw > 0 {
		// The adopted baseline weighs what the old one did, up to minWeight (and at least
		// MinRequests): a sparse key's shift, held out for a day, is a few dozen requests,
		// and a baseline that light would learn the next shift before it could alarm.
		f := max(1, max(d.cfg.MinRequests, min(minWeight, s.w))/s.hw)
		s.w, s.s1, s.l1, s.l2 = s.hw*f, s.hs1*f, s.hl1*f, s.hl2*f
		s.ceil = max(s.ceil, s.l1/s.w)
	}
	s.hw, s.hs1, s.hl1, s.hl2 = 0, 0, 0, 0
	s.cusum, s.excess, s.held = 0, 0, 0
}

// logStats returns the baseline's mean and standard deviation of log2 request sizes, the
// latter at least MinSigmaBits. Call it with s.w > 0.
func (d *Detector) logStats(s *State) (mean, sd float64) {
	inv := 1 / s.w
	mean = s.l1 * inv
	sd = math.Sqrt(max(s.l2*inv-mean*mean, 0))
	return mean, max(sd, d.cfg.MinSigmaBits)
}

// step returns the CUSUM and the excess after s's current interval, given the baseline's
// log2 statistics. Call it with s.w > 0.
func (d *Detector) step(s *State, m, sd float64) (cusum, excess float64) {
	var z, expected float64
	if s.reqs > 0 {
		z = (s.lsum - s.reqs*m) / (math.Sqrt(s.reqs) * sd)
		expected = s.reqs * s.s1 / s.w
	}
	cusum = min(max(s.cusum+min(z, d.cfg.Cap)-d.cfg.Allowance, 0), 2*d.cfg.Threshold)
	if cusum == 0 {
		return 0, 0
	}
	return cusum, max(s.excess+s.bytes-expected, 0)
}

// result scores the current interval and, unless size is negative, a request of that size
// and log2 size lg.
func (d *Detector) result(s *State, size, lg float64) Result {
	var r Result
	if s.w < d.cfg.MinRequests {
		return r
	}
	m, sd := d.logStats(s)
	var spike float64
	if size >= 0 {
		r.Z = (lg - m) / sd
		spike = max(min(r.Z*d.invSpikeZ, size*d.invSpikeBytes), 0)
		r.Spike = spike >= 1
	}
	var sustained float64
	if s.cur-s.start >= d.warmN {
		cusum, excess := d.step(s, m, sd)
		r.Excess = excess
		sustained = min(cusum*d.invThreshold, excess*d.invExcess)
		r.Sustained = sustained >= 1
	}
	r.Alarm = r.Spike || r.Sustained
	r.Score = min(max(spike, sustained)/2, 1)
	return r
}

// close ends the current interval and the empty ones up to next.
func (d *Detector) close(s *State, next int64) {
	anomalous := false
	if s.w >= d.cfg.MinRequests && s.cur-s.start >= d.warmN {
		m, sd := d.logStats(s)
		s.cusum, s.excess = d.step(s, m, sd)
		anomalous = s.cusum >= d.cfg.Threshold
		// Empty intervals carry no evidence, for or against: over a gap the CUSUM only fades,
		// with the baseline's half-life. Lowering it by the allowance per empty interval (as
		// for an ordinary one) made a key that uploads every half hour forget each upload in
		// the empty minutes after it, so that slow exfiltration by sparse uploads, four times
		// the usual size, never accumulated.
		if gap := next - s.cur - 1; gap > 0 {
			s.cusum *= interval.Pow(d.keep, gap)
			if s.cusum < cusumFloor {
				s.cusum, s.excess = 0, 0
			}
		}
	}
	// The baseline ages by one interval per interval learned from, and by at most MaxIdle
	// of a gap; an anomalous interval, whose requests were not learned, does not age it
	// either, so a long attack neither becomes normal nor wears the baseline away.
	steps := min(next-s.cur, d.idleN+1)
	if anomalous {
		steps--
	}
	f := interval.Pow(d.keep, steps)
	if s.w*f < minWeight && s.w > 0 {
		// A sparse key ages by requests, not by time, below minWeight: a key that sends a
		// few requests an hour would otherwise keep a baseline of a couple of dozen, each
		// new request a twentieth of it, and learn a shift faster than it could alarm.
		f = min(1, minWeight/s.w)
	}
	s.w *= f
	s.s1 *= f
	s.l1 *= f
	s.l2 *= f
	if s.hw > 0 {
		// The held-out requests age with every interval, so that they stand for the shift's
		// recent level.
		f := interval.Pow(d.keep, min(next-s.cur, d.idleN+1))
		s.hw *= f
		s.hs1 *= f
		s.hl1 *= f
		s.hl2 *= f
	}
	if !anomalous && s.w > 0 {
		d.bound(s)
	}
	d.probation(s, anomalous, next-s.cur)
	s.cur, s.bytes, s.reqs, s.lsum = next, 0, 0, 0
}

// bound keeps the mean log2 size under its ceiling, which the first day of history sets
// freely and which then rises by at most MaxGrowth a day and relaxes towards a lower mean.
func (d *Detector) bound(s *State) {
	m := s.l1 / s.w
	switch {
	case s.cur-s.start < d.dayN:
		s.ceil = max(s.ceil, m)
	case m > s.ceil:
		s.ceil = min(m, s.ceil+d.growBits)
		if over := m - s.ceil; over > 0 {
			// Shift every learned log2 size down by over: the variance is unchanged.
			s.l2 += s.w*s.ceil*s.ceil - s.l1*s.l1/s.w
			s.l1 = s.w * s.ceil
			s.s1 *= math.Exp2(-over)
		}
	default:
		s.ceil = m + (s.ceil-m)*d.ceilKeep
	}
}

// probation counts the interval that ends (and the n−1 empty ones after it) towards adopting
// the current shift, or towards lifting a rejection, and adopts a shift that has alarmed for
// Probation.
func (d *Detector) probation(s *State, anomalous bool, n int64) {
	switch {
	case s.rejected:
		if anomalous {
			s.held = 0
		} else {
			s.held += n
		}
		if s.held >= d.probN {
			s.rejected, s.held = false, 0
		}
	case anomalous:
		s.held += n
		if s.held >= d.probN && !d.cfg.RequireApproval {
			d.adopt(s)
		}
	case s.cusum == 0:
		s.held = 0
		s.hw, s.hs1, s.hl1, s.hl2 = 0, 0, 0, 0
	}
}

// stateVersion is the version byte of a State's binary form.
const stateVersion = 1

// AppendBinary appends s's binary form to b (encoding.BinaryAppender), for the store.
func (s *State) AppendBinary(b []byte) ([]byte, error) {
	w := wire.Writer{B: append(b, stateVersion)}
	w.I64(s.cur)
	w.I64(s.start)
	for _, v := range [...]float64{s.bytes, s.reqs, s.lsum, s.w, s.s1, s.l1, s.l2, s.hw, s.hs1, s.hl1, s.hl2, s.cusum, s.excess, s.ceil} {
		w.F64(v)
	}
	w.I64(s.held)
	w.Bool(s.seen)
	w.Bool(s.rejected)
	return w.B, nil
}

// UnmarshalBinary sets s from the form AppendBinary wrote; on error s is unchanged.
func (s *State) UnmarshalBinary(b []byte) error {
	r := wire.NewReader(b, stateVersion)
	var t State
	t.cur = r.I64(wire.AnyInt)
	t.start = r.I64(wire.AnyInt)
	for _, p := range [...]*float64{&t.bytes, &t.reqs, &t.lsum, &t.w, &t.s1, &t.l1, &t.l2, &t.hw, &t.hs1, &t.hl1, &t.hl2, &t.cusum, &t.excess, &t.ceil} {
		*p = r.F64()
	}
	t.held = r.I64(0)
	t.seen = r.Bool()
	t.rejected = r.Bool()
	if err := r.Done(); err != nil {
		return fmt.Errorf("volume state: %w", err)
	}
	*s = t
	return nil
}
