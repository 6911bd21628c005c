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

// Seasonal detects a key's request rate leaving its daily profile, in either direction: a
// service that calls far more than usual for the hour of day, or far less (a service that
// stops calling is an incident too), where Detector only sees rises against a level that
// follows the daily cycle.
//
// Requests are summed per bucket (default one hour). The expected log count of a bucket is
// the profile of its slot (hour of day) plus a level shared by every slot:
//
//	y = ln(count + MinRate),  expected = profile[slot] + level,  r = y − expected
//
// The profile learns each slot's typical value day after day (a plain average for the first
// days, then an exponentially weighted one with a half-life of ProfileHalfLife); Saturdays
// and Sundays have slots of their own. The level follows the key's overall volume over days
// (LevelHalfLife), so a slow change of the whole day's traffic moves every hour at once. The spread
// of r is learned per slot from day to day, shrunk towards the spread pooled over all slots
// while a slot has few days of history, and never below the Poisson noise of the count nor
// MinSpread. Each bucket's z = r/spread feeds two CUSUMs, one for rises and one for drops,
// with an allowance of Allowance; an alarm is raised when either reaches Threshold. A bucket
// back at or above its expected count ends a drop.
//
// The floor: a drop counts as evidence only while the expected count of the bucket is at
// least MinRate, and the MinRate added inside the logarithm damps the relative changes of a
// small count, so a sparse service does not alarm on silence. A service expected to make 60
// requests an hour that goes silent alarms within three hours, one expected to make hundreds
// within two (TestSeasonalDeviations; the caller closes buckets with Advance when nothing
// arrives).
//
// The learning is robust: a bucket in alarm teaches nothing, and the others teach their
// residual clipped to ±Clip spreads, so a single anomaly moves the profile little. A shift
// that keeps the alarm up for Probation becomes the new level (the mean of the last few
// buckets' residuals) unless rejected, as with Detector, but silence never does: a service
// that stopped calling alarms until it calls again or is accepted. Between shifts the level and each
// slot of the profile may rise by at most MaxGrowth a day. A ramp is followed only as fast as
// the profile learns: with the defaults, growth of 2% a day raises no alarm, a ramp of ×1.1 a
// day alarms within two days and ×2 a day within half a day (TestAdversarySeasonalSlowRamp),
// and after the probation of such an alarm the ramp's level is adopted and must alarm anew.
//
// Observe costs a comparison against a limit computed when the bucket opened (no logarithm,
// no allocation); closing a bucket costs two logarithms, two exponentials and a square
// root. A SeasonalState holds the profile (584 bytes), so it is meant for a service's total
// rate, not for every edge.
type Seasonal struct {
	cfg       SeasonalConfig
	bucketMS  int64
	slots     int64
	weekends  bool    // weekends have slots of their own, after the weekdays'
	phaseMS   int64   // Offset in milliseconds
	levelA    float64 // EWMA weight of a bucket in the level
	profileA  float64 // EWMA weight of a day in a slot
	poolA     float64 // EWMA weight of a bucket in the pooled spread
	fastA     float64 // EWMA weight of a bucket in the recent residual that a shift adopts
	probN     int64   // buckets of alarm before a shift is adopted
	warmDays  int64   // days of history a slot needs before it judges
	slotGrow  float64 // the largest rise of a slot per day (log)
	levelGrow float64 // the largest rise of the level per bucket (log)
}

// MaxSlots is the largest number of buckets in a Period.
const MaxSlots = 48

