package admin

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/meshguard/meshguard/flowmodel"
	"github.com/meshguard/meshguard/flowmodel/rate"
)

// rateT0 is a Monday midnight: the rate tests learn three whole days of 120 requests an
// hour per service, then flood at ten times that.
var rateT0 = time.Date(2026, 1, 5, 0, 0, 0, 0, time.UTC)

const (
	rateLearn     = 72 * time.Hour
	rateProbation = 12 * time.Hour
	floodStart    = rateLearn + time.Hour
)

// withRateShifts configures the model so that every rate_spike comes from the seasonal
// detector, judged by one hour-of-day profile with a probation of rateProbation: events are
// replayed (days in milliseconds), the other detectors are off and the rate CUSUM is deaf.
func withRateShifts(c *flowmodel.Config, _ *Options) {
	c.LearnWindow = rateLearn
	c.EventClock = true
	c.Disabled = flowmodel.Reasons(0).With(flowmodel.ReasonBurst).With(flowmodel.ReasonVolumeSpike).
		With(flowmodel.ReasonNewShape).With(flowmodel.ReasonRareShape)
	c.Rate = rate.Config{Threshold: 1e9}
	c.Seasonal = rate.SeasonalConfig{SameWeekends: true, Probation: rateProbation}
}

// feedRate decides a request of each of svcs every `every` on [from, to) after rateT0 and
// returns, per service, how many were flagged rate_spike.
func (e *env) feedRate(svcs []string, from, to, every time.Duration) map[string]int {
	e.t.Helper()
	spikes := map[string]int{}
	for at := from; at < to; at += every {
		for _, svc := range svcs {
			f := flowmodel.Flow{Time: rateT0.Add(at), Service: svc, Method: "GET", Path: "/", RequestBytes: -1,
				Destination: flowmodel.Destination{Host: "api.example.com", Port: 443}}
			if v := e.model.Decide(&f); v.Reasons.Has(flowmodel.ReasonRateSpike) {
				spikes[svc]++
			}
		}
	}
	return spikes
}

// learnRate teaches svcs three days of 120 requests an hour; they end in monitor mode.
func (e *env) learnRate(svcs ...string) {
	e.t.Helper()
	if n := e.feedRate(svcs, 0, floodStart, 30*time.Second); len(n) != 0 {
		e.t.Fatalf("rate_spike at the usual rate: %v", n)
	}
	for _, svc := range svcs {
		if m := e.mode(svc); m != flowmodel.ModeMonitor {
			e.t.Fatalf("%s: mode %s after learning, want monitor", svc, m)
		}
	}
}

func ratePath(svc, decision string) string {
	return "/v1/services/" + url.PathEscape(svc) + "/rate/" + decision
}

// TestRateShiftAcceptReject: a flood at ten times a service's usual rate alarms until its
// probation ends, then becomes its baseline (shop/ctl); rejected through the API it keeps
// alarming past probation (shop/rej); accepted through the API it stops alarming at once,
// before probation (shop/acc).
func TestRateShiftAcceptReject(t *testing.T) {
	e := newEnv(t, withRateShifts)
	svcs := []string{"shop/ctl", "shop/rej", "shop/acc"}
	e.learnRate(svcs...)
	at := floodStart
	flood := func(d time.Duration) map[string]int {
		t.Helper()
		s := e.feedRate(svcs, at, at+d, 3*time.Second)
		at += d
		t.Logf("rate_spike in the flood's hours to %s: %v", at-floodStart, s)
		return s
	}
	if s := flood(time.Hour); s["shop/ctl"] == 0 || s["shop/rej"] == 0 || s["shop/acc"] == 0 {
		t.Fatalf("first hour of the flood: rate_spike %v, want every service", s)
	}
	var rr RateResponse
	e.mustJSON(e.do("POST", ratePath("shop/rej", "reject"), e.tokens[RoleOperator], RateRequest{By: "alice", Reason: "INC-7"}), &rr)
	if d := rr.RateDecision; d.Decision != "rejected" || d.By != "alice (operator-tok)" || len(d.Episodes) != 1 ||
		d.Episodes[0].Kind != "rate_spike" || d.Note != "" || rr.Name != "shop/rej" {
		t.Fatalf("rejection answered %+v", d)
	}
	flood(8 * time.Hour)
	e.mustJSON(e.do("POST", ratePath("shop/acc", "accept"), e.tokens[RoleOperator], RateRequest{}), &rr)
	if d := rr.RateDecision; d.Decision != "accepted" || d.By != "operator-tok" || len(d.Episodes) != 1 {
		t.Fatalf("acceptance answered %+v", d)
	}
	if s := flood(time.Hour); s["shop/acc"] != 0 || s["shop/ctl"] == 0 || s["shop/rej"] == 0 {
		t.Fatalf("the hour after shop/acc's acceptance: rate_spike %v, want shop/acc alone silent", s)
	}
	flood(3 * time.Hour) // shop/ctl's probation ends
	if s := flood(4 * time.Hour); s["shop/ctl"] != 0 || s["shop/rej"] == 0 {
		t.Fatalf("past probation: rate_spike %v, want shop/ctl silent (its flood is its baseline) and shop/rej alarming (rejected)", s)
	}
}

