// Package rate detects sustained increases in the number of requests per key (a service, a
// service and destination) on event time.
//
// Requests are counted per interval (default one minute). A baseline, the exponentially
// weighted moving average of the counts with a half-life of hours, follows slow changes such
// as the daily cycle. Each closed interval feeds a Poisson CUSUM that tests the hypothesis
// "the rate is now Ratio times the baseline" against "the rate is the baseline": it
// accumulates the log-likelihood ratio of every interval and raises an alarm when the sum
// reaches Threshold. With the defaults a worker that normally makes 5 requests an hour and
// starts making 50 is flagged after 11 minutes if its requests are evenly spaced, after 13 on
// average and 27 at worst over 50 simulated Poisson runs, while a smooth daily cycle of ×3
// between night and day raises no alarm in a week at 2 to 6000 requests an hour.
// The CUSUM is scaled by the observed dispersion of the counts, so that a key whose requests
// come in batches (ten at once, every hour) does not alarm on every batch.
//
// An interval that raises or keeps up an alarm is not merged into the baseline, so an attack
// does not become normal while it is being reported. A level shift that keeps the alarm up
// for longer than Probation becomes the new baseline (the recent level, about the last fifteen
// intervals), because a lasting change nobody objected to is the new normal and an alarm that
// never ends is an alert storm; Reject keeps the old baseline and the alarm (an operator says
// the shift is not normal), and Config.RequireApproval makes every shift wait for Accept.
// Accept makes the current level the new normal at once.
//
// Between shifts the baseline may not rise faster than MaxGrowth a day (a ceiling it is
// clamped to), once the key's first day of history has set it, so an attacker cannot walk it
// up by ramping slowly: with the defaults (×1.25 a day, a half-life of 6 hours) a ramp slower
// than 25% a day is absorbed (after a week the rate is at most 4.8 times where it began), and
// a ramp at a factor r > 1.25 a day runs ahead of the ceiling and alarms once it is about
// Tolerance·(Ratio−1)/ln(Ratio) = 2.73 times above it, after about ln 2.73/ln(r/1.25) days:
// 1.5 days at ×2 a day, 5.5 days at ×1.5 a day. A daily cycle does not push the ceiling: it
// is set by the first day's peak, and relaxes towards the baseline with a half-life of a week.
// Empty intervals are merged in O(1) however long the gap, and gaps longer
// than MaxIdle do not teach the baseline at all (a service scaled to zero over a weekend does
// not look like a spike on Monday). Events older than the current interval count in it, so
// the same events in the same order always give the same results.
//
// A Detector holds the configuration and is safe for concurrent use; a State is one key's
// memory (80 bytes, no pointers) and is not.
//
// Seasonal is the second detector of the package: it learns a key's hour-of-day profile
// (weekends apart) and alarms on rises and drops against it, above a minimum rate, so a
// service that stops calling, or calls at 3am as it does at noon, is seen. Its state holds
// the profile (584 bytes), so it is meant for a service's total rate.
package rate

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
	// Interval is the counting period, at least 1ms. Default: 1 minute.
	Interval time.Duration
	// HalfLife is how fast the baseline follows changes: after a change of level, half the
	// difference is learned in HalfLife. Default: 6 hours.
	HalfLife time.Duration
	// Tolerance is the factor by which the rate may exceed the baseline without counting as
	// evidence: the CUSUM compares the counts with Tolerance times the baseline. It absorbs
	// the lag of the baseline behind a daily cycle (up to ×1.47 for a ×3 cycle with the
	// default half-life). Default: 1.5.
	Tolerance float64
	// Ratio is the increase over Tolerance times the baseline that the CUSUM is tuned to
	// detect. The CUSUM rises while the rate stays above Tolerance·(Ratio-1)/ln(Ratio) times
	// the baseline (2.73 with the defaults) and falls otherwise. Default: 3.
	Ratio float64
	// Threshold is the CUSUM value, in nats of log-likelihood ratio, that raises an alarm.
	// Higher means fewer false alarms and slower detection. Default: 8.
	Threshold float64
	// Warmup is the history the baseline needs before alarms are raised. Default: 1 hour.
	Warmup time.Duration
	// MaxIdle is the longest run of empty intervals the baseline learns from; a longer gap
	// leaves it as it was after MaxIdle. Default: 1 hour.
	MaxIdle time.Duration
	// MinBaseline is the smallest baseline, in requests per interval, so that a key that was
	// almost silent does not alarm on its first few requests. Default: 0.01.
	MinBaseline float64
	// MaxDispersion caps the variance-to-mean ratio of the counts that scales the CUSUM down
	// for bursty keys. Default: 100.
	MaxDispersion float64

	// Probation is how long a level shift must keep the alarm up before it becomes the
	// baseline on its own (unless rejected). At least one interval. Default: 24 hours.
	Probation time.Duration
	// RequireApproval, when set, keeps a shift alarming until an operator accepts it: no
	// shift becomes the baseline on its own.
	RequireApproval bool
	// MaxGrowth is the largest factor by which the baseline may rise in a day, outside
	// probation and Accept, once the key's first day of history has set it; above 1.
	// Default: 1.25.
	MaxGrowth float64
}