// SeasonalConfig tunes a Seasonal detector. The zero value of a field means its default.
type SeasonalConfig struct {
	// Bucket is the counting period, a whole number of milliseconds. Default: 1 hour.
	Bucket time.Duration
	// Period is the length of the cycle, a whole number of buckets, at most MaxSlots of
	// them. Default: 24 hours.
	Period time.Duration
	// SameWeekends, when set, judges Saturdays and Sundays by the same profile as the other
	// days. By default, when Period is 24 hours of at most MaxSlots/2 buckets, weekends have
	// a profile of their own (traffic driven by people or business hours is weekly); until a
	// weekend slot has its days of history, the weekday slot of the same hour stands in.
	SameWeekends bool
	// Offset shifts the cycle's origin from midnight UTC (a local time zone's offset, so
	// that the slots are local hours). Default: 0.
	Offset time.Duration
	// MinRate is the rate floor, in requests per bucket: drops count only while the
	// expected count is at least MinRate, and it is added to every count before the
	// logarithm. Default: 20.
	MinRate float64
	// MinSpread is the smallest spread of a log count that the detector assumes: an hour's traffic
	// a tenth off its usual is not evidence in itself. Default: 0.1.
	MinSpread float64
	// Allowance is the z that a bucket may deviate by, either way, without counting as
	// evidence. Default: 1.
	Allowance float64
	// Threshold is the CUSUM value, in spreads, that raises an alarm. Default: 6.
	Threshold float64
	// Clip bounds the residual a bucket teaches, in spreads. Default: 2.
	Clip float64
	// LevelHalfLife is how fast the level follows the key's overall volume. Default: 3 days.
	LevelHalfLife time.Duration
	// ProfileHalfLife is how fast a slot of the profile follows change, from day to day.
	// Default: 7 days.
	ProfileHalfLife time.Duration
	// WarmupDays is how many days of history a slot needs before its buckets are judged.
	// Default: 2.
	WarmupDays int
	// Probation is how long a shift must keep the alarm up before it becomes the level.
	// Default: 24 hours.
	Probation time.Duration
	// RequireApproval, when set, keeps a shift alarming until an operator accepts it.
	RequireApproval bool
	// MaxGrowth is the largest factor by which the level, or a slot of the profile, may rise
	// in a day outside probation and Accept; above 1. Default: 1.25.
	MaxGrowth float64
}

// Defaults for zero SeasonalConfig fields.
const (
	DefaultBucket          = time.Hour
	DefaultPeriod          = 24 * time.Hour
	DefaultMinRate         = 20
	DefaultMinSpread       = 0.1
	DefaultAllowance       = 1
	DefaultSeasonThreshold = 6
	DefaultClip            = 2
	DefaultLevelHalfLife   = 72 * time.Hour
	DefaultProfileHalfLife = 7 * 24 * time.Hour
	DefaultWarmupDays      = 2
)

// seasonFastBuckets is the half-life, in buckets, of the recent residual a shift adopts.
const seasonFastBuckets = 3

// poolKeep: the pooled spread is an EWMA with a half-life of a week of buckets.
const poolHalfLife = 7 * 24 * time.Hour

// shrinkDays is the weight, in days, of the pooled spread in a slot's spread.
const shrinkDays = 2

