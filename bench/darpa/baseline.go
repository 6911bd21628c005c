package main

import "math"

// edgeKey is an exact source→destination pair.
type edgeKey struct{ src, dst uint64 }

// firstSeen scores 1 for an edge never seen before and 0 for a repeat: what meshguard's
// new_destination reason does, as a detector of its own.
type firstSeen struct{ seen map[edgeKey]struct{} }

func newFirstSeen() *firstSeen { return &firstSeen{seen: make(map[edgeKey]struct{})} }

func (f *firstSeen) score(src, dst uint64, _ int64) float64 {
	k := edgeKey{src, dst}
	if _, ok := f.seen[k]; ok {
		return 0
	}
	f.seen[k] = struct{}{}
	return 1
}

// rateZ scores an edge by the z-score of its count in the current tick against the per-tick
// counts of the same edge since it was first seen (idle ticks count as zero), kept exactly per
// edge: (count − mean) / max(standard deviation, 1). An edge's first tick has mean 0.
type rateZ struct {
	index map[edgeKey]int32
	edges []edgeRate
}

type edgeRate struct {
	first, tick int64   // first tick of the edge, and its current tick
	cur         float64 // edges so far in the current tick
	sum, sumSq  float64 // over the finished ticks
}

func newRateZ() *rateZ { return &rateZ{index: make(map[edgeKey]int32)} }

func (z *rateZ) score(src, dst uint64, tick int64) float64 {
	k := edgeKey{src, dst}
	i, ok := z.index[k]
	if !ok {
		i = int32(len(z.edges))
		z.index[k] = i
		z.edges = append(z.edges, edgeRate{first: tick, tick: tick})
	}
	e := &z.edges[i]
	if tick > e.tick { // a later tick ends the edge's current one; an earlier one counts in it
		e.sum += e.cur
		e.sumSq += e.cur * e.cur
		e.cur = 0
		e.tick = tick
	}
	e.cur++
	var mean, sd float64
	if n := float64(e.tick - e.first); n > 0 {
		mean = e.sum / n
		sd = math.Sqrt(max(e.sumSq/n-mean*mean, 0))
	}
	return (e.cur - mean) / max(sd, 1)
}
