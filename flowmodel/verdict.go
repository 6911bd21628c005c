package flowmodel

import (
	"errors"
	"fmt"
	"strings"
)

// Mode is how the model treats one service.
type Mode uint8

const (
	// ModeLearn allows every flow and records it in the baseline.
	ModeLearn Mode = iota + 1
	// ModeMonitor allows every flow and alerts on anomalies.
	ModeMonitor
	// ModeEnforce blocks flows to destinations outside the baseline and alerts on other
	// anomalies.
	ModeEnforce
	// ModeQuarantine blocks every flow of the service but an explicit allow list.
	ModeQuarantine
)

var modeNames = [...]string{ModeLearn: "learn", ModeMonitor: "monitor", ModeEnforce: "enforce", ModeQuarantine: "quarantine"}

// ModeNames lists the valid mode names in order.
var ModeNames = []string{"learn", "monitor", "enforce", "quarantine"}

func (m Mode) String() string {
	if int(m) < len(modeNames) && modeNames[m] != "" {
		return modeNames[m]
	}
	return fmt.Sprintf("mode(%d)", uint8(m))
}

// Valid reports whether m is one of the four modes.
func (m Mode) Valid() bool { return m >= ModeLearn && m <= ModeQuarantine }

// ParseMode parses a mode name. The error names the valid ones.
func ParseMode(s string) (Mode, error) {
	for m, name := range modeNames {
		if name != "" && name == s {
			return Mode(m), nil
		}
	}
	return 0, fmt.Errorf("unknown mode %q: valid modes are %s", s, strings.Join(ModeNames, ", "))
}

// MarshalText implements encoding.TextMarshaler.
func (m Mode) MarshalText() ([]byte, error) {
	if !m.Valid() {
		return nil, fmt.Errorf("invalid mode %d", uint8(m))
	}
	return []byte(m.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (m *Mode) UnmarshalText(b []byte) error {
	v, err := ParseMode(string(b))
	if err != nil {
		return err
	}
	*m = v
	return nil
}

// Action is the outcome of a decision: allow, alert (allow and report) or block.
type Action uint8

const (
	Allow Action = iota
	Alert
	Block
)

func (a Action) String() string {
	switch a {
	case Allow:
		return "allow"
	case Alert:
		return "alert"
	case Block:
		return "block"
	}
	return fmt.Sprintf("action(%d)", uint8(a))
}

// MarshalText implements encoding.TextMarshaler.
func (a Action) MarshalText() ([]byte, error) { return []byte(a.String()), nil }

// Reason is a stable code for why a flow is anomalous. The codes double as metric labels and
// span attribute values; their names are a contract (see DESIGN.md).
type Reason uint8

const (
	ReasonNewDestination Reason = iota
	ReasonHostIPMismatch
	ReasonNewShape
	ReasonRareShape
	ReasonRateSpike
	ReasonBurst
	ReasonVolumeSpike
	ReasonQuarantined
	ReasonInvalidRequest
	// ReasonUnknownDestination: no destination could be established (blocked in enforce and
	// quarantine, alerted in monitor, never learned).
	ReasonUnknownDestination
	// ReasonIdentityMismatch: two identity sources of one stream name different services.
	ReasonIdentityMismatch
	// ReasonOversizedShape: a request carried more than the model keeps of it (path segments,
	// header names, shape text); the excess was summarised, never stored raw.
	ReasonOversizedShape
	// ReasonParameterValue: a query or body parameter value broke its learned value model.
	ReasonParameterValue
	// ReasonRateDrop: a service's request rate fell below its hour-of-day profile (the
	// seasonal detector); reported on the service's next request and by Model.SweepSeasonal.
	ReasonRateDrop
	numReasons
)

var reasonNames = [numReasons]string{
	ReasonNewDestination: "new_destination",
	ReasonHostIPMismatch: "host_ip_mismatch",
	ReasonNewShape:       "new_shape",
	ReasonRareShape:      "rare_shape",
	ReasonRateSpike:      "rate_spike",
	ReasonBurst:          "burst",
	ReasonVolumeSpike:    "volume_spike",
	ReasonQuarantined:    "quarantined",
	ReasonInvalidRequest: "invalid_request",

	ReasonUnknownDestination: "unknown_destination",
	ReasonIdentityMismatch:   "identity_mismatch",
	ReasonOversizedShape:     "oversized_shape",
	ReasonParameterValue:     "parameter_value",
	ReasonRateDrop:           "rate_drop",
}

func (r Reason) String() string {
	if r < numReasons {
		return reasonNames[r]
	}
	return fmt.Sprintf("reason(%d)", uint8(r))
}

// AllReasons lists every reason code in a stable order.
func AllReasons() []Reason {
	out := make([]Reason, numReasons)
	for i := range out {
		out[i] = Reason(i)
	}
	return out
}

// ParseReason parses a reason code.
func ParseReason(s string) (Reason, error) {
	for i, n := range reasonNames {
		if n == s {
			return Reason(i), nil
		}
	}
	return 0, errors.New("unknown reason code " + s)
}

// Reasons is a set of reason codes. The zero value is the empty set.
type Reasons uint16

// With returns the set with r added.
func (rs Reasons) With(r Reason) Reasons { return rs | 1<<r }

// Has reports whether r is in the set.
func (rs Reasons) Has(r Reason) bool { return rs&(1<<r) != 0 }

// Empty reports whether the set is empty.
func (rs Reasons) Empty() bool { return rs == 0 }

// Append appends the codes in the set, in their stable order, to dst.
func (rs Reasons) Append(dst []string) []string {
	for r := Reason(0); r < numReasons; r++ {
		if rs.Has(r) {
			dst = append(dst, reasonNames[r])
		}
	}
	return dst
}

// Strings returns the codes in the set; never nil, so it encodes as [] in JSON.
func (rs Reasons) Strings() []string { return rs.Append(make([]string, 0, 2)) }

// Verdict is the model's conclusion about one flow.
type Verdict struct {
	Action Action
	// Mode is the service's mode when the flow was decided.
	Mode Mode
	// Score is higher the more anomalous the flow is; 0 for an expected flow, 1 for a flow the
	// model has no doubt about (a new destination, a quarantined service).
	Score   float64
	Reasons Reasons
	// Param names the parameter whose value raised parameter_value ("" otherwise).
	Param string
	// Episode is the alert episode the flow belongs to (see flowmodel/episode), 0 when the
	// verdict is allow; EpisodeNew is set when this flow opened it.
	Episode    uint64
	EpisodeNew bool
	// EpisodeKind is the reason the episode is about (meaningful when Episode is not 0).
	EpisodeKind Reason
}