// Check applies defaults and reports every problem in c.
func (c SeasonalConfig) Check() (SeasonalConfig, error) {
	var errs []error
	c.Bucket = cmp.Or(c.Bucket, DefaultBucket)
	c.Period = cmp.Or(c.Period, DefaultPeriod)
	c.LevelHalfLife = cmp.Or(c.LevelHalfLife, DefaultLevelHalfLife)
	c.ProfileHalfLife = cmp.Or(c.ProfileHalfLife, DefaultProfileHalfLife)
	c.Probation = cmp.Or(c.Probation, DefaultProbation)
	c.MinRate = cmp.Or(c.MinRate, DefaultMinRate)
	c.MinSpread = cmp.Or(c.MinSpread, DefaultMinSpread)
	c.Allowance = cmp.Or(c.Allowance, DefaultAllowance)
	c.Threshold = cmp.Or(c.Threshold, DefaultSeasonThreshold)
	c.Clip = cmp.Or(c.Clip, DefaultClip)
	c.MaxGrowth = cmp.Or(c.MaxGrowth, DefaultMaxGrowth)
	if c.WarmupDays == 0 {
		c.WarmupDays = DefaultWarmupDays
	}
	if c.Bucket < time.Millisecond || c.Bucket%time.Millisecond != 0 {
		errs = append(errs, fmt.Errorf("seasonal bucket must be a whole number of milliseconds, at least 1ms, got %s", c.Bucket))
	} else if c.Period < c.Bucket || c.Period%c.Bucket != 0 || c.Period/c.Bucket > MaxSlots {
		errs = append(errs, fmt.Errorf("seasonal period %s must be 1 to %d buckets of %s", c.Period, MaxSlots, c.Bucket))
	}
	if c.LevelHalfLife < c.Bucket {
		errs = append(errs, fmt.Errorf("seasonal level half-life %s is shorter than the bucket %s", c.LevelHalfLife, c.Bucket))
	}
	if c.ProfileHalfLife < c.Period {
		errs = append(errs, fmt.Errorf("seasonal profile half-life %s is shorter than the period %s", c.ProfileHalfLife, c.Period))
	}
	if c.Probation < c.Bucket {
		errs = append(errs, fmt.Errorf("seasonal probation %s is shorter than the bucket %s", c.Probation, c.Bucket))
	}
	finite := func(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }
	pos := func(name string, v float64) {
		if !(v > 0) || !finite(v) {
			errs = append(errs, fmt.Errorf("seasonal %s must be positive, got %g", name, v))
		}
	}
	pos("min rate", c.MinRate)
	pos("min spread", c.MinSpread)
	pos("threshold", c.Threshold)
	pos("clip", c.Clip)
	if !(c.Allowance >= 0) || !finite(c.Allowance) {
		errs = append(errs, fmt.Errorf("seasonal allowance must not be negative, got %g", c.Allowance))
	}
	if c.WarmupDays < 1 {
		errs = append(errs, fmt.Errorf("seasonal warmup days must be at least 1, got %d", c.WarmupDays))
	}
	if !(c.MaxGrowth > 1) || !finite(c.MaxGrowth) {
		errs = append(errs, fmt.Errorf("seasonal max growth must be above 1, got %g", c.MaxGrowth))
	}
	return c, errors.Join(errs...)
}

// NewSeasonal returns a Seasonal detector for cfg.
func NewSeasonal(cfg SeasonalConfig) (*Seasonal, error) {
	cfg, err := cfg.Check()
	if err != nil {
		return nil, err
	}
	b := float64(cfg.Bucket)
	ewma := func(halfLife time.Duration) float64 { return -math.Expm1(-math.Ln2 * b / float64(halfLife)) }
	days := float64(cfg.Period) / float64(24*time.Hour)
	d := &Seasonal{
		cfg:       cfg,
		bucketMS:  cfg.Bucket.Milliseconds(),
		slots:     int64(cfg.Period / cfg.Bucket),
		phaseMS:   cfg.Offset.Milliseconds(),
		levelA:    ewma(cfg.LevelHalfLife),
		profileA:  -math.Expm1(-math.Ln2 * float64(cfg.Period) / float64(cfg.ProfileHalfLife)),
		poolA:     ewma(poolHalfLife),
		fastA:     -math.Expm1(-math.Ln2 / seasonFastBuckets),
		probN:     int64(cfg.Probation / cfg.Bucket),
		warmDays:  int64(cfg.WarmupDays),
		slotGrow:  math.Log(cfg.MaxGrowth) * days,
		levelGrow: math.Log(cfg.MaxGrowth) * b / float64(24*time.Hour),
	}
	d.weekends = !cfg.SameWeekends && cfg.Period == 24*time.Hour && 2*d.slots <= MaxSlots
	return d, nil
}

// Config returns the detector's configuration with defaults applied.
func (d *Seasonal) Config() SeasonalConfig { return d.cfg }

// SeasonalState is one key's memory for a Seasonal detector: its profile, fixed size, no
// pointers (584 bytes). The zero value is a key never seen. It is not safe for
// concurrent use.
type SeasonalState struct {
	cur      int64   // index of the current bucket
	count    float64 // requests in the current bucket
	upLimit  float64 // the count at which the current bucket alarms as a rise
	expected float64 // the current bucket's expected count (0 while warming up)
	level    float64
	fast     float64 // recent residual (EWMA, alarms included)
	pool     float64 // pooled variance of residuals
	poolN    int64   // residuals in pool
	up, down float64 // the CUSUMs
	buckets  int64   // buckets closed
	held     int64
	alarm    bool // the last closed bucket left a CUSUM at or above the threshold
	dropped  bool // that alarm is a drop
	seen     bool
	rejected bool
	days     [MaxSlots]uint16  // days of history per slot (saturating)
	mean     [MaxSlots]float32 // profile: mean log count per slot, level removed
	vari     [MaxSlots]float32 // variance of the residual per slot
}

