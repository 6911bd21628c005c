// Package interval holds the arithmetic the event-time detectors (flowmodel/rate,
// flowmodel/volume) share: which interval an event falls in, and decay over a run of
// intervals.
package interval

import "math"

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
