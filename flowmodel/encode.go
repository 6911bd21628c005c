package flowmodel

import (
	"math"
	"time"
)

// Time bounds of what is encoded: JSON (RFC 3339) cannot carry a year past 9999, and no event
// of meshguard's predates the Unix epoch. The zero time stays zero ("unknown").
var (
	MinEncodedTime = time.Unix(0, 0).UTC()
	MaxEncodedTime = time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)
)

// ClampTime returns t moved into [MinEncodedTime, MaxEncodedTime], and whether it moved.
// The zero time is returned as it is.
func ClampTime(t time.Time) (time.Time, bool) {
	switch {
	case t.IsZero():
		return t, false
	case t.Before(MinEncodedTime):
		return MinEncodedTime, true
	case t.After(MaxEncodedTime):
		return MaxEncodedTime, true
	}
	return t, false
}

func clampFloat(f float64) (float64, bool) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, true
	}
	return f, false
}

// Encodable makes r safe to encode as JSON: every time is clamped with ClampTime and every
// NaN or infinite number becomes 0. It returns how many values it changed. Slices that need
// a change are copied first: r may share them with the model or the caller.
func (r *ServiceRecord) Encodable() int {
	n := 0
	t := func(p *time.Time) {
		if v, ok := ClampTime(*p); ok {
			*p, n = v, n+1
		}
	}
	f := func(p *float64) {
		if v, ok := clampFloat(*p); ok {
			*p, n = v, n+1
		}
	}
	t(&r.ModeChanged)
	t(&r.LearnStart)
	t(&r.FirstSeen)
	t(&r.LastSeen)
	if r.Calibration != nil {
		c := *r.Calibration
		before := n
		t(&c.Since)
		t(&c.Until)
		f(&c.Threshold)
		var hist []float64
		for i, v := range c.Histogram {
			if _, bad := clampFloat(v); bad {
				if hist == nil {
					hist = append([]float64(nil), c.Histogram...)
				}
				f(&hist[i])
			}
		}
		if hist != nil {
			c.Histogram = hist
		}
		if n != before {
			r.Calibration = &c
		}
	}
	r.Destinations = copyIf(r.Destinations, func(d *DestinationRecord) int {
		m := n
		t(&d.FirstSeen)
		t(&d.LastSeen)
		return n - m
	})
	r.Shapes = copyIf(r.Shapes, func(s *ShapeRecord) int {
		m := n
		t(&s.FirstSeen)
		t(&s.LastSeen)
		f(&s.Weight)
		return n - m
	})
	r.Feedback = copyIf(r.Feedback, func(fb *FeedbackRecord) int {
		m := n
		t(&fb.At)
		return n - m
	})
	return n
}

// copyIf applies fix to a copy of each element and, the first time fix changes one, copies
// the slice so that the caller's is never written.
func copyIf[T any](s []T, fix func(*T) int) []T {
	copied := false
	for i := range s {
		v := s[i]
		if fix(&v) == 0 {
			continue
		}
		if !copied {
			s = append([]T(nil), s...)
			copied = true
		}
		s[i] = v
	}
	return s
}
