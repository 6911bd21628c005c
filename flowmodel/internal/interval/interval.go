// Package interval holds what the event-time detectors (flowmodel/rate, flowmodel/volume,
// and flowmodel/shape's table for which interval an event falls in) share: the rules for
// their interval and half-life, which interval an event falls in, and decay over a run of
// intervals.
package interval

import (
	"fmt"
	"math"
	"time"
)

// Check reports what is wrong with the interval and the baseline half-life of the detector
// named what ("rate"). Events are counted in intervals of their Unix milliseconds, so the
// interval must be a whole number of milliseconds; a baseline cannot forget faster than one
// interval.
func Check(what string, interval, halfLife time.Duration) []error {
	var errs []error
	if interval < time.Millisecond || interval%time.Millisecond != 0 {
		errs = append(errs, fmt.Errorf("%s interval must be a whole number of milliseconds, at least 1ms, got %s", what, interval))
	}
	if halfLife < interval {
		errs = append(errs, fmt.Errorf("%s half-life %s is shorter than the interval %s", what, halfLife, interval))
	}
	return errs
}

// FloorDiv returns a/b rounded towards minus infinity, so that an event before the epoch
// falls in the interval that contains it, not the one after.
func FloorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}

// Pow returns b**n, by multiplication for the short gaps of a busy key.
func Pow(b float64, n int64) float64 {
	if n > 8 {
		return math.Pow(b, float64(n))
	}
	v := 1.0
	for range n {
		v *= b
	}
	return v
}
