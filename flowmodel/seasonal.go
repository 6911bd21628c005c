package flowmodel

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/meshguard/meshguard/flowmodel/rate"
)

// The seasonal detector (rate.Seasonal) judges each service's total request rate against
// its hour-of-day profile, both ways: a service calling far more than usual for the hour is
// rate_spike, one calling far less (or not at all) is rate_drop. Its profile is learned from
// every request the service makes, in every mode; it needs Config.Seasonal.WarmupDays of
// history per hour before it judges that hour, and it is not persisted, so after a restart
// it warms up again (the other detectors keep judging meanwhile).
//
// A rise belongs to the requests that make it: while the service's rate alarms, a request
// is flagged rate_spike only once the current bucket (hour) holds more requests than its
// expected count, so the usual share of each hour passes and the excess alerts; and once
// some of the alarm's requests went to an edge running well above its own rate (the test
// the service's rate CUSUM applies), only that edge's are flagged, so that a flood to one destination
// does not flag the service's ordinary calls elsewhere. A flood spread thin over many
// edges, none of them hot, is flagged on every request beyond the expected count. A drop
// belongs to no request: it is reported once per drop, on the service's next request (which
// closes the silent or quiet hours, however many) or by SweepSeasonal, whichever sees it
// first. A drop
// alerts, it never blocks.

// seasonState is one service's memory for the seasonal detector. Call its users with the
// service's mu held.
type seasonState struct {
	st rate.SeasonalState
	// dropOpen is set while a drop alarm that has been reported lasts, so that it is
	// reported once.
	dropOpen bool
	// last is the latest request's time (Unix nanoseconds).
	last int64
	// edge and edgeHot are set by Model.score: the request's edge (its hash), and whether
	// it runs well above its own expected rate (the test the service's rate CUSUM applies
	// to flag a request). decideSeasonal clears them.
	edge    uint64
	edgeHot bool
	// hot lists the edges (hashes) found hot since the current alarm began; hotN counts
	// them, up to maxHotEdges+1 (more than hot holds).
	hot  [maxHotEdges]uint64
	hotN int
}

// maxHotEdges is how many hot edges a service's alarm remembers; past them every edge
// counts as hot.
const maxHotEdges = 4

// excessOf reports whether a request to edge e carries part of the service's excess: every
// request does while no edge of the service has been hot since the alarm began (a flood
// spread thin over many edges), or more than maxHotEdges have; else only requests to the
// hot edges do (an edge stays hot for the alarm's duration, once its own rate detector has
// caught up with a flood).
func (st *seasonState) excessOf(e uint64) bool {
	if st.hotN == 0 || st.hotN > maxHotEdges {
		return true
	}
	for _, h := range st.hot[:st.hotN] {
		if h == e {
			return true
		}
	}
	return false
}

// markHot records that edge e was hot during the current alarm.
func (st *seasonState) markHot(e uint64) {
	if st.hotN <= maxHotEdges {
		for _, h := range st.hot[:min(st.hotN, maxHotEdges)] {
			if h == e {
				return
			}
		}
	}
	if st.hotN < maxHotEdges {
		st.hot[st.hotN] = e
	}
	st.hotN = min(st.hotN+1, maxHotEdges+1)
}

// decideSeasonal counts a request of s at t in its hour-of-day profile and adds the
// detector's verdict to v: in monitor and enforce modes, a rise (rate_spike, on the requests
// beyond the hour's expected count) or a drop not yet reported (rate_drop). While learning
// or quarantined the request only teaches the profile. It does not allocate. Call with
// s.mu held.
func (m *Model) decideSeasonal(s *service, t time.Time, v *Verdict) {
	spikeOff, dropOff := m.cfg.Disabled.Has(ReasonRateSpike), m.cfg.Disabled.Has(ReasonRateDrop)
	if spikeOff && dropOff {
		return
	}
	judged := s.mode == ModeMonitor || s.mode == ModeEnforce
	edge, hot := s.season.edge, s.season.edgeHot
	s.season.edge, s.season.edgeHot = 0, false
	if last, period := s.season.last, m.cfg.Seasonal.Period; last != 0 && t.UnixNano()-last > int64(period) {
		// Back after more than a period of silence: judge the silence as a sweep would
		// have, a period after the last request (the detector forgets a silence longer
		// than two periods once a request closes it).
		q := m.season.Advance(&s.season.st, time.Unix(0, last).Add(period))
		if q.Alarm && q.Drop && judged && !s.season.dropOpen && !dropOff {
			v.Reasons = v.Reasons.With(ReasonRateDrop)
			v.Score = max(v.Score, min(q.Score, maxSoftScore))
			if v.Action == Allow {
				v.Action = Alert
			}
		}
		s.season.dropOpen = s.season.dropOpen || q.Alarm && q.Drop
	}
	s.season.last = max(s.season.last, t.UnixNano())
	q := m.season.Observe(&s.season.st, t)
	if !q.Alarm {
		s.season.hotN = 0
	}
	if hot {
		s.season.markHot(edge)
	}
	if q.Alarm && q.Drop {
		if !judged || s.season.dropOpen {
			// A drop seen while learning or quarantined is old news once judged.
			s.season.dropOpen = true
			return
		}
		s.season.dropOpen = true
		if !dropOff {
			v.Reasons = v.Reasons.With(ReasonRateDrop)
			v.Score = max(v.Score, min(q.Score, maxSoftScore))
			if v.Action == Allow {
				v.Action = Alert
			}
		}
		return
	}
	s.season.dropOpen = false
	if !judged || spikeOff || !q.Alarm || q.Count <= q.Expected {
		return
	}
	if !s.season.excessOf(edge) {
		// Some of this hour's requests go to edges running well above their own rate:
		// the excess is theirs, not this request's.
		return
	}
	v.Reasons = v.Reasons.With(ReasonRateSpike)
	v.Score = max(v.Score, min(q.Score, maxSoftScore))
	if v.Action == Allow {
		v.Action = Alert
	}
	if s.mode == ModeEnforce && m.cfg.BlockReasons.Has(ReasonRateSpike) {
		v.Action = Block
	}
}

