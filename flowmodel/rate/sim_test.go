package rate

import (
	"math"
	"math/rand/v2"
	"time"
)

var t0 = time.Date(2026, 1, 5, 0, 0, 0, 0, time.UTC)

// poisson returns the event times of a Poisson process on [from, to) whose rate, in
// events per hour, is rate(t) ≤ peak (thinning).
func poisson(rng *rand.Rand, from, to time.Time, peak float64, rate func(time.Time) float64) []time.Time {
	var out []time.Time
	t := from
	for {
		t = t.Add(time.Duration(rng.ExpFloat64() / peak * float64(time.Hour)))
		if !t.Before(to) {
			return out
		}
		if rng.Float64()*peak < rate(t) {
			out = append(out, t)
		}
	}
}

func constant(perHour float64) func(time.Time) float64 {
	return func(time.Time) float64 { return perHour }
}

// daily is a smooth daily cycle around mean with a ×3 ratio between peak and trough.
func daily(mean float64) func(time.Time) float64 {
	return func(t time.Time) float64 {
		return mean * (1 + 0.5*math.Sin(2*math.Pi*t.Sub(t0).Hours()/24))
	}
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
