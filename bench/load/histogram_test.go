package main

import (
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"
)

func TestBucketRoundTrip(t *testing.T) {
	prevHigh := int64(-1)
	for i := range numBuckets {
		h := bucketHigh(i)
		if h <= prevHigh {
			t.Fatalf("bucket %d high %d not above previous %d", i, h, prevHigh)
		}
		if got := bucketOf(h); got != i {
			t.Fatalf("bucketOf(bucketHigh(%d)=%d) = %d", i, h, got)
		}
		if got := bucketOf(prevHigh + 1); got != i {
			t.Fatalf("bucketOf(low of %d = %d) = %d", i, prevHigh+1, got)
		}
		prevHigh = h
	}
	if prevHigh != maxValueNs-1 {
		t.Fatalf("last bucket ends at %d, want %d", prevHigh, maxValueNs-1)
	}
}

func TestQuantileAgainstExact(t *testing.T) {
	tests := []struct {
		name string
		gen  func(r *rand.Rand) time.Duration
	}{
		{"uniform 0-1ms", func(r *rand.Rand) time.Duration { return time.Duration(r.Int64N(int64(time.Millisecond))) }},
		{"exponential mean 80us", func(r *rand.Rand) time.Duration { return time.Duration(r.ExpFloat64() * 80e3) }},
		{"small integers", func(r *rand.Rand) time.Duration { return time.Duration(r.Int64N(300)) }},
		{"bimodal with 1% at 150ms", func(r *rand.Rand) time.Duration {
			if r.IntN(100) == 0 {
				return 150*time.Millisecond + time.Duration(r.Int64N(1e6))
			}
			return 40*time.Microsecond + time.Duration(r.Int64N(20e3))
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(1, 2))
			var h Histogram
			vals := make([]time.Duration, 20_000)
			for i := range vals {
				vals[i] = tc.gen(r)
				h.Record(vals[i])
			}
			slices.Sort(vals)
			s := h.Snapshot()
			if s.N != uint64(len(vals)) || s.Min != vals[0] || s.Max != vals[len(vals)-1] {
				t.Fatalf("n/min/max = %d/%v/%v, want %d/%v/%v", s.N, s.Min, s.Max, len(vals), vals[0], vals[len(vals)-1])
			}
			for _, q := range []float64{0, 0.5, 0.9, 0.99, 0.999, 1} {
				rank := int(float64(len(vals))*q+0.999999) - 1
				rank = max(rank, 0)
				exact := vals[rank]
				got := s.Quantile(q)
				// never below the exact value, at most one bucket (1/128) above it
				if got < exact || float64(got-exact) > float64(exact)/128+1 {
					t.Errorf("q%.3f = %v, exact %v", q, got, exact)
				}
			}
		})
	}
}

func TestConcurrentRecordAndSub(t *testing.T) {
	var h Histogram
	h.Record(5 * time.Millisecond)
	before := h.Snapshot()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 10_000 {
				h.Record(time.Duration(g*10_000+i) * time.Microsecond / 100)
			}
		})
	}
	wg.Wait()
	after := h.Snapshot()
	d := after.Sub(before)
	if d.N != 80_000 {
		t.Fatalf("interval count %d, want 80000", d.N)
	}
	if after.N != 80_001 || after.Max != 5*time.Millisecond {
		t.Fatalf("total %d max %v", after.N, after.Max)
	}
	if q := d.Quantile(1); q > time.Millisecond {
		t.Fatalf("interval max %v should not include the earlier 5ms", q)
	}
	var m HistSnapshot
	m.Merge(before)
	m.Merge(d)
	if m.N != after.N || m.Quantile(0.5) != after.Quantile(0.5) {
		t.Fatalf("merge of parts differs from whole: n %d vs %d", m.N, after.N)
	}
}
