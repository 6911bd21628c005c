package flowmodel

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/meshguard/meshguard/flowmodel/shape"
)

// Feedback is an operator's approval or rejection of a flagged destination or shape.
type Feedback struct {
	// Destination is "host:port", "ip:port" or "[v6]:port".
	Destination string
	// Shape, when set, is a request shape on Destination in its text form (as in alerts and
	// ShapeRecord.Shape); then the feedback is about the shape.
	Shape string
	// By and At record who gave the feedback and when (wall clock).
	By string
	At time.Time
}

// maxFeedback bounds the feedback records kept per service.
const maxFeedback = 64

// Approve teaches the model that a destination, or a shape on a destination, is expected:
// it enters the baseline now, whatever its probation. An approved shape's destination is
// approved with it.
func (m *Model) Approve(service string, fb Feedback) error {
	pk, sh, err := m.parseFeedback(service, fb)
	if err != nil {
		return err
	}
	s, err := m.track(service)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	at := fb.At
	if at.IsZero() {
		at = s.last
	}
	dest := probeKey{dest: pk.dest}
	delete(s.rejected, dest)
	e := m.record(s, pk.dest, at, "approval")
	if e.source == sourceProbation { // an operator vouches for what probation tolerated
		e.source = "approval"
		s.near.note(m, e.key)
	}
	s.endProbation(dest)
	if sh != nil {
		delete(s.rejected, pk)
		s.endProbation(pk)
		es := e.edgeState()
		t := es.table(m.cfg.Shapes)
		s.observeShape(t, pk.shape, at)
		if in := es.findShape(pk.shape); in != nil {
			in.source = "approval"
		} else {
			es.putShape(newShapeInfo(pk.shape, *sh, at, at, "approval"))
		}
	}
	m.addFeedback(s, "approve", fb)
	return nil
}

// Reject teaches the model that a destination, or a shape on a destination, is not
// expected: it leaves the baseline and can come back only by approval, never by probation.
func (m *Model) Reject(service string, fb Feedback) error {
	pk, sh, err := m.parseFeedback(service, fb)
	if err != nil {
		return err
	}
	s := m.lookup(service, false)
	if s == nil {
		return fmt.Errorf("unknown service %q", service)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rejected == nil {
		s.rejected = make(map[probeKey]struct{})
	}
	if len(s.rejected) >= maxProbation {
		return fmt.Errorf("service %q has %d rejections already; approve or clear some first", service, len(s.rejected))
	}
	s.rejected[pk] = struct{}{}
	s.endProbation(pk)
	if sh == nil {
		s.dests.Remove(pk.dest) // recorded in s.removed by the eviction callback
	} else if e, ok := s.dests.Peek(pk.dest); ok && e.edge != nil && e.edge.shapes != nil {
		n := e.edge.shapes.Len()
		e.edge.shapes.Forget(pk.shape)
		s.shapeCount += e.edge.shapes.Len() - n
		e.edge.dropShape(pk.shape)
		markEntry(s, e)
	}
	m.addFeedback(s, "reject", fb)
	return nil
}

// parseFeedback returns what feedback is about: its destination, or its shape on its
// destination (with the parsed shape, nil for a destination).
func (m *Model) parseFeedback(service string, fb Feedback) (probeKey, *shape.Shape, error) {
	var errs []error
	if service == "" {
		errs = append(errs, errors.New("empty service name"))
	}
	var pk probeKey
	var err error
	if pk.dest, err = parseDestKey(fb.Destination); err != nil {
		errs = append(errs, err)
	}
	var sh *shape.Shape
	if strings.TrimSpace(fb.Shape) != "" {
		parsed, err := shape.Parse(strings.TrimSpace(fb.Shape))
		if err != nil {
			errs = append(errs, err)
		} else {
			pk.shape = m.shaper.KeyOf(parsed)
		}
		sh = &parsed
	}
	return pk, sh, errors.Join(errs...)
}

// endProbation takes k off probation, if it is on it.
func (s *service) endProbation(k probeKey) {
	if s.probation != nil {
		s.probation.Remove(k)
	}
}

func (m *Model) addFeedback(s *service, action string, fb Feedback) {
	rec := FeedbackRecord{Action: action, Destination: fb.Destination, Shape: fb.Shape, By: fb.By, At: fb.At}
	if len(s.feedback) >= maxFeedback {
		s.feedback = append(s.feedback[:0], s.feedback[1:]...)
	}
	s.feedback = append(s.feedback, rec)
	m.markDirty(s)
}

// replayRejections rebuilds the set of rejected destinations and shapes from the feedback
// records of a restored service.
func (m *Model) replayRejections(s *service) {
	for _, fb := range s.feedback {
		pk, _, err := m.parseFeedback(s.name, Feedback{Destination: fb.Destination, Shape: fb.Shape})
		if err != nil {
			continue
		}
		switch fb.Action {
		case "reject":
			if s.rejected == nil {
				s.rejected = make(map[probeKey]struct{})
			}
			s.rejected[pk] = struct{}{}
		case "approve":
			delete(s.rejected, pk)
		}
	}
}

// Learn records f in its service's baseline whatever the service's mode, as a trusted
// source does (a capture of staging traffic, a file of flow events): destinations, shapes
// and the detectors' histories. It does not change modes; a service new to the model starts
// in DefaultMode, and its learning period counts from f's event time. A host without IP is
// learned as a host. Event times are clamped as in Decide; shapes are cut to the limits.
func (m *Model) Learn(f *Flow) error {
	if f.Service == "" || !f.Destination.Valid() {
		return errors.New("learn: a flow needs a service and a destination")
	}
	s, err := m.track(f.Service)
	if err != nil {
		return err
	}
	now := m.cfg.Now()
	f.Time = m.clamp(f.Time, now)
	normalize(&f.Destination)
	req := shapeReq{f: f}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.count(f.Time)
	s.tick(f.Time, now, !m.cfg.EventClock)
	m.learn(s, f, &req)
	m.markDirty(s)
	return nil
}
