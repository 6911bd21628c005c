package flowmodel

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// AuditRecord is one change an operator made through the admin API: who, what, on which
// service, the state before and after, and why. The store keeps them in order.
type AuditRecord struct {
	// Seq is the record's place in the log, assigned by the store (1, 2, ...).
	Seq uint64 `json:"seq"`
	// At is when the change was made (wall clock).
	At time.Time `json:"at"`
	// Who names the credential that made the change (a token's name, a certificate's
	// identity); Role is the role it held; From is the client's address.
	Who  string `json:"who"`
	Role string `json:"role"`
	From string `json:"from,omitempty"`
	// Action is what was done: "mode", "approve", "reject", "token.create", "token.revoke".
	Action string `json:"action"`
	// Service is the service changed, Target what within it (a destination, a shape, a
	// token's name).
	Service string `json:"service,omitempty"`
	Target  string `json:"target,omitempty"`
	// Before and After are the state changed, as JSON (a mode, a destination's record).
	Before json.RawMessage `json:"before,omitempty"`
	After  json.RawMessage `json:"after,omitempty"`
	// Reason is the operator's optional explanation.
	Reason string `json:"reason,omitempty"`
}

// AuditStore is a Store that can also keep an audit log: SaveAudited writes the records and
// the audit records in ONE transaction synced to disk before it returns, so that a change
// and its audit entry are kept or lost together, and sets each audit record's Seq. Like
// Save, it may return SaveErrors for services it could not save; the audit records and the
// other services are then saved.
type AuditStore interface {
	Store
	SaveAudited(records []ServiceRecord, audit []AuditRecord) error
}

// SaveErrors is what Store.Save returns when some services could not be saved while the
// others were: service name → why. The persister keeps the failing services' changes and
// retries them; it forgets those of the services saved.
type SaveErrors map[string]error

func (e SaveErrors) Error() string {
	names := slices.Sorted(maps.Keys(e))
	var b strings.Builder
	fmt.Fprintf(&b, "%d services not saved: ", len(e))
	for i, n := range names {
		if i > 0 {
			b.WriteString("; ")
		}
		if i == 5 {
			fmt.Fprintf(&b, "and %d more", len(names)-5)
			break
		}
		fmt.Fprintf(&b, "%s: %v", quote(n), e[n])
	}
	return b.String()
}
