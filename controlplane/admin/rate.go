package admin

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"

	"github.com/meshguard/meshguard/flowmodel"
)

// A service's request rate that shifts (rate_spike, rate_drop) becomes its new baseline
// once the shift has lasted a probation period, unless an operator rejects it (issue 11):
//
//	POST /v1/services/{service}/rate/accept   the current level is normal: the baseline now
//	POST /v1/services/{service}/rate/reject   it is not: keep alarming past probation
//
// Both take a RateRequest and answer a RateResponse, with the operator role, under the same
// Origin, Content-Type and audit rules as approvals and rejections.

// RateRequest is the body of POST /v1/services/{service}/rate/accept and /rate/reject.
type RateRequest struct {
	// By names the person who decided, when the credential is shared; the credential's
	// name is recorded in any case.
	By string `json:"by,omitempty"`
	// Reason is kept in the audit log.
	Reason string `json:"reason,omitempty"`
}

// RateResponse is the answer to a rate acceptance or rejection: the service's state and
// the decision.
type RateResponse struct {
	flowmodel.ServiceRecord
	RateDecision RateDecision `json:"rate_decision"`
}

// RateDecision is what an operator decided about a service's rate, and what it was about.
type RateDecision struct {
	// Decision is "accepted" or "rejected".
	Decision string `json:"decision"`
	By       string `json:"by"`
	// Episodes are the service's open alert episodes with rate_spike or rate_drop among
	// their reasons when the decision was made: the shift it is about. Episodes close on
	// their own once the alerts stop (alert-episode-gap).
	Episodes []flowmodel.EpisodeRecord `json:"episodes"`
	// Note says what the operator should know, e.g. that no rate alarm was open.
	Note string `json:"note,omitempty"`
}

const rateWant = `{"by":"...","reason":"..."}`

// rateState is what the audit log records of a service's rate around a decision: the model
// exposes no more of its rate detectors' state than the episodes their alerts opened.
type rateState struct {
	OpenEpisodes []flowmodel.EpisodeRecord `json:"open_rate_episodes"`
	Decision     string                    `json:"decision,omitempty"`
	By           string                    `json:"by,omitempty"`
}

// rateEpisodes returns the open episodes of a service that a rate detector contributed to.
func rateEpisodes(m Model, service string) []flowmodel.EpisodeRecord {
	out := []flowmodel.EpisodeRecord{}
	s, ok := m.Service(service)
	if !ok || s.Episodes == nil {
		return out
	}
	for _, e := range s.Episodes.Open {
		if slices.Contains(e.Reasons, flowmodel.ReasonRateSpike.String()) || slices.Contains(e.Reasons, flowmodel.ReasonRateDrop.String()) {
			e.FirstSeen, _ = flowmodel.ClampTime(e.FirstSeen)
			e.LastSeen, _ = flowmodel.ClampTime(e.LastSeen)
			out = append(out, e)
		}
	}
	return out
}

func (h *Handler) acceptRate(w http.ResponseWriter, r *http.Request) { h.rateDecision(w, r, true) }
func (h *Handler) rejectRate(w http.ResponseWriter, r *http.Request) { h.rateDecision(w, r, false) }

// rateDecision accepts (accept) or rejects a service's current rate shift. The decision
// changes no Envoy configuration, so OnChange is not called.
func (h *Handler) rateDecision(w http.ResponseWriter, r *http.Request, accept bool) {
	name := r.PathValue("service")
	var req RateRequest
	if !decodeBody(w, r, &req, rateWant) {
		return
	}
	action, decision, do := "reject_rate", "rejected", h.model.RejectRate
	if accept {
		action, decision, do = "accept_rate", "accepted", h.model.AcceptRate
	}
	if !h.model.HasService(name) {
		writeError(w, http.StatusNotFound, notFound(name).Error())
		return
	}
	id := IdentityFrom(r.Context())
	by := id.Name
	if b := strings.TrimSpace(req.By); b != "" {
		by = fmt.Sprintf("%.100s (%s)", b, id.Name)
	}
	a := h.auditRecord(r, id, action, name, "rate", req.Reason)
	var episodes []flowmodel.EpisodeRecord
	err := h.apply(w, name, a, func() error {
		if !h.model.HasService(name) {
			return notFound(name)
		}
		episodes = rateEpisodes(h.model, name)
		a.Before = mustJSON(rateState{OpenEpisodes: episodes})
		if err := do(name); err != nil {
			if errors.Is(err, flowmodel.ErrUnknownService) || !h.model.HasService(name) {
				return notFound(name) // forgotten meanwhile
			}
			return &statusError{http.StatusConflict, err}
		}
		a.After = mustJSON(rateState{OpenEpisodes: rateEpisodes(h.model, name), Decision: decision, By: by})
		return nil
	})
	if err != nil {
		return
	}
	h.log.Info("rate "+decision, slog.String("service", name), slog.String("by", by), slog.Int("open_rate_episodes", len(episodes)),
		slog.Uint64("audit", a.Seq))
	s, _ := h.model.Service(name)
	s.Encodable()
	resp := RateResponse{ServiceRecord: s, RateDecision: RateDecision{Decision: decision, By: by, Episodes: episodes}}
	if len(episodes) == 0 {
		if accept {
			resp.RateDecision.Note = "no rate alarm is open for this service: its recent level is now its baseline all the same"
		} else {
			resp.RateDecision.Note = "no rate alarm is open for this service: a shift that starts before a probation period passes without alarm keeps alarming instead of becoming the baseline"
		}
	}
	writeJSON(w, http.StatusOK, resp)
}
