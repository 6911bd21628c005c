package volume

import (
	"math"
	"math/rand/v2"
	"time"

	"github.com/meshguard/meshguard/flowmodel/internal/sim"
)

var t0 = sim.T0

// request is one request of a simulated workload.
type request struct {
	at    time.Time
	bytes int64
}

// workload returns Poisson arrivals on [from, to) at rate(t) ≤ peak per hour, each with a
// size drawn by size.
func workload(rng *rand.Rand, from, to time.Time, peak float64, rate func(time.Time) float64, size func(*rand.Rand) int64) []request {
	var out []request
	for t := range sim.Poisson(rng, from, to, peak, rate) {
		out = append(out, request{t, size(rng)})
	}
	return out
}

// logNormal draws sizes whose log2 is normal around log2(median) with sd bits.
func logNormal(median, bits float64) func(*rand.Rand) int64 {
	return func(rng *rand.Rand) int64 {
		return int64(median * math.Exp2(bits*rng.NormFloat64()))
	}
}

func fixed(n int64) func(*rand.Rand) int64 { return func(*rand.Rand) int64 { return n } }

func merge(parts ...[]request) []request {
	var out []request
	for _, p := range parts {
		out = append(out, p...)
	}
	// Stable merge by time: the parts are each sorted.
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j].at.Before(out[j-1].at); j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

// outcome of feeding requests to a fresh state.
type outcome struct {
	spikes, sustained []time.Time
	state             State
}

func feed(d *Detector, reqs []request) outcome {
	var o outcome
	for _, r := range reqs {
		res := d.Observe(&o.state, r.at, r.bytes)
		if res.Spike {
			o.spikes = append(o.spikes, r.at)
		}
		if res.Sustained {
			o.sustained = append(o.sustained, r.at)
		}
	}
	return o
}
