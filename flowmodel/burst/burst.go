// Package burst detects bursts on a stream of service→destination edges, in the manner of
// MIDAS-R (Bhatia et al., "MIDAS: Microcluster-Based Detector of Anomalies in Edge Streams",
// AAAI 2020, and its extension with filtering, "Real-Time Anomaly Detection in Edge Streams",
// TKDD 2022).
//
// Three count-min sketches (edge, service, destination) each keep, per bucket, a current
// count that is multiplied by Config.Decay at every tick instead of being reset, and a total
// that the current count is merged into at the end of every tick. An edge is scored by how far
// the current count of its edge, its service and its destination stands above the mean of
// the totals: the Poisson deviance 2(a·ln(a/m) − (a−m)) with a the current count and m the
// mean, taking the largest of the three. As in MIDAS-F, a bucket whose last score reached
// Config.Threshold does not merge its current count at the end of the tick but the mean
// instead, so a long attack is not learned as normal and keeps scoring high.
//
// One departure from MIDAS: the mean is over the ticks since the bucket's first edge, not
// since the stream's. With MIDAS's global tick count, a key first seen late in the stream has
// a mean near zero, scores high on its second tick, is then filtered, and so stays anomalous
// for good however steady it is: every new service or destination would alarm forever. A
// key's first tick has no mean and scores 0 (the service and destination sketches, and
// meshguard's new-destination rule, see a new edge). On the DARPA stream this costs about
// 0.003 of ROC-AUC (see bench/darpa).
//
// Buckets are brought up to date lazily, when an edge touches them, with the closed form of
// the per-tick updates they missed; the result is the same as updating every bucket at every
// tick, but no edge pays for a sweep of the sketches. The package does no I/O and, after New,
// allocates nothing.
package burst

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"unsafe"
)

// Config tunes a Detector. The zero value of a field means its default.
type Config struct {
	// Rows is the number of hash rows of each count-min sketch. Default 2.
	Rows int
	// Buckets is the number of buckets in each row. Default 1024.
	Buckets int
	// Decay is the share of a bucket's current count carried into the next tick, in [0, 1).
	// Default 0.5. A negative value means 0: current counts are reset every tick.
	Decay float64
	// Threshold is the raw score from which a bucket's tick is held to be anomalous and is
	// not merged into the total (MIDAS-F). Default 100. math.Inf(1) merges every tick, as
	// plain MIDAS-R does.
	Threshold float64
	// Half is the raw score that Score.Norm maps to 0.5. Default 100.
	//
	// Both defaults are MIDAS's, set for Pearson's term and kept for the deviance, which is
	// lower for the same burst (to reach 100 a tick needs about 23 edges where 1 is usual,
	// against 11 with Pearson's; 56 where 10 is, against 42). Nominally 100 is a p-value near
	// 1e-23; real traffic comes in sessions and varies several times more than Poisson
	// counts, so nominal p-values say little, and a lower threshold would hold ordinary
	// session peaks out of the mean (see bench/darpa's sweep for the ranking's sensitivity).
	Half float64
	// Seed selects the hash functions; the same seed and the same stream give the same scores.
	Seed uint64
}

// Defaults used for zero Config fields.
const (
	DefaultRows      = 2
	DefaultBuckets   = 1024
	DefaultDecay     = 0.5
	DefaultThreshold = 100
	DefaultHalf      = 100
)

// Limits on the sketch shape, to keep memory bounded and indexes in range.
const (
	MaxRows    = 16
	MaxBuckets = 1 << 24
)

// Check applies defaults and reports every problem in c.
func (c Config) Check() (Config, error) {
	var errs []error
	if c.Rows == 0 {
		c.Rows = DefaultRows
	}
	if c.Rows < 1 || c.Rows > MaxRows {
		errs = append(errs, fmt.Errorf("burst: rows %d out of range [1, %d]", c.Rows, MaxRows))
	}
	if c.Buckets == 0 {
		c.Buckets = DefaultBuckets
	}
	if c.Buckets < 1 || c.Buckets > MaxBuckets {
		errs = append(errs, fmt.Errorf("burst: buckets %d out of range [1, %d]", c.Buckets, MaxBuckets))
	}
	switch {
	case c.Decay == 0:
		c.Decay = DefaultDecay
	case c.Decay < 0:
		c.Decay = 0
	}
	if !(c.Decay < 1) { // also rejects NaN
		errs = append(errs, fmt.Errorf("burst: decay %v must be below 1", c.Decay))
	}
	if c.Threshold == 0 {
		c.Threshold = DefaultThreshold
	}
	if !(c.Threshold > 0) {
		errs = append(errs, fmt.Errorf("burst: threshold %v must be positive", c.Threshold))
	}
	if c.Half == 0 {
		c.Half = DefaultHalf
	}
	if !(c.Half > 0) || math.IsInf(c.Half, 1) {
		errs = append(errs, fmt.Errorf("burst: half %v must be positive and finite", c.Half))
	}
	return c, errors.Join(errs...)
}

