package flowmodel

import (
	"time"
)

// The rate, seasonal and volume detectors' states are saved with a service, so that a
// restart neither forgets an operator's decision on a shift (RejectRate would otherwise be
// lost, and the shift adopted after its probation) nor blinds the detectors for their
// warm-up (two days for the seasonal profile). They change with every request, so a service
// saves them at most every rateSaveInterval of its clock, and at once after AcceptRate or
// RejectRate. A state that does not decode (another version) is dropped: that detector warms
// up again, and the rest of the service is restored.

// RateSnapshot is the binary state of a service's rate, seasonal and volume detectors, in a
// save only; nil there when not due (a Store then keeps what it has).
type RateSnapshot struct {
	Service  []byte      `json:"service,omitempty"`  // rate.State of the service's total
	Seasonal []byte      `json:"seasonal,omitempty"` // rate.SeasonalState
	Edges    []EdgeRates `json:"edges,omitempty"`
}

// EdgeRates is the binary state of one destination's rate and volume detectors.
type EdgeRates struct {
	Destination string `json:"destination"`
	Rate        []byte `json:"rate,omitempty"`   // rate.State
	Volume      []byte `json:"volume,omitempty"` // volume.State
}

// rateSaveInterval is how often, at most, a busy service saves its detectors' states.
const rateSaveInterval = 10 * time.Minute

// rateSave is when a service last saved its detectors' states.
type rateSave struct {
	at       time.Time // the service's clock at the last save
	requests int64     // its request count then
	force    bool      // an operator's decision waits to be saved
}

// rateRecord returns the states to save, or nil when none is due. Call with s.mu held.
func (s *service) rateRecord() *RateSnapshot {
	due := s.rs.force || (s.requests != s.rs.requests && !s.now.Before(s.rs.at.Add(rateSaveInterval)))
	if !due {
		return nil
	}
	s.rs = rateSave{at: s.now, requests: s.requests}
	var r RateSnapshot
	r.Service, _ = s.rate.AppendBinary(nil) // the state encoders never fail
	r.Seasonal, _ = s.season.st.AppendBinary(nil)
	for _, e := range s.dests.Values() {
		es := e.edge
		if es == nil {
			continue
		}
		er := EdgeRates{Destination: e.key.String()}
		er.Rate, _ = es.rate.AppendBinary(nil)
		er.Volume, _ = es.vol.AppendBinary(nil)
		r.Edges = append(r.Edges, er)
	}
	return &r
}

// restoreRates loads saved detector states into s, whose destinations are restored. It
// returns how many states it dropped (they did not decode, or name no destination of s).
func (s *service) restoreRates(r *RateSnapshot) (dropped int) {
	if r == nil {
		return 0
	}
	if r.Service != nil && s.rate.UnmarshalBinary(r.Service) != nil {
		dropped++
	}
	if r.Seasonal != nil && s.season.st.UnmarshalBinary(r.Seasonal) != nil {
		dropped++
	}
	for _, er := range r.Edges {
		k, err := parseDestKey(er.Destination)
		e, ok := s.dests.Peek(k)
		if err != nil || !ok {
			dropped++
			continue
		}
		es := e.edgeState()
		if er.Rate != nil && es.rate.UnmarshalBinary(er.Rate) != nil {
			dropped++
		}
		if er.Volume != nil && es.vol.UnmarshalBinary(er.Volume) != nil {
			dropped++
		}
	}
	return dropped
}
