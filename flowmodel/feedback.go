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
	k, sh, err := m.parseFeedback(service, fb)
	if err != nil {
		return err
	}
	s := m.lookup(service, true)
	if s == nil {
		return fmt.Errorf("cannot track service %q: %d services already tracked", service, m.cfg.MaxServices)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	at := fb.At
	if at.IsZero() {
		at = s.last
	}
	delete(s.rejected, probeKey{dest: k})
	e := m.record(s, k, at, "approval")
	if s.probation != nil {
		s.probation.Remove(probeKey{dest: k})
	}
	if sh != nil {
		key := m.shaper.KeyOf(*sh)
		delete(s.rejected, probeKey{dest: k, shape: key})
		if s.probation != nil {
			s.probation.Remove(probeKey{dest: k, shape: key})
		}
		es := e.edgeState()
		t := es.table(m.cfg.Shapes)
		t.Observe(key, at)
		if in := es.findShape(key); in != nil {
			in.source = "approval"
		} else {
			es.putShape(newShapeInfo(key, *sh, at, at, "approval"))
		}
	}
	m.addFeedback(s, "approve", fb)
	return nil
}

// Reject teaches the model that a destination, or a shape on a destination, is not
// expected: it leaves the baseline and can come back only by approval, never by probation.
func (m *Model) Reject(service string, fb Feedback) error {
	k, sh, err := m.parseFeedback(service, fb)
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
	if sh == nil {
		s.rejected[probeKey{dest: k}] = struct{}{}
		if s.probation != nil {
			s.probation.Remove(probeKey{dest: k})
		}
		s.dests.Remove(k) // recorded in s.removed by the eviction callback
	} else {
		key := m.shaper.KeyOf(*sh)
		s.rejected[probeKey{dest: k, shape: key}] = struct{}{}
		if s.probation != nil {
			s.probation.Remove(probeKey{dest: k, shape: key})
		}
		if e, ok := s.dests.Peek(k); ok && e.edge != nil && e.edge.shapes != nil {
			e.edge.shapes.Forget(key)
			e.edge.dropShape(key)
			markEntry(s, e)
		}
	}
	m.addFeedback(s, "reject", fb)
	return nil
}

func (m *Model) parseFeedback(service string, fb Feedback) (destKey, *shape.Shape, error) {
	var errs []error
	if service == "" {
		errs = append(errs, errors.New("empty service name"))
	}
	k, err := parseDestKey(fb.Destination)
	if err != nil {
		errs = append(errs, err)
	}
	var sh *shape.Shape
	if strings.TrimSpace(fb.Shape) != "" {
		parsed, err := shape.Parse(strings.TrimSpace(fb.Shape))
		if err != nil {
			errs = append(errs, err)
		}
		sh = &parsed
	}
	return k, sh, errors.Join(errs...)
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
		k, sh, err := m.parseFeedback(s.name, Feedback{Destination: fb.Destination, Shape: fb.Shape})
		if err != nil {
			continue
		}
		pk := probeKey{dest: k}
		if sh != nil {
			pk.shape = m.shaper.KeyOf(*sh)
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
// in DefaultMode, and its learning period counts from f's event time.
func (m *Model) Learn(f *Flow) error {
	if f.Service == "" || !f.Destination.Valid() {
		return errors.New("learn: a flow needs a service and a destination")
	}
	s := m.lookup(f.Service, true)
	if s == nil {
		return fmt.Errorf("cannot track service %q: %d services already tracked", f.Service, m.cfg.MaxServices)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.count(f.Time)
	m.learn(s, f)
	m.markDirty(s)
	return nil
}