// Defaults for zero Config fields.
const (
	DefaultInterval      = time.Minute
	DefaultHalfLife      = 6 * time.Hour
	DefaultTolerance     = 1.5
	DefaultRatio         = 3
	DefaultThreshold     = 8
	DefaultWarmup        = time.Hour
	DefaultMaxIdle       = time.Hour
	DefaultMinBaseline   = 0.01
	DefaultMaxDispersion = 100
	DefaultProbation     = 24 * time.Hour
	DefaultMaxGrowth     = 1.25
)

// ceilHalfLife is how fast the ceiling of the baseline relaxes towards a baseline below it.
const ceilHalfLife = 7 * 24 * time.Hour

// fastHalfLife is the half-life, in intervals, of the short-term mean that Accept adopts.
const fastHalfLife = 15

// Check applies defaults and reports every problem in c.
func (c Config) Check() (Config, error) {
	var errs []error
	c.Interval = cmp.Or(c.Interval, DefaultInterval)
	c.HalfLife = cmp.Or(c.HalfLife, DefaultHalfLife)
	c.Warmup = cmp.Or(c.Warmup, DefaultWarmup)
	c.MaxIdle = cmp.Or(c.MaxIdle, DefaultMaxIdle)
	c.Ratio = cmp.Or(c.Ratio, DefaultRatio)
	c.Tolerance = cmp.Or(c.Tolerance, DefaultTolerance)
	c.Threshold = cmp.Or(c.Threshold, DefaultThreshold)
	c.MinBaseline = cmp.Or(c.MinBaseline, DefaultMinBaseline)
	c.MaxDispersion = cmp.Or(c.MaxDispersion, DefaultMaxDispersion)
	c.MaxGrowth = cmp.Or(c.MaxGrowth, DefaultMaxGrowth)
	c.Probation = cmp.Or(c.Probation, DefaultProbation)
	errs = append(errs, interval.Check("rate", c.Interval, c.HalfLife)...)
	if c.Warmup < 0 {
		errs = append(errs, fmt.Errorf("rate warmup must not be negative, got %s", c.Warmup))
	}
	if c.MaxIdle < 0 {
		errs = append(errs, fmt.Errorf("rate max idle must not be negative, got %s", c.MaxIdle))
	}
	finite := func(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }
	if !(c.Tolerance >= 1) || !finite(c.Tolerance) {
		errs = append(errs, fmt.Errorf("rate tolerance must be at least 1, got %g", c.Tolerance))
	}
	if !(c.Ratio > 1) || !finite(c.Ratio) {
		errs = append(errs, fmt.Errorf("rate ratio must be above 1, got %g", c.Ratio))
	}
	if !(c.Threshold > 0) || !finite(c.Threshold) {
		errs = append(errs, fmt.Errorf("rate threshold must be positive, got %g", c.Threshold))
	}
	if !(c.MinBaseline > 0) || !finite(c.MinBaseline) {
		errs = append(errs, fmt.Errorf("rate min baseline must be positive, got %g", c.MinBaseline))
	}
	if !(c.MaxDispersion >= 1) || !finite(c.MaxDispersion) {
		errs = append(errs, fmt.Errorf("rate max dispersion must be at least 1, got %g", c.MaxDispersion))
	}
	if c.Probation < c.Interval {
		errs = append(errs, fmt.Errorf("rate probation %s is shorter than the interval %s", c.Probation, c.Interval))
	}
	if !(c.MaxGrowth > 1) || !finite(c.MaxGrowth) {
		errs = append(errs, fmt.Errorf("rate max growth must be above 1, got %g", c.MaxGrowth))
	}
	return c, errors.Join(errs...)
}