// Bytes is the memory a Detector with this (checked) config holds, all of it allocated by
// New and none later: three sketches of Rows×Buckets cells of 40 bytes (current count, total,
// last score, last and first tick), their hash seeds, and the Detector itself (about 1.3 KB,
// most of it tables of powers of Decay). With the defaults: 3×2×1024×40 = 245,760 bytes of
// cells, and 247,088 in all.
func (c Config) Bytes() int {
	return 3*c.Rows*c.Buckets*cellBytes + 3*c.Rows*8 + c.Rows*8 + int(unsafe.Sizeof(Detector{}))
}

// Part names the sketch that gave an edge its score.
type Part uint8

const (
	// PartEdge is the service→destination pair.
	PartEdge Part = iota
	// PartService is everything the service sends.
	PartService
	// PartDestination is everything sent to the destination.
	PartDestination
)

func (p Part) String() string {
	switch p {
	case PartEdge:
		return "edge"
	case PartService:
		return "service"
	case PartDestination:
		return "destination"
	}
	return fmt.Sprintf("part(%d)", uint8(p))
}

// Score is the burst score of one edge.
type Score struct {
	// Raw is the Poisson deviance 2(a·ln(a/m) − (a−m)) of the sketch that scored highest,
	// >= 0. A sketch scores 0 while one of the key's buckets is in the tick of its first
	// edge: the key is new.
	Raw float64
	// Norm is Raw/(Raw+Half): 0 for no burst, 0.5 at Raw = Half, below 1 for every finite
	// Raw up to Half×2⁵², and monotone in Raw, so it ranks edges as Raw does and can be
	// combined with other scores in [0, 1).
	Norm float64
	// Part is the sketch that gave Raw.
	Part Part
}

// Normalize maps a raw score to [0, 1) as Score.Norm does: raw/(raw+half).
func Normalize(raw, half float64) float64 {
	if raw <= 0 {
		return 0
	}
	return raw / (raw + half)
}

// PValue is the upper tail of the chi-square distribution with one degree of freedom at raw:
// the probability of a score at least raw if counts were Poisson around their mean. It is
// nominal: sketch estimates, decayed counts and bursty real traffic all break that model, so
// use it to compare, not as a calibrated false-alarm rate.
func PValue(raw float64) float64 {
	if raw <= 0 {
		return 1
	}
	return math.Erfc(math.Sqrt(raw / 2))
}

// warmTicks is how many ticks a bucket has before it scores: its first, partial one, and a
// full one.
const warmTicks = 2

// holdGrowth bounds what an anomalous tick merges into its bucket's total: at most this many
// times the mean.
const holdGrowth = 2

// cell is one bucket: counts as of step last, and the last score given to it.
type cell struct {
	cur   float64 // current count, decayed each tick
	tot   float64 // merged counts of the steps before last
	score float64 // the last score of this sketch at this bucket
	last  int64   // the step cur and tot are up to date with; 0 if never touched
	first int64   // the step of the bucket's first edge
}

const cellBytes = 40

type sketch struct {
	cells []cell
	seeds []uint64
}

// maxGap caps how far one edge moves the clock, so step arithmetic cannot overflow. It is
// 2⁴⁰ ticks (two million years of minutes); every decayed count is long zero by then.
const maxGap = 1 << 40

// powTable holds Decay^k and 1+Decay+…+Decay^(k-1) for small k; larger k use math.Exp.
const powTable = 64

// Detector scores edges. It is not safe for concurrent use: callers serialise Observe.
type Detector struct {
	cfg     Config
	sketch  [3]sketch
	idx     []int // scratch: bucket indexes of the current key, one per row
	pow     [powTable]float64
	geo     [powTable]float64
	lnDecay float64 // log(Decay), for gaps beyond the tables
	tick    int64   // the current tick
	step    int64   // 1-based number of the current tick since the first; 0 before any edge
}

// New returns a Detector for cfg, after Check.
func New(cfg Config) (*Detector, error) {
	cfg, err := cfg.Check()
	if err != nil {
		return nil, err
	}
	d := &Detector{cfg: cfg, idx: make([]int, cfg.Rows), lnDecay: math.Log(cfg.Decay)}
	rng := cfg.Seed
	for p := range d.sketch {
		s := &d.sketch[p]
		s.cells = make([]cell, cfg.Rows*cfg.Buckets)
		s.seeds = make([]uint64, cfg.Rows)
		for r := range s.seeds {
			rng += 0x9e3779b97f4a7c15
			s.seeds[r] = mix(rng)
		}
	}
	p, g := 1.0, 0.0
	for k := range powTable {
		d.pow[k], d.geo[k] = p, g
		g += p
		p *= cfg.Decay
	}
	return d, nil
}

// Config returns the checked configuration.
func (d *Detector) Config() Config { return d.cfg }

