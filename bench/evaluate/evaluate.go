// Package evaluate measures a detection model on labelled flow events: it reads flow-event
// JSONL with a label per event, runs the events through a model in file order, and reports
// per attack kind the ROC-AUC, the average precision, the recall at a budget of false alerts
// per service-day, the recall of the model's own alerts and the time from an attack's first
// flow to its first alert. The evaluation programs in bench/ (stratosphere, synth) share it.
//
// Learning and scoring follow the model: an event decided in learn mode (Verdict.Mode) is
// part of the learning; a benign one is no decision and is left out, an attack one is
// counted as missed (it ranks below every scored event). Everything else is scored.
package evaluate

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/meshguard/meshguard/flowmodel"
)

// Decider is the model under evaluation. *flowmodel.Model satisfies it, and so will any model
// with more detectors. Decide is called once per event, in file order, from one goroutine;
// the model must run on event time (Flow.Time) and must not retain f.
type Decider interface {
	Decide(f *flowmodel.Flow) flowmodel.Verdict
}

// Event is one labelled flow event.
type Event struct {
	Flow flowmodel.Flow
	// Label is the event's ground truth: "" or a benign label (Options.Benign) for normal
	// traffic, an unknown label (Options.Unknown) for traffic whose truth is not known, any
	// other value names the attack kind.
	Label string
	// Attack names the attack instance the event belongs to (time to detect is measured per
	// instance); when empty the instance is the pair (label, service).
	Attack string
	// Line is the event's line in its file, counting from 1.
	Line int
}

// labels are the fields this package reads beside the flow event itself.
type labels struct {
	Label  string `json:"label"`
	Attack string `json:"attack"`
}

// Read reads labelled flow events (DESIGN.md's JSONL format plus "label" and "attack"). Unlike
// a replay, which skips bad lines, evaluation data must be clean: the first bad line is an
// error naming it.
func Read(r io.Reader) ([]Event, error) {
	er := flowmodel.NewEventReader(r)
	var out []Event
	for {
		f, err := er.Next()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read events: %w", err)
		}
		var l labels
		if err := json.Unmarshal(er.Raw, &l); err != nil {
			return nil, fmt.Errorf("read events: line %d: label: %w", er.Line(), err)
		}
		out = append(out, Event{Flow: f, Label: l.Label, Attack: l.Attack, Line: er.Line()})
	}
}

// WriteJSONL writes recs as JSON, one a line, without HTML escaping. Records that are flow
// events with "label" and "attack" fields are written as Read reads them.
func WriteJSONL[T any](w io.Writer, recs []T) error {
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	enc.SetEscapeHTML(false)
	for i := range recs {
		if err := enc.Encode(&recs[i]); err != nil {
			return err
		}
	}
	return bw.Flush()
}

// WriteJSONLFile writes recs with WriteJSONL to the file at path, or to stdout when path is
// "-" (an --out flag's value).
func WriteJSONLFile[T any](path string, stdout io.Writer, recs []T) error {
	if path == "-" {
		return WriteJSONL(stdout, recs)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := WriteJSONL(f, recs); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// Run decides every event with d, in order, and returns the verdicts, one per event.
func Run(events []Event, d Decider) []flowmodel.Verdict {
	out := make([]flowmodel.Verdict, len(events))
	for i := range events {
		f := events[i].Flow
		out[i] = d.Decide(&f)
	}
	return out
}