// TestRateDecisionAudited: an acceptance and a rejection are each one audit record, with who
// (the credential, and the person it names), the reason and the open rate episodes; a bad
// body is 400, an unknown service 404 and never a phantom service, and nothing is recorded
// for either.
func TestRateDecisionAudited(t *testing.T) {
	e := newEnv(t)
	op := e.tokens[RoleOperator]
	var rr RateResponse
	e.mustJSON(e.do("POST", ratePath("shop/cart", "accept"), op, RateRequest{By: "carol", Reason: "the sale starts"}), &rr)
	if d := rr.RateDecision; d.Decision != "accepted" || len(d.Episodes) != 0 || !strings.Contains(d.Note, "no rate alarm is open") {
		t.Fatalf("acceptance without an alarm answered %+v", d)
	}
	e.mustJSON(e.do("POST", ratePath("shop/cart", "reject"), op, RateRequest{}), &rr)
	for _, tc := range []struct {
		name string
		q    req
		code int
		want string
	}{
		{"unknown service", req{path: ratePath("nobody/here", "accept"), body: RateRequest{}}, http.StatusNotFound, "unknown service"},
		{"unknown service, reject", req{path: ratePath("nobody/here", "reject"), body: RateRequest{}}, http.StatusNotFound, "unknown service"},
		{"no body", req{path: ratePath("shop/cart", "accept"), contentType: "application/json"}, http.StatusBadRequest, "bad JSON body"},
		{"unknown field", req{path: ratePath("shop/cart", "reject"), body: `{"destination":"api.example.com:443"}`, contentType: "application/json"}, http.StatusBadRequest, "unknown field"},
		{"two values", req{path: ratePath("shop/cart", "reject"), body: `{} {}`, contentType: "application/json"}, http.StatusBadRequest, "more than one value"},
		{"not an object", req{path: ratePath("shop/cart", "accept"), body: `"yes"`, contentType: "application/json"}, http.StatusBadRequest, "bad JSON body"},
		{"another decision", req{path: ratePath("shop/cart", "ignore"), body: RateRequest{}}, http.StatusNotFound, "no such endpoint"},
		{"GET", req{method: "GET", path: ratePath("shop/cart", "accept")}, http.StatusNotFound, "no such endpoint"},
		{"too large", req{path: ratePath("shop/cart", "accept"), body: RateRequest{Reason: strings.Repeat("x", maxBody)}}, http.StatusRequestEntityTooLarge, "too large"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := tc.q
			if q.method == "" {
				q.method = "POST"
			}
			q.token = op
			wantError(t, e.send(q), tc.code, tc.want)
		})
	}
	if e.model.HasService("nobody/here") || len(e.model.ServiceNames()) != 2 {
		t.Fatalf("services %v after the refused requests", e.model.ServiceNames())
	}
	var list AuditList
	e.mustJSON(e.do("GET", "/v1/audit", e.tokens[RoleViewer], nil), &list)
	var rates []flowmodel.AuditRecord
	for _, a := range list.Records {
		if strings.HasSuffix(a.Action, "_rate") {
			rates = append(rates, a)
		}
	}
	if len(rates) != 2 {
		t.Fatalf("%d rate audit records, want 2: %+v", len(rates), rates)
	}
	acc, rej := rates[1], rates[0] // newest first
	if rej.Seq < acc.Seq {
		acc, rej = rej, acc
	}
	if acc.Action != "accept_rate" || acc.Who != "operator-tok" || acc.Role != "operator" || acc.Service != "shop/cart" ||
		acc.Target != "rate" || acc.Reason != "the sale starts" ||
		compact(acc.Before) != `{"open_rate_episodes":[]}` ||
		compact(acc.After) != `{"open_rate_episodes":[],"decision":"accepted","by":"carol (operator-tok)"}` {
		t.Errorf("acceptance audited as %+v before %s after %s", acc, acc.Before, acc.After)
	}
	if rej.Action != "reject_rate" || compact(rej.After) != `{"open_rate_episodes":[],"decision":"rejected","by":"operator-tok"}` {
		t.Errorf("rejection audited as %+v after %s", rej, rej.After)
	}
}

