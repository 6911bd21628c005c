package evaluate

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/meshguard/meshguard/flowmodel"
)

// VerdictLine is one verdict in a verdict file: one JSON object a line, one line per event,
// in the events' order. It is how a replay outside this process (`meshguard replay`) hands
// its verdicts to Measure, so that its scores can be compared with an in-process run. Values
// use DESIGN.md's names: verdict allow|alert|block, mode learn|monitor|enforce|quarantine,
// reason codes.
type VerdictLine struct {
	Verdict string   `json:"verdict"`
	Mode    string   `json:"mode"`
	Score   *float64 `json:"score"`
	Reasons []string `json:"reasons"`
}

// WriteVerdicts writes one VerdictLine per verdict.
func WriteVerdicts(w io.Writer, vs []flowmodel.Verdict) error {
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	for _, v := range vs {
		l := VerdictLine{Verdict: v.Action.String(), Score: &v.Score, Reasons: v.Reasons.Strings()}
		if v.Mode.Valid() {
			l.Mode = v.Mode.String()
		}
		if err := enc.Encode(l); err != nil {
			return fmt.Errorf("write verdicts: %w", err)
		}
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write verdicts: %w", err)
	}
	return nil
}

// ReadVerdicts reads a verdict file written by WriteVerdicts or by a replay.
func ReadVerdicts(r io.Reader) ([]flowmodel.Verdict, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), flowmodel.MaxEventLine)
	var out []flowmodel.Verdict
	for n := 1; sc.Scan(); n++ {
		if len(sc.Bytes()) == 0 {
			continue
		}
		var l VerdictLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			return nil, fmt.Errorf("read verdicts: line %d: %w", n, err)
		}
		v, err := l.Parse()
		if err != nil {
			return nil, fmt.Errorf("read verdicts: line %d: %w", n, err)
		}
		out = append(out, v)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read verdicts: %w", err)
	}
	return out, nil
}

// Parse converts the line to a Verdict; every field but reasons is required.
func (l VerdictLine) Parse() (flowmodel.Verdict, error) {
	var v flowmodel.Verdict
	var errs []error
	switch l.Verdict {
	case "allow":
		v.Action = flowmodel.Allow
	case "alert":
		v.Action = flowmodel.Alert
	case "block":
		v.Action = flowmodel.Block
	default:
		errs = append(errs, fmt.Errorf("verdict %q is not allow, alert or block", l.Verdict))
	}
	if l.Mode != "" {
		m, err := flowmodel.ParseMode(l.Mode)
		if err != nil {
			errs = append(errs, err)
		}
		v.Mode = m
	}
	if l.Score == nil {
		errs = append(errs, errors.New("score is required"))
	} else {
		v.Score = *l.Score
	}
	for _, s := range l.Reasons {
		r, err := flowmodel.ParseReason(s)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		v.Reasons = v.Reasons.With(r)
	}
	return v, errors.Join(errs...)
}