// SeasonalResult is the verdict on a key's current bucket.
type SeasonalResult struct {
	// Score is the larger CUSUM over twice the threshold, in [0,1]; at least 0.5 exactly
	// when Alarm is set.
	Score float64
	// Alarm is set when the rate is out of its daily profile: a closed bucket left a CUSUM
	// at the threshold, or the current bucket already holds enough requests to.
	Alarm bool
	// Drop is set when the alarm is for too few requests.
	Drop bool
	// Count is the number of requests in the current bucket so far.
	Count float64
	// Expected is the expected count of the current bucket (0 while the slot is warming up).
	Expected float64
}

// Observe counts one request of s's key at t and returns the verdict.
func (d *Seasonal) Observe(s *SeasonalState, t time.Time) SeasonalResult { return d.Add(s, t, 1) }

// Add counts n requests at t. A t before the current bucket counts in the current bucket.
func (d *Seasonal) Add(s *SeasonalState, t time.Time, n float64) SeasonalResult {
	d.advance(s, t)
	s.count += n
	return d.result(s)
}

// Advance closes the buckets that end before t without counting anything, and returns the
// verdict: call it now and then for a key that may have gone silent.
func (d *Seasonal) Advance(s *SeasonalState, t time.Time) SeasonalResult {
	d.advance(s, t)
	return d.result(s)
}

func (d *Seasonal) advance(s *SeasonalState, t time.Time) {
	b := interval.FloorDiv(t.UnixMilli()+d.phaseMS, d.bucketMS)
	switch {
	case !s.seen:
		s.seen, s.cur = true, b
		d.open(s)
	case b > s.cur:
		d.close(s, b)
	}
}

// Peek returns the verdict on s's current bucket without counting anything.
func (d *Seasonal) Peek(s *SeasonalState) SeasonalResult { return d.result(s) }

// Accept makes the key's recent level its level at once and clears the alarm and any
// rejection: an operator has judged the change to be normal.
func (d *Seasonal) Accept(s *SeasonalState) {
	d.adopt(s)
	s.rejected = false
}

// Reject keeps the key's level as it is: the current shift keeps alarming instead of being
// adopted after probation. Accept lifts a rejection, as does a probation without alarm.
func (d *Seasonal) Reject(s *SeasonalState) { s.rejected, s.held = true, 0 }

// Shift reports the key's current alarm: how long it has been held (towards Probation), and
// whether it was rejected.
func (d *Seasonal) Shift(s *SeasonalState) (held time.Duration, rejected bool) {
	if s.rejected {
		return 0, true
	}
	return time.Duration(s.held) * d.cfg.Bucket, false
}

func (d *Seasonal) adopt(s *SeasonalState) {
	s.level += s.fast
	s.fast, s.up, s.down, s.held, s.alarm = 0, 0, 0, 0, false
	d.open(s)
}

func (d *Seasonal) result(s *SeasonalState) SeasonalResult {
	r := SeasonalResult{Count: s.count, Alarm: s.alarm, Drop: s.alarm && s.dropped}
	r.Expected = s.expected
	if s.count >= s.upLimit {
		r.Alarm, r.Drop = true, false
	}
	v := max(s.up, s.down)
	if r.Alarm {
		v = max(v, d.cfg.Threshold)
	}
	r.Score = min(v/(2*d.cfg.Threshold), 1)
	return r
}

// slot returns the profile slot of bucket b.
func (d *Seasonal) slot(b int64) int64 {
	day := interval.FloorDiv(b, d.slots)
	m := b - day*d.slots
	if d.weekends {
		// Day 0 of Unix time was a Thursday; weekday 0 is Sunday.
		if wd := (day%7 + 7 + 4) % 7; wd == 0 || wd == 6 {
			m += d.slots
		}
	}
	return m
}