// TestAdversaryRateShiftAcceptance covers issue 10 case 4 for rate shifts: the compromised
// workload floods at ten times its usual rate and wants its flood to be the baseline at once,
// so it tries to accept the shift through the admin API: with no credential, a guessed token,
// a viewer token it read somewhere, and, riding an operator's browser, as a form, as
// text/plain, from a foreign Origin, cross-site, or through a rebinding Host; and it tries to
// lift an operator's rejection by accepting again the same ways. Each is refused (401 or 403, JSON error),
// nothing is audited, and the flood keeps alarming.
func TestAdversaryRateShiftAcceptance(t *testing.T) {
	e := newEnv(t, withRateShifts)
	svc := []string{"shop/api"}
	e.learnRate(svc...)
	if n := e.feedRate(svc, floodStart, floodStart+time.Hour, 3*time.Second); n["shop/api"] == 0 {
		t.Fatal("the flood raised no rate_spike")
	}
	op := e.tokens[RoleOperator]
	body := `{"by":"ops"}`
	tests := []struct {
		name string
		q    req
		code int
		want string
	}{
		{"no credential, curl -d", req{contentType: "application/x-www-form-urlencoded"}, http.StatusUnauthorized, "credentials required"},
		{"no credential", req{}, http.StatusUnauthorized, "credentials required"},
		{"guessed token", req{token: "guessed-token-0123456789"}, http.StatusUnauthorized, ""},
		{"viewer token", req{token: e.tokens[RoleViewer]}, http.StatusForbidden, "needs operator"},
		{"operator's browser, form", req{token: op, contentType: "application/x-www-form-urlencoded"}, http.StatusForbidden, "Content-Type"},
		{"operator's browser, text/plain", req{token: op, contentType: "text/plain"}, http.StatusForbidden, "Content-Type"},
		{"operator's browser, foreign origin", req{token: op, origin: "http://evil.example"}, http.StatusForbidden, "Origin"},
		{"operator's browser, null origin", req{token: op, origin: "null"}, http.StatusForbidden, "Origin"},
		{"operator's browser, cross-site", req{token: op, header: map[string]string{"Sec-Fetch-Site": "cross-site"}}, http.StatusForbidden, "cross-site"},
		{"operator's browser, rebinding host", req{token: op, host: "attacker.example:9002"}, http.StatusForbidden, "Host"},
	}
	try := func(round string) {
		for _, tc := range tests {
			t.Run(round+" "+tc.name, func(t *testing.T) {
				q := tc.q
				q.method, q.path, q.body = "POST", ratePath("shop/api", "accept"), body
				if q.contentType == "" {
					q.contentType = "application/json"
				}
				wantError(t, e.send(q), tc.code, tc.want)
			})
		}
	}
	try("before the rejection:")
	// The operator rejects the shift; an acceptance would lift the rejection.
	e.mustJSON(e.do("POST", ratePath("shop/api", "reject"), op, RateRequest{Reason: "flood"}), &RateResponse{})
	try("after the rejection:")
	var list AuditList
	e.mustJSON(e.do("GET", "/v1/audit", e.tokens[RoleViewer], nil), &list)
	n := 0
	for _, a := range list.Records {
		if strings.HasSuffix(a.Action, "_rate") {
			n++
			if a.Who != "operator-tok" || a.Action != "reject_rate" {
				t.Errorf("audited %+v", a)
			}
		}
	}
	if n != 1 {
		t.Fatalf("%d rate decisions audited, want the operator's one", n)
	}
	// Past probation the rejected flood still alarms: no refused acceptance got through.
	e.feedRate(svc, floodStart+time.Hour, floodStart+rateProbation+time.Hour, 3*time.Second)
	if s := e.feedRate(svc, floodStart+rateProbation+time.Hour, floodStart+rateProbation+4*time.Hour, 3*time.Second); s["shop/api"] < 1000 {
		t.Fatalf("three hours of flood past probation: %d rate_spike, want it alarming still", s["shop/api"])
	}
}
