// Package sim generates the simulated traffic the tests of the event-time detectors
// (flowmodel/rate, flowmodel/volume) feed them.
package sim

import (
	"iter"
	"math"
	"math/rand/v2"
	"time"
)

// T0 is the start of simulated time, a Monday at midnight UTC.
var T0 = time.Date(2026, 1, 5, 0, 0, 0, 0, time.UTC)

// Poisson yields the event times of a Poisson process on [from, to) whose rate, in events
// per hour, is rate(t) ≤ peak (thinning). It draws from rng as it goes, so a caller may draw
// more (a request's size, say) for each event it is yielded.
func Poisson(rng *rand.Rand, from, to time.Time, peak float64, rate func(time.Time) float64) iter.Seq[time.Time] {
	return func(yield func(time.Time) bool) {
		t := from
		for {
			t = t.Add(time.Duration(rng.ExpFloat64() / peak * float64(time.Hour)))
			if !t.Before(to) {
				return
			}
			if rng.Float64()*peak < rate(t) && !yield(t) {
				return
			}
		}
	}
}

// Daily is a smooth daily cycle around mean with a ×3 ratio between peak and trough.
func Daily(mean float64) func(time.Time) float64 {
	return func(t time.Time) float64 {
		return mean * (1 + 0.5*math.Sin(2*math.Pi*t.Sub(T0).Hours()/24))
	}
}

// First returns the first of ts, or "none", for messages.
func First(ts []time.Time) any {
	if len(ts) == 0 {
		return "none"
	}
	return ts[0]
}