// Detector scores request rates. It is immutable and safe for concurrent use; the States it
// updates are not.
type Detector struct {
	cfg        Config
	intervalMS int64
	alpha      float64 // EWMA weight of one interval in the baseline
	avgN       int64   // intervals averaged plainly before the EWMA takes over (1/alpha)
	fastAlpha  float64
	lnRatio    float64 // ln(Ratio)
	penalty    float64 // Tolerance·(Ratio-1): the CUSUM's cost of an interval per expected request
	warmN      int64   // merged intervals before alarms
	idleN      int64   // empty intervals a gap may merge
	probN      int64   // intervals of alarm before a shift is adopted
	dayN       int64   // intervals in a day: the history that sets the ceiling freely
	growth     float64 // the ceiling's largest rise per interval (a factor)
	ceilKeep   float64 // the weight an interval leaves to a ceiling above the baseline
}

// New returns a Detector for cfg.
func New(cfg Config) (*Detector, error) {
	cfg, err := cfg.Check()
	if err != nil {
		return nil, err
	}
	iv := cfg.Interval
	d := &Detector{
		cfg:        cfg,
		intervalMS: iv.Milliseconds(),
		alpha:      -math.Expm1(-math.Ln2 * float64(iv) / float64(cfg.HalfLife)),
		fastAlpha:  -math.Expm1(-math.Ln2 / fastHalfLife),
		lnRatio:    math.Log(cfg.Ratio),
		penalty:    cfg.Tolerance * (cfg.Ratio - 1),
		warmN:      int64(cfg.Warmup / iv),
		idleN:      int64(cfg.MaxIdle / iv),
		probN:      int64(cfg.Probation / iv),
		dayN:       int64(24 * time.Hour / iv),
		growth:     math.Pow(cfg.MaxGrowth, float64(iv)/float64(24*time.Hour)),
		ceilKeep:   math.Exp(-math.Ln2 * float64(iv) / float64(ceilHalfLife)),
	}
	d.avgN = int64(1 / d.alpha)
	return d, nil
}

// Config returns the detector's configuration with defaults applied.
func (d *Detector) Config() Config { return d.cfg }

// State is the memory of one key: 80 bytes, no pointers. The zero value is a key never
// seen. It is not safe for concurrent use.
type State struct {
	cur   int64   // index of the current interval
	count float64 // requests in the current interval
	mean  float64 // baseline: EWMA of the counts of closed intervals
	sq    float64 // EWMA of the squared counts
	fast  float64 // EWMA with a half-life of fastHalfLife intervals, anomalies included
	cusum float64
	ceil  float64 // the highest the baseline may be
	n     int64   // intervals merged into the baseline
	// held counts the intervals of the current alarm (towards probation) or, once the
	// shift is rejected, the quiet intervals since (a quiet probation lifts the rejection).
	held     int64
	seen     bool
	rejected bool
}

// Result is the verdict on the current interval of one key.
type Result struct {
	// Score is the CUSUM over twice the threshold, in [0,1]; it is at least 0.5 exactly
	// when Alarm is set.
	Score float64
	// Alarm is set when the CUSUM, counting the current interval so far, is at or above the
	// threshold: the key's rate has risen well above its baseline.
	Alarm bool
	// Count is the number of requests in the current interval so far.
	Count float64
	// Expected is the baseline number of requests per interval.
	Expected float64
}

// Observe counts one request of s's key at t and returns the verdict on its interval.
func (d *Detector) Observe(s *State, t time.Time) Result { return d.Add(s, t, 1) }

// Add counts n requests at t (an access-log batch, say) and returns the verdict on their
// interval. A t before the current interval counts in the current interval.
func (d *Detector) Add(s *State, t time.Time, n float64) Result {
	iv := interval.FloorDiv(t.UnixMilli(), d.intervalMS)
	switch {
	case !s.seen:
		s.seen, s.cur = true, iv
	case iv > s.cur:
		d.close(s, iv)
	}
	s.count += n
	return d.result(s)
}

// Peek returns the verdict on s's current interval without counting anything.
func (d *Detector) Peek(s *State) Result { return d.result(s) }

// Accept makes the key's recent level (a mean over the last fifteen or so intervals) its
// baseline, keeping the dispersion of its counts, and clears the CUSUM and any rejection: an
// operator has judged a change to be normal.
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

func (d *Detector) adopt(s *State) {
	_, phi := d.baseline(s)
	s.mean = s.fast
	s.sq = s.fast*s.fast + phi*s.fast
	s.ceil = max(s.ceil, s.mean)
	s.cusum, s.held = 0, 0
}

// baseline returns the expected count and the dispersion (variance over mean, at least 1).
func (d *Detector) baseline(s *State) (lambda, phi float64) {
	lambda = max(s.mean, d.cfg.MinBaseline)
	phi = (s.sq - s.mean*s.mean) / lambda
	return lambda, min(max(phi, 1), d.cfg.MaxDispersion)
}

