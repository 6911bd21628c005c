package rate

import (
	"math/rand/v2"
	"slices"
	"time"

	"github.com/meshguard/meshguard/flowmodel/internal/sim"
)

var t0 = sim.T0

// poisson returns the event times of a Poisson process on [from, to) whose rate, in
// events per hour, is rate(t) ≤ peak.
func poisson(rng *rand.Rand, from, to time.Time, peak float64, rate func(time.Time) float64) []time.Time {
	return slices.Collect(sim.Poisson(rng, from, to, peak, rate))
}

func constant(perHour float64) func(time.Time) float64 {
	return func(time.Time) float64 { return perHour }
}

// run feeds events to a fresh state and returns the times of the events that alarmed.
func run(d *Detector, events []time.Time) (alarms []time.Time, s *State) {
	s = new(State)
	for _, t := range events {
		if d.Observe(s, t).Alarm {
			alarms = append(alarms, t)
		}
	}
	return alarms, s
}

func concat(parts ...[]time.Time) []time.Time {
	var out []time.Time
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}
