package main

import (
	"fmt"
	"slices"
	"time"
)

// Sample is one reading of the server process.
type Sample struct {
	At         time.Duration // since the load started
	Goroutines int64
	HeapInuse  int64
	FDs        int64
	RSS        int64
	Requests   int64   // answered so far
	Load       float64 // the machine's 1-minute load average
}

// Growth is how much a resource grew over the measured window: the median of the last
// fifth of its samples minus the median of the first fifth.
type Growth struct {
	Name          string
	Start, End    int64
	Max           int64
	Bound         int64
	Exceeded      bool
	Unit          string // "" or "bytes"
	WindowSamples int
}

// evaluate computes the growth of each resource over samples taken after the warm-up.
func evaluate(samples []Sample, b Bounds) []Growth {
	k := max(1, len(samples)/5)
	grow := func(name, unit string, bound int64, get func(Sample) int64) Growth {
		vals := make([]int64, len(samples))
		for i, s := range samples {
			vals[i] = get(s)
		}
		g := Growth{Name: name, Unit: unit, Bound: bound, WindowSamples: k}
		if len(vals) == 0 {
			return g
		}
		g.Start, g.End, g.Max = median(vals[:k]), median(vals[len(vals)-k:]), slices.Max(vals)
		g.Exceeded = g.End-g.Start > bound
		return g
	}
	return []Growth{
		grow("goroutines", "", b.Goroutines, func(s Sample) int64 { return s.Goroutines }),
		grow("heap in use", "bytes", b.HeapBytes, func(s Sample) int64 { return s.HeapInuse }),
		grow("open fds", "", b.FDs, func(s Sample) int64 { return s.FDs }),
	}
}

func median(v []int64) int64 {
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func (g Growth) format(v int64) string {
	if g.Unit == "bytes" {
		return fmt.Sprintf("%.1f MiB", float64(v)/(1<<20))
	}
	return fmt.Sprint(v)
}