// Observe records one edge from service to destination at tick and returns its score. A
// later tick than the current one ends it: a gap of k ticks is k tick ends (merge, then decay),
// the idle ticks merging what is left of the decayed current counts. An earlier tick counts in
// the current one, so a late or reordered edge is scored as if it had arrived now. Keys are the caller's hashes of the service and
// destination names; they are mixed again here, so any distinct values will do.
func (d *Detector) Observe(service, destination uint64, tick int64) Score {
	if d.step == 0 {
		d.step, d.tick = 1, tick
	} else if tick > d.tick {
		gap := uint64(tick) - uint64(d.tick)
		d.step += int64(min(gap, maxGap))
		d.tick = tick
	}
	best := Score{Raw: d.observe(&d.sketch[PartEdge], mix(service)^destination), Part: PartEdge}
	if raw := d.observe(&d.sketch[PartService], service); raw > best.Raw {
		best.Raw, best.Part = raw, PartService
	}
	if raw := d.observe(&d.sketch[PartDestination], destination); raw > best.Raw {
		best.Raw, best.Part = raw, PartDestination
	}
	best.Norm = Normalize(best.Raw, d.cfg.Half)
	return best
}

// observe adds one to key's buckets in s, scores it and records the score in the buckets.
func (d *Detector) observe(s *sketch, key uint64) float64 {
	n := d.step
	a, m := math.Inf(1), math.Inf(1)
	fresh := false
	for r, seed := range s.seeds {
		i := r*d.cfg.Buckets + int(fastrange(mix(key^seed), uint64(d.cfg.Buckets)))
		d.idx[r] = i
		c := &s.cells[i]
		if c.last != n {
			d.catchUp(c, n)
		}
		c.cur++
		if c.cur < a { // counts are never NaN: plain compares, cheaper than min
			a = c.cur
		}
		if n-c.first < warmTicks {
			// No key reached this bucket before its previous tick: the key is new, and the
			// bucket's first tick began part way through, when its first edge came, so its
			// count is no tick's worth. Scored against it, the first full tick of a steady
			// edge would be a burst, held out of the mean by the filter, and so would every
			// tick after it: the edge would score high for good.
			fresh = true
		} else if mr := c.tot / float64(n-c.first); mr < m {
			m = mr
		}
	}
	raw := 0.0
	if !fresh {
		raw = deviance(a, m)
	}
	for _, i := range d.idx {
		s.cells[i].score = raw
	}
	return raw
}

// catchUp applies to c the end of each step from c.last to n-1: merge (the current count if
// the bucket's last score was below the threshold, else the mean of the steps merged so far),
// then decay. For a run of k steps with an unchanged score this is, in closed form:
//
//	normal:    tot += cur×(1+f+…+f^(k-1));          cur ×= f^k
//	anomalous: tot ×= (n-first)/(last-first);       cur ×= f^k
//
// the second because the end of step j multiplies tot, the sum of the j-first steps merged so
// far, by 1+1/(j-first), and the product telescopes.
func (d *Detector) catchUp(c *cell, n int64) {
	if c.last == 0 { // never touched: nothing to merge
		c.first, c.last = n, n
		return
	}
	k := n - c.last
	var pow, geo float64
	if k < powTable {
		pow, geo = d.pow[k], d.geo[k]
	} else {
		pow = math.Exp(float64(k) * d.lnDecay) // 0 when Decay is 0: k×-Inf = -Inf
		geo = (1 - pow) / (1 - d.cfg.Decay)
	}
	switch {
	case c.score < d.cfg.Threshold:
		c.tot += c.cur * geo
	case c.last > c.first: // at its first step a bucket has no total to extend
		// The anomalous step merges at most holdGrowth times the mean, not the mean: a long
		// attack still barely moves an old bucket's mean, but a young bucket, or a lasting
		// step up, is learned in time instead of held out for good. The idle steps after it
		// merge the mean.
		mean := c.tot / float64(c.last-c.first)
		c.tot += min(c.cur, holdGrowth*mean)
		if k > 1 {
			c.tot *= float64(n-c.first) / float64(c.last+1-c.first)
		}
	}
	c.cur *= pow
	c.last = n
}

// deviance is the Poisson deviance (likelihood-ratio statistic) 2(a·ln(a/m) − (a − m)) of a
// current count a against a mean m; 0 when a is not above the mean (a quiet tick is not a
// burst) or there is no mean. MIDAS uses Pearson's (a−m)²/m, its approximation, which is
// poor when m is far below 1, as it is for an edge called a few times an hour: one call in a
// minute against a mean of 0.01 is a chi-square of 98 (a burst, by MIDAS's threshold of
// 100) and a deviance of 7.2. In a mesh most edges are sparse, and Pearson's term made
// nearly every call of a quiet service look like a burst; the deviance keeps floods, where
// the two agree in rank (see bench/darpa).
func deviance(a, m float64) float64 {
	if a <= m || m <= 0 {
		return 0
	}
	return 2 * (a*math.Log(a/m) - (a - m))
}

// mix is the splitmix64 finalizer: a bijection on uint64 that spreads every input bit.
func mix(z uint64) uint64 {
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// fastrange maps a uniform 64-bit value to [0, n) without a division (Lemire).
func fastrange(x, n uint64) uint64 {
	hi, _ := bits.Mul64(x, n)
	return hi
}