// step returns the CUSUM after an interval with count x.
func (d *Detector) step(cusum, x, lambda, phi float64) float64 {
	v := cusum + (x*d.lnRatio-lambda*d.penalty)/phi
	return min(max(v, 0), 2*d.cfg.Threshold)
}

func (d *Detector) result(s *State) Result {
	lambda, phi := d.baseline(s)
	r := Result{Count: s.count, Expected: lambda}
	if s.n < d.warmN {
		return r
	}
	v := d.step(s.cusum, s.count, lambda, phi)
	r.Score = v / (2 * d.cfg.Threshold)
	r.Alarm = v >= d.cfg.Threshold
	return r
}

// close ends the current interval and the empty ones up to next.
func (d *Detector) close(s *State, next int64) {
	x := s.count
	anomalous := false
	if s.n >= d.warmN {
		lambda, phi := d.baseline(s)
		s.cusum = d.step(s.cusum, x, lambda, phi)
		anomalous = s.cusum >= d.cfg.Threshold && x > lambda
	}
	s.fast += d.fastAlpha * (x - s.fast)
	if !anomalous {
		s.n++
		a := max(d.alpha, 1/float64(s.n))
		s.mean += a * (x - s.mean)
		s.sq += a * (x*x - s.sq)
		d.bound(s)
	}
	d.probation(s, anomalous, next-s.cur)
	if gap := next - s.cur - 1; gap > 0 {
		d.skip(s, gap)
	}
	s.cur, s.count = next, 0
}

// bound keeps the baseline under its ceiling, which the first day of history sets freely
// and which then rises by at most MaxGrowth a day and relaxes towards a lower baseline.
func (d *Detector) bound(s *State) {
	switch {
	case s.n <= d.dayN:
		s.ceil = max(s.ceil, s.mean)
	case s.mean > s.ceil:
		s.ceil = min(s.mean, max(s.ceil, d.cfg.MinBaseline)*d.growth)
		if s.mean > s.ceil {
			f := s.ceil / s.mean
			s.mean = s.ceil
			s.sq *= f * f
		}
	default:
		s.ceil = s.mean + (s.ceil-s.mean)*d.ceilKeep
	}
}

// probation counts the interval that ends (and the n−1 empty ones after it) towards adopting
// the current shift, or towards lifting a rejection, and adopts a shift that has alarmed for
// Probation.
func (d *Detector) probation(s *State, anomalous bool, n int64) {
	switch {
	case s.rejected:
		if s.cusum < d.cfg.Threshold {
			s.held++
		} else {
			s.held = 0
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
	}
}

// skip accounts for g empty intervals in O(1).
func (d *Detector) skip(s *State, g int64) {
	// Each empty interval lowers the CUSUM by lambda·penalty/phi; lambda and phi are taken
	// at the start of the gap (the CUSUM only falls, and stops at zero).
	if s.n >= d.warmN {
		lambda, phi := d.baseline(s)
		s.cusum = max(s.cusum-float64(g)*lambda*d.penalty/phi, 0)
		switch {
		case s.rejected:
			s.held += g
			if s.held >= d.probN {
				s.rejected, s.held = false, 0
			}
		case s.cusum == 0:
			s.held = 0
		}
	}
	s.fast *= interval.Pow(1-d.fastAlpha, g)
	m := min(g, d.idleN)
	// While fewer than avgN intervals are merged the baseline is their plain average, so
	// zeros scale it by n/(n+j); after that by (1-alpha) each.
	if j := min(m, max(d.avgN-s.n, 0)); j > 0 {
		f := float64(s.n) / float64(s.n+j)
		s.mean *= f
		s.sq *= f
		s.n += j
		m -= j
	}
	if m > 0 {
		f := interval.Pow(1-d.alpha, m)
		s.mean *= f
		s.sq *= f
		s.n += m
	}
}

// stateVersion is the version byte of a State's binary form.
const stateVersion = 1

// AppendBinary appends s's binary form to b (encoding.BinaryAppender), for the store.
func (s *State) AppendBinary(b []byte) ([]byte, error) {
	w := wire.Writer{B: append(b, stateVersion)}
	w.I64(s.cur)
	for _, v := range [...]float64{s.count, s.mean, s.sq, s.fast, s.cusum, s.ceil} {
		w.F64(v)
	}
	w.I64(s.n)
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
	for _, p := range [...]*float64{&t.count, &t.mean, &t.sq, &t.fast, &t.cusum, &t.ceil} {
		*p = r.F64()
	}
	t.n = r.I64(0)
	t.held = r.I64(0)
	t.seen = r.Bool()
	t.rejected = r.Bool()
	if err := r.Done(); err != nil {
		return fmt.Errorf("rate state: %w", err)
	}
	*s = t
	return nil
}