// RateDrop is a service whose request rate fell below its hour-of-day profile: an alert
// (reason rate_drop) that belongs to no request.
type RateDrop struct {
	Service string
	Mode    Mode
	// At is the time of the sweep that found the drop.
	At time.Time
	// Count is the requests the service made in the current bucket (hour) so far, Expected
	// what the bucket usually holds.
	Count, Expected float64
	// Score is the seasonal detector's score, in [0.5, 1].
	Score float64
}

func (d RateDrop) String() string {
	return fmt.Sprintf("%s: rate_drop (%s), %.0f requests this hour, %.0f expected, score %.2f",
		d.Service, d.Mode, d.Count, d.Expected, d.Score)
}

// SweepSeasonal closes the seasonal buckets of every service up to now, as its requests
// would, and returns the drops that no request or earlier sweep has reported: services in
// monitor or enforce mode that went quiet (a service that stopped calling makes no request
// to report it on). Call it about every minute with the server clock (serve) or the replay's
// clock; each drop is returned once, sorted by service. Services that never made a request
// are skipped. A drop is returned whatever Disabled says of rate_spike, unless rate_drop is
// disabled.
func (m *Model) SweepSeasonal(now time.Time) []RateDrop {
	if m.cfg.Disabled.Has(ReasonRateDrop) {
		return nil
	}
	var out []RateDrop
	for _, s := range m.all() {
		s.mu.Lock()
		if !s.last.IsZero() {
			q := m.season.Advance(&s.season.st, now)
			switch {
			case !q.Alarm || !q.Drop:
				s.season.dropOpen = false
			case s.season.dropOpen:
			default:
				s.season.dropOpen = true
				if s.mode == ModeMonitor || s.mode == ModeEnforce {
					out = append(out, RateDrop{Service: s.name, Mode: s.mode, At: now, Count: q.Count, Expected: q.Expected, Score: q.Score})
				}
			}
		}
		s.mu.Unlock()
	}
	slices.SortFunc(out, func(a, b RateDrop) int { return strings.Compare(a.Service, b.Service) })
	return out
}

// AcceptRate tells the model that a service's current rate shift (its rate_spike or
// rate_drop) is normal: the service's rate detectors, and the rate detector of each of its
// destinations whose rate is shifted, make their recent level their baseline at once,
// whatever their probation, and lift any rejection. Volume shifts (volume_spike, a possible
// exfiltration) are not accepted with it: accepting a rate must not adopt an upload elsewhere.
func (m *Model) AcceptRate(service string) error {
	s := m.lookup(service, false)
	if s == nil {
		return fmt.Errorf("unknown service %q", service)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	m.rate.Accept(&s.rate)
	m.season.Accept(&s.season.st)
	s.season.dropOpen = false
	m.shiftedEdges(s, func(es *edgeState, rateShifted, _ bool) {
		if rateShifted {
			m.rate.Accept(&es.rate)
		}
	})
	s.rs.force = true // saved at the next flush: a restart must not forget it
	m.markDirty(s)
	return nil
}

// RejectRate tells the model that a service's current rate or volume shift is not normal:
// the service's rate detectors, and those of each destination whose rate or volume is
// shifted, keep alarming instead of making it their baseline after probation (a slow ramp or
// a flood the workload hopes to outlast), until a probation period passes without alarm or
// (for a rate) AcceptRate.
func (m *Model) RejectRate(service string) error {
	s := m.lookup(service, false)
	if s == nil {
		return fmt.Errorf("unknown service %q", service)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	m.rate.Reject(&s.rate)
	m.season.Reject(&s.season.st)
	m.shiftedEdges(s, func(es *edgeState, rateShifted, volShifted bool) {
		if rateShifted {
			m.rate.Reject(&es.rate)
		}
		if volShifted {
			m.volume.Reject(&es.vol)
		}
	})
	s.rs.force = true
	m.markDirty(s)
	return nil
}

// shiftedEdges calls fn for each destination of s whose rate or volume is shifted: in alarm,
// held out of its baseline towards probation, or rejected. It walks every destination (an
// operator's call, not the request path). Call with s.mu held.
func (m *Model) shiftedEdges(s *service, fn func(es *edgeState, rateShifted, volShifted bool)) {
	for _, e := range s.dests.Values() {
		es := e.edge
		if es == nil {
			continue
		}
		held, rejected := m.rate.Shift(&es.rate)
		r := held > 0 || rejected || m.rate.Peek(&es.rate).Alarm
		held, rejected = m.volume.Shift(&es.vol)
		v := held > 0 || rejected || m.volume.Peek(&es.vol).Alarm
		if r || v {
			fn(es, r, v)
		}
	}
}