// expect returns the expected log count of bucket b and the spread of its residual; ok is
// false while its slot is warming up.
func (d *Seasonal) expect(s *SeasonalState, b int64) (e, sd float64, ok bool) {
	k := d.slot(b)
	n := int64(s.days[k])
	if n < d.warmDays {
		return 0, 0, false
	}
	e = float64(s.mean[k]) + s.level
	v := (float64(n)*float64(s.vari[k]) + shrinkDays*s.pool) / (float64(n) + shrinkDays)
	lambda := max(math.Exp(e)-d.cfg.MinRate, 0)
	// The Poisson variance of ln(x+c) at x = lambda.
	poisson := lambda / ((lambda + d.cfg.MinRate) * (lambda + d.cfg.MinRate))
	return e, math.Sqrt(max(v, poisson, d.cfg.MinSpread*d.cfg.MinSpread)), true
}

// open computes the current bucket's rise limit: the count at which the rise CUSUM reaches
// the threshold.
func (d *Seasonal) open(s *SeasonalState) {
	e, sd, ok := d.expect(s, s.cur)
	if !ok {
		s.upLimit, s.expected = math.Inf(1), 0
		return
	}
	s.expected = max(math.Exp(e)-d.cfg.MinRate, 0)
	z := d.cfg.Threshold - s.up + d.cfg.Allowance
	s.upLimit = math.Exp(e+sd*z) - d.cfg.MinRate
}

// maxGap is the longest run of empty buckets a close walks through one by one; past it the
// key is idle: its profile is left as it was and its alarm cleared.
func (d *Seasonal) maxGap() int64 { return 2 * d.slots }

// close ends the current bucket and the empty ones up to next.
func (d *Seasonal) close(s *SeasonalState, next int64) {
	d.closeOne(s, s.count)
	last := min(next-1, s.cur+d.maxGap())
	for b := s.cur + 1; b <= last; b++ {
		s.cur = b
		d.closeOne(s, 0)
	}
	if next-1 > last {
		// Idle for longer than maxGap: its silence has been judged (by Advance, while it
		// lasted); the key starts afresh when it comes back, as it was before the gap.
		s.up, s.down, s.alarm, s.held, s.fast = 0, 0, false, 0, 0
	}
	s.cur, s.count = next, 0
	d.open(s)
}

func (d *Seasonal) closeOne(s *SeasonalState, x float64) {
	k := d.slot(s.cur)
	y := math.Log(x + d.cfg.MinRate)
	s.buckets++
	e, sd, ok := d.expect(s, s.cur)
	if !ok {
		d.learn(s, k, y, 0, 1)
		return
	}
	r := y - e
	z := r / sd
	// A drop is over once an hour is back at its usual level (a service back from silence
	// stops alarming at once). A rise decays as a CUSUM does: ending it on the first hour
	// under its usual level would let a workload that alternates busy and quiet hours
	// (TestAdversarySeasonalAlternating) keep its evidence from adding up.
	s.up = min(max(s.up+z-d.cfg.Allowance, 0), 2*d.cfg.Threshold)
	if math.Exp(e)-d.cfg.MinRate >= d.cfg.MinRate && z < 0 {
		s.down = min(max(s.down-z-d.cfg.Allowance, 0), 2*d.cfg.Threshold)
	} else {
		s.down = 0
	}
	s.alarm = s.up >= d.cfg.Threshold || s.down >= d.cfg.Threshold
	s.dropped = s.down > s.up
	s.fast += d.fastA * (r - s.fast)
	// A bucket that does not alarm teaches its residual, clipped.
	if !s.alarm {
		rc := max(min(r, d.cfg.Clip*sd), -d.cfg.Clip*sd)
		d.learn(s, k, y, rc, sd)
	}
	d.probation(s, x == 0)
}

