package main

import (
	"math"
	"math/bits"
	"sync/atomic"
	"time"
)

// A log-linear latency histogram in the manner of HdrHistogram: values (nanoseconds) below
// 2^(subBits+1) have a bucket each; above, every power of two is split into 2^subBits equal
// buckets, so a recorded value is known to within 1/2^subBits (0.8%) of itself. Percentiles
// report a bucket's highest value, as HdrHistogram's "highest equivalent value" does, so they
// never understate latency. We keep our own rather than import hdrhistogram-go: the part we
// need is this page, it records lock-free from many goroutines with atomic adds (hdrhistogram-go
// needs one histogram per goroutine and a merge), and it keeps the module's dependencies to the
// chosen set.
const (
	subBits    = 7
	maxValueNs = int64(1) << 40 // ~18 minutes; larger values are clamped and counted
	numBuckets = (40-subBits-1)<<subBits + 1<<(subBits+1)
)

// bucketOf returns the bucket index of v >= 0.
func bucketOf(v int64) int {
	if v < 0 {
		v = 0
	}
	if v >= maxValueNs {
		v = maxValueNs - 1
	}
	shift := bits.Len64(uint64(v)) - subBits - 1
	if shift < 0 {
		shift = 0
	}
	return shift<<subBits + int(v>>shift)
}

// bucketHigh returns the highest value that falls into bucket i.
func bucketHigh(i int) int64 {
	shift := i>>subBits - 1
	if shift < 0 {
		shift = 0
	}
	m := int64(i - shift<<subBits)
	return (m+1)<<shift - 1
}

// Histogram records durations concurrently. The zero value is ready to use.
type Histogram struct {
	counts [numBuckets]atomic.Uint64
	n      atomic.Uint64
	sum    atomic.Int64
	max    atomic.Int64
	min    atomic.Int64 // stored as value+1 so that zero means unset
}

// Record adds one duration.
func (h *Histogram) Record(d time.Duration) {
	v := int64(d)
	if v < 0 {
		v = 0
	}
	h.counts[bucketOf(v)].Add(1)
	h.n.Add(1)
	h.sum.Add(v)
	for cur := h.max.Load(); v > cur; cur = h.max.Load() {
		if h.max.CompareAndSwap(cur, v) {
			break
		}
	}
	for cur := h.min.Load(); cur == 0 || v+1 < cur; cur = h.min.Load() {
		if h.min.CompareAndSwap(cur, v+1) {
			break
		}
	}
}

// Snapshot copies the current counts. It may be taken while others record.
func (h *Histogram) Snapshot() *HistSnapshot {
	s := &HistSnapshot{Max: time.Duration(h.max.Load()), Sum: time.Duration(h.sum.Load())}
	if m := h.min.Load(); m > 0 {
		s.Min = time.Duration(m - 1)
	}
	for i := range h.counts {
		c := h.counts[i].Load()
		s.Counts[i] = c
		s.N += c
	}
	return s
}

// HistSnapshot is a plain copy of a Histogram, for percentiles, differences and merges.
type HistSnapshot struct {
	Counts   [numBuckets]uint64
	N        uint64
	Sum      time.Duration
	Min, Max time.Duration
}

// Quantile returns the value at quantile q in [0,1]: the highest value of the bucket holding
// the ceil(q*N)-th smallest recorded value, capped at the exact maximum. Zero when empty.
func (s *HistSnapshot) Quantile(q float64) time.Duration {
	if s.N == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(s.N)))
	if rank < 1 {
		rank = 1
	}
	var seen uint64
	for i, c := range s.Counts {
		seen += c
		if seen >= rank {
			v := time.Duration(bucketHigh(i))
			if s.Max > 0 && v > s.Max {
				v = s.Max
			}
			return v
		}
	}
	return s.Max
}

// Mean returns the mean of the recorded values.
func (s *HistSnapshot) Mean() time.Duration {
	if s.N == 0 {
		return 0
	}
	return s.Sum / time.Duration(s.N)
}

// Sub returns the values recorded between prev and s (prev taken earlier from the same
// histogram). Min and Max of the result are those of the buckets, not exact.
func (s *HistSnapshot) Sub(prev *HistSnapshot) *HistSnapshot {
	d := &HistSnapshot{N: s.N - prev.N, Sum: s.Sum - prev.Sum}
	for i := range s.Counts {
		d.Counts[i] = s.Counts[i] - prev.Counts[i]
		if d.Counts[i] > 0 {
			if d.Min == 0 {
				d.Min = time.Duration(bucketHigh(i))
			}
			d.Max = time.Duration(bucketHigh(i))
		}
	}
	if d.Max > s.Max {
		d.Max = s.Max
	}
	return d
}

// Merge adds o into s.
func (s *HistSnapshot) Merge(o *HistSnapshot) {
	if o.N == 0 {
		return
	}
	for i := range s.Counts {
		s.Counts[i] += o.Counts[i]
	}
	if s.N == 0 || o.Min < s.Min {
		s.Min = o.Min
	}
	s.N += o.N
	s.Sum += o.Sum
	s.Max = max(s.Max, o.Max)
}