// learn teaches slot k the log count y whose residual, clipped, is rc.
func (d *Seasonal) learn(s *SeasonalState, k int64, y, rc, sd float64) {
	n := s.days[k]
	if int64(n) < d.warmDays {
		// Warming up: the slot's mean is the plain average of its days, level removed; the
		// level starts at the first bucket's value.
		if s.buckets == 1 {
			s.level = y
		}
		dev := y - s.level
		if n > 0 {
			old := float64(s.mean[k])
			r := dev - old
			// Welford: the residual against the mean of n days has variance (1+1/n)·v.
			v := r * r * float64(n) / float64(n+1)
			s.vari[k] += float32((v - float64(s.vari[k])) / float64(n))
			s.mean[k] = float32(old + r/float64(n+1))
			s.poolN++
			s.pool += max(d.poolA, 1/float64(s.poolN)) * (v - s.pool)
		} else {
			s.mean[k] = float32(dev)
		}
		s.days[k]++
		return
	}
	// The level takes the shared part of the residual, the slot the rest.
	dl := min(d.levelA*rc, d.levelGrow)
	s.level += dl
	a := max(d.profileA, 1/(float64(n)+1))
	dm := min(a*(rc-dl), d.slotGrow)
	s.mean[k] += float32(dm)
	s.vari[k] += float32(a * (rc*rc - float64(s.vari[k])))
	s.poolN++
	s.pool += max(d.poolA, 1/float64(s.poolN)) * (rc*rc - s.pool)
	if s.days[k] < math.MaxUint16 {
		s.days[k]++
	}
}

// probation counts the bucket that ended towards adopting the current shift, or towards
// lifting a rejection. A silent bucket does not count towards adopting a drop: a service
// that stopped calling alarms until it calls again or an operator accepts.
func (d *Seasonal) probation(s *SeasonalState, silent bool) {
	switch {
	case s.rejected:
		if s.alarm {
			s.held = 0
		} else {
			s.held++
		}
		if s.held >= d.probN {
			s.rejected, s.held = false, 0
		}
	case s.alarm && silent && s.dropped:
	case s.alarm:
		s.held++
		if s.held >= d.probN && !d.cfg.RequireApproval {
			d.adopt(s)
		}
	case s.up == 0 && s.down == 0:
		s.held = 0
	}
}

// seasonalVersion is the version byte of a SeasonalState's binary form.
const seasonalVersion = 1

// AppendBinary appends s's binary form to b (encoding.BinaryAppender), for the store.
func (s *SeasonalState) AppendBinary(b []byte) ([]byte, error) {
	w := wire.Writer{B: append(b, seasonalVersion)}
	w.I64(s.cur)
	for _, v := range [...]float64{s.count, s.upLimit, s.expected, s.level, s.fast, s.pool} {
		w.F64(v)
	}
	w.I64(s.poolN)
	w.F64(s.up)
	w.F64(s.down)
	w.I64(s.buckets)
	w.I64(s.held)
	for _, v := range [...]bool{s.alarm, s.dropped, s.seen, s.rejected} {
		w.Bool(v)
	}
	for i := range MaxSlots {
		w.U16(s.days[i])
		w.F32(s.mean[i])
		w.F32(s.vari[i])
	}
	return w.B, nil
}

// UnmarshalBinary sets s from the form AppendBinary wrote; on error s is unchanged.
func (s *SeasonalState) UnmarshalBinary(b []byte) error {
	r := wire.NewReader(b, seasonalVersion)
	var t SeasonalState
	t.cur = r.I64(wire.AnyInt)
	for _, p := range [...]*float64{&t.count, &t.upLimit, &t.expected, &t.level, &t.fast, &t.pool} {
		*p = r.F64()
	}
	t.poolN = r.I64(0)
	t.up = r.F64()
	t.down = r.F64()
	t.buckets = r.I64(0)
	t.held = r.I64(0)
	for _, p := range [...]*bool{&t.alarm, &t.dropped, &t.seen, &t.rejected} {
		*p = r.Bool()
	}
	for i := range MaxSlots {
		t.days[i] = r.U16()
		t.mean[i] = r.F32()
		t.vari[i] = r.F32()
	}
	if err := r.Done(); err != nil {
		return fmt.Errorf("seasonal state: %w", err)
	}
	*s = t
	return nil
}
