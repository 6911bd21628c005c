package admin

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshguard/meshguard/flowmodel"
	"github.com/meshguard/meshguard/flowmodel/store"
	"github.com/prometheus/client_golang/prometheus"
)

const adminToken = "test-admin-token-0123456789abcdef"

var t0 = time.Date(2026, 1, 2, 15, 0, 0, 0, time.UTC)

// env is a real admin API over a real model, bbolt store and persister, served by a real
// HTTP server on loopback.
type env struct {
	t       *testing.T
	dir     string
	model   *flowmodel.Model
	store   *store.Bolt
	persist *flowmodel.Persister
	h       *Handler
	srv     *httptest.Server
	tokens  map[Role]string
}

type envOpt func(*flowmodel.Config, *Options)

func newEnv(t *testing.T, opts ...envOpt) *env {
	t.Helper()
	e := &env{t: t, dir: t.TempDir(), tokens: map[Role]string{RoleAdmin: adminToken}}
	// The flows below name their destination by host alone, as a replay of recorded events
	// does: the model takes such a host by its name (serve never does).
	cfg := flowmodel.Config{TrustHostNames: true}
	o := Options{Logger: slog.New(slog.DiscardHandler), Token: adminToken, Hosts: []string{"meshguard.local"}, Gatherer: prometheus.NewRegistry(), ResolveWait: time.Millisecond}
	for _, f := range opts {
		f(&cfg, &o)
	}
	var err error
	if e.model, err = flowmodel.New(cfg); err != nil {
		t.Fatal(err)
	}
	if e.store, err = store.Open(e.dir, store.Options{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.store.Close() })
	e.persist = &flowmodel.Persister{Model: e.model, Store: e.store, Interval: time.Hour}
	if o.Committer == nil {
		o.Committer = e.persist
	}
	o.Store = e.store
	if e.h, err = New(e.model, o); err != nil {
		t.Fatal(err)
	}
	e.h.SetReady(true)
	e.srv = httptest.NewServer(e.h)
	t.Cleanup(e.srv.Close)
	// Two services, learned from flows.
	for _, svc := range []string{"shop/checkout", "shop/cart"} {
		e.model.Decide(&flowmodel.Flow{Time: t0, Service: svc, Destination: flowmodel.Destination{Host: "api.example.com", Port: 443}, Method: "GET", Path: "/"})
	}
	for _, r := range []Role{RoleViewer, RoleOperator} {
		var ti TokenInfo
		e.mustJSON(e.do("POST", "/v1/tokens", adminToken, TokenRequest{Name: r.String() + "-tok", Role: r}), &ti)
		e.tokens[r] = ti.Token
	}
	return e
}

// req describes one request; zero fields take the defaults of a well-behaved client.
type req struct {
	method, path, token string
	body                any    // JSON-encoded unless a string
	contentType         string // default application/json when there is a body
	host, origin        string
	header              map[string]string
}

type resp struct {
	code int
	body []byte
	hdr  http.Header
}

func (e *env) send(q req) resp {
	e.t.Helper()
	var body io.Reader
	ct := q.contentType
	switch b := q.body.(type) {
	case nil:
	case string:
		body = strings.NewReader(b)
	default:
		j, _ := json.Marshal(b)
		body = bytes.NewReader(j)
		if ct == "" {
			ct = "application/json"
		}
	}
	hr, err := http.NewRequest(q.method, e.srv.URL+q.path, body)
	if err != nil {
		e.t.Fatal(err)
	}
	if ct == "" && q.method != "GET" {
		ct = "application/json"
	}
	if ct != "-" && ct != "" {
		hr.Header.Set("Content-Type", ct)
	}
	if q.token != "" {
		hr.Header.Set("Authorization", "Bearer "+q.token)
	}
	if q.host != "" {
		hr.Host = q.host
	}
	if q.origin != "" {
		hr.Header.Set("Origin", q.origin)
	}
	for k, v := range q.header {
		hr.Header.Set(k, v)
	}
	r, err := http.DefaultClient.Do(hr)
	if err != nil {
		e.t.Fatal(err)
	}
	defer r.Body.Close()
	b, _ := io.ReadAll(r.Body)
	return resp{r.StatusCode, b, r.Header}
}

func (e *env) do(method, path, token string, body any) resp {
	e.t.Helper()
	return e.send(req{method: method, path: path, token: token, body: body})
}

func (e *env) mustJSON(r resp, v any) {
	e.t.Helper()
	if r.code != http.StatusOK {
		e.t.Fatalf("status %d: %s", r.code, r.body)
	}
	if err := json.Unmarshal(r.body, v); err != nil {
		e.t.Fatalf("decode %s: %v", r.body, err)
	}
}

// wantError checks an error response: its status and a JSON body {"error": ...}.
func wantError(t *testing.T, r resp, code int, contains string) {
	t.Helper()
	if r.code != code {
		t.Fatalf("status %d, want %d: %s", r.code, code, r.body)
	}
	var eb ErrorBody
	if err := json.Unmarshal(r.body, &eb); err != nil || eb.Error == "" {
		t.Fatalf("body %q is not a JSON error", r.body)
	}
	if !strings.Contains(eb.Error, contains) {
		t.Fatalf("error %q does not say %q", eb.Error, contains)
	}
	if ct := r.hdr.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q", ct)
	}
}

func (e *env) mode(svc string) flowmodel.Mode {
	m, ok := e.model.Mode(svc)
	if !ok {
		e.t.Fatalf("service %s gone", svc)
	}
	return m
}

var modePath = "/v1/services/" + url.PathEscape("shop/checkout") + "/mode"

// TestAdversaryLoopbackWithoutCredential covers issue 10 case 4: the compromised workload on
// the pod's loopback runs `curl -X PUT 127.0.0.1:9002/v1/services/shop%2Fcheckout/mode -d
// '{"mode":"learn"}'` (and approvals, reads, unknown paths): 401 with a JSON error, and
// nothing changes.
func TestAdversaryLoopbackWithoutCredential(t *testing.T) {
	e := newEnv(t)
	e.model.SetMode("shop/checkout", flowmodel.ModeChange{Mode: flowmodel.ModeEnforce})
	tests := []req{
		{method: "PUT", path: modePath, body: `{"mode":"learn"}`, contentType: "application/x-www-form-urlencoded"}, // curl -d
		{method: "PUT", path: modePath, body: map[string]string{"mode": "learn"}},
		{method: "PUT", path: modePath, body: `{"mode":"learn"}`, contentType: "text/plain"},
		{method: "PUT", path: modePath, body: map[string]string{"mode": "learn"}, token: "guessed-token-0123456789"},
		{method: "PUT", path: modePath, body: map[string]string{"mode": "learn"}, header: map[string]string{"Authorization": "Basic YWRtaW46YWRtaW4="}},
		{method: "PUT", path: modePath, body: map[string]string{"mode": "learn"}, header: map[string]string{"Authorization": "Bearer "}},
		{method: "POST", path: "/v1/services/shop%2Fcheckout/approvals", body: FeedbackRequest{Destination: "evil.example:443"}},
		{method: "POST", path: "/v1/tokens", body: TokenRequest{Name: "mine", Role: RoleAdmin}},
		{method: "GET", path: "/v1/services"},
		{method: "GET", path: "/v1/audit"},
		{method: "GET", path: "/v1/no-such-thing"},
	}
	for _, q := range tests {
		t.Run(q.method+" "+q.path+" "+q.contentType, func(t *testing.T) {
			r := e.send(q)
			wantError(t, r, http.StatusUnauthorized, "")
			if r.hdr.Get("WWW-Authenticate") == "" {
				t.Error("401 without WWW-Authenticate")
			}
		})
	}
	if m := e.mode("shop/checkout"); m != flowmodel.ModeEnforce {
		t.Fatalf("mode %s after refused requests", m)
	}
	if _, ok := e.model.Service("evil.example"); ok || len(e.model.ServiceNames()) != 2 {
		t.Fatal("a refused request changed the model")
	}
}

// TestAdversaryBrowserForgery covers issue 10 case 4 (careful attacker): with a valid
// credential in play (a browser's client certificate, a token the page cannot read), a
// change sent as text/plain or a form, from a foreign Origin, cross-site, or through a DNS
// name the attacker controls (rebinding Host) is refused with 403, and nothing changes.
func TestAdversaryBrowserForgery(t *testing.T) {
	e := newEnv(t)
	op := e.tokens[RoleOperator]
	body := map[string]string{"mode": "learn"}
	tests := []struct {
		name string
		q    req
		want string
	}{
		{"text/plain", req{contentType: "text/plain"}, "Content-Type"},
		{"form", req{contentType: "application/x-www-form-urlencoded"}, "Content-Type"},
		{"multipart", req{contentType: "multipart/form-data; boundary=x"}, "Content-Type"},
		{"no content type", req{contentType: "-"}, "Content-Type"},
		{"json-ish", req{contentType: "application/json-patch+json"}, "Content-Type"},
		{"foreign origin", req{origin: "http://evil.example"}, "Origin"},
		{"null origin", req{origin: "null"}, "Origin"},
		{"origin on another port", req{origin: "http://127.0.0.1:1"}, "Origin"},
		{"cross-site fetch", req{header: map[string]string{"Sec-Fetch-Site": "cross-site"}}, "cross-site"},
		{"rebinding host", req{host: "attacker.example:9002"}, "Host"},
		{"rebinding host with a trailing dot", req{host: "attacker.example."}, "Host"},
		{"rebinding host, same origin", req{host: "attacker.example", origin: "http://attacker.example"}, "Host"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := tt.q
			q.method, q.path, q.token, q.body = "PUT", modePath, op, body
			if q.contentType != "" && q.contentType != "-" {
				q.body = `{"mode":"learn"}`
			}
			if q.contentType == "-" {
				q.body = `{"mode":"learn"}`
			}
			wantError(t, e.send(q), http.StatusForbidden, tt.want)
			if m := e.mode("shop/checkout"); m != flowmodel.ModeLearn {
				t.Fatalf("mode changed to %s", m)
			}
		})
	}
	// A rebinding Host is refused for reads too: the page would read baselines.
	wantError(t, e.send(req{method: "GET", path: "/v1/services", token: op, host: "attacker.example"}), http.StatusForbidden, "Host")
	// What a real client sends passes: its own Origin, a configured name, an IP, localhost.
	for _, q := range []req{
		{origin: e.srv.URL},
		{host: "meshguard.local:9002"},
		{host: "MESHGUARD.LOCAL"},
		{host: "localhost:9002"},
		{host: "[::1]:9002"},
		{header: map[string]string{"Sec-Fetch-Site": "same-origin"}},
	} {
		q.method, q.path, q.token, q.body = "PUT", modePath, op, map[string]string{"mode": "monitor"}
		if r := e.send(q); r.code != http.StatusOK {
			t.Fatalf("%+v: status %d: %s", q, r.code, r.body)
		}
	}
}

// TestRoles checks every endpoint against every role: 401 without a credential, 403 below
// the endpoint's role, served at or above it.
func TestRoles(t *testing.T) {
	e := newEnv(t)
	type ep struct {
		method, path string
		body         any
		min          Role
	}
	svc := "/v1/services/" + url.PathEscape("shop/cart")
	eps := []ep{
		{"GET", "/v1/whoami", nil, RoleViewer},
		{"GET", "/v1/services", nil, RoleViewer},
		{"GET", svc, nil, RoleViewer},
		{"GET", "/v1/audit", nil, RoleViewer},
		{"PUT", svc + "/mode", ModeRequest{Mode: "monitor"}, RoleOperator},
		{"PUT", svc + "/mode", ModeRequest{Mode: "quarantine", Allow: []string{"vault:8200"}}, RoleOperator},
		{"POST", svc + "/approvals", FeedbackRequest{Destination: "api.example.com:8443"}, RoleOperator},
		{"POST", svc + "/rejections", FeedbackRequest{Destination: "api.example.com:8443"}, RoleOperator},
		{"POST", svc + "/rate/accept", RateRequest{}, RoleOperator},
		{"POST", svc + "/rate/reject", RateRequest{Reason: "r"}, RoleOperator},
		{"GET", "/v1/tokens", nil, RoleAdmin},
		{"POST", "/v1/tokens", TokenRequest{Role: RoleViewer}, RoleAdmin},
		{"DELETE", "/v1/tokens/", nil, RoleAdmin},
	}
	n := 0
	for _, ep := range eps {
		for _, role := range []Role{RoleNone, RoleViewer, RoleOperator, RoleAdmin} {
			t.Run(ep.method+" "+ep.path+" as "+role.String(), func(t *testing.T) {
				path, body := ep.path, ep.body
				if tr, ok := body.(TokenRequest); ok {
					n++
					tr.Name = "t" + string(rune('a'+n))
					body = tr
				}
				if ep.method == "DELETE" {
					n++
					name := "d" + string(rune('a'+n))
					var ti TokenInfo
					e.mustJSON(e.do("POST", "/v1/tokens", adminToken, TokenRequest{Name: name, Role: RoleViewer}), &ti)
					path += name
				}
				r := e.do(ep.method, path, e.tokens[role], body)
				switch {
				case role == RoleNone:
					wantError(t, r, http.StatusUnauthorized, "credentials required")
				case role < ep.min:
					wantError(t, r, http.StatusForbidden, "needs "+ep.min.String())
				case r.code != http.StatusOK:
					t.Fatalf("status %d: %s", r.code, r.body)
				}
			})
		}
	}
}

func TestWhoami(t *testing.T) {
	e := newEnv(t)
	var id Identity
	e.mustJSON(e.do("GET", "/v1/whoami", e.tokens[RoleOperator], nil), &id)
	if id.Name != "operator-tok" || id.Role != RoleOperator || id.Via != "token" {
		t.Fatalf("whoami %+v", id)
	}
	e.mustJSON(e.do("GET", "/v1/whoami", adminToken, nil), &id)
	if id.Name != "admin-token" || id.Role != RoleAdmin {
		t.Fatalf("whoami %+v", id)
	}
}

// TestProbesStayOpen: /healthz, /readyz and /metrics need no credential (kubelet probes,
// Prometheus).
func TestProbesStayOpen(t *testing.T) {
	e := newEnv(t)
	for _, p := range []string{"/healthz", "/readyz", "/metrics"} {
		if r := e.do("GET", p, "", nil); r.code != http.StatusOK {
			t.Errorf("%s: %d %s", p, r.code, r.body)
		}
	}
	e.h.SetReady(false)
	if r := e.do("GET", "/readyz", "", nil); r.code != http.StatusServiceUnavailable {
		t.Errorf("/readyz not ready: %d", r.code)
	}
}

// TestModeChangeIsAuditedAndDurable covers issue 10 case 10 in process: a mode change
// answered 200 is in the store, with its audit record, without any flush of the persister.
func TestModeChangeIsAuditedAndDurable(t *testing.T) {
	e := newEnv(t)
	r := e.do("PUT", modePath, e.tokens[RoleOperator], ModeRequest{Mode: "quarantine", Allow: []string{"vault:8200"}, Reason: "incident 42"})
	if r.code != http.StatusOK {
		t.Fatalf("%d %s", r.code, r.body)
	}
	var list AuditList
	e.mustJSON(e.do("GET", "/v1/audit?service="+url.QueryEscape("shop/checkout"), e.tokens[RoleViewer], nil), &list)
	if len(list.Records) != 1 {
		t.Fatalf("audit: %+v", list)
	}
	a := list.Records[0]
	if a.Who != "operator-tok" || a.Role != "operator" || a.Action != "mode" || a.Reason != "incident 42" ||
		!strings.Contains(compact(a.Before), `"mode":"learn"`) || !strings.Contains(compact(a.After), `"mode":"quarantine"`) ||
		!strings.Contains(string(a.After), "vault:8200") || a.At.IsZero() || a.Seq == 0 {
		t.Fatalf("audit record %+v before=%s after=%s", a, a.Before, a.After)
	}
	// Read the store as a restart would, without the persister's flush.
	m2, _ := flowmodel.New(flowmodel.Config{})
	if _, err := m2.Load(e.store); err != nil {
		t.Fatal(err)
	}
	if m, _ := m2.Mode("shop/checkout"); m != flowmodel.ModeQuarantine {
		t.Fatalf("stored mode %s", m)
	}
}

// TestReviewFixes covers issue 11's review fixes: an unparseable destination is 400;
// approvals, rejections and mode changes for an unknown service are 404 and create no
// service.
func TestReviewFixes(t *testing.T) {
	e := newEnv(t)
	op := e.tokens[RoleOperator]
	known := "/v1/services/" + url.PathEscape("shop/checkout")
	for _, d := range []string{"", "evil2.example!", "[::1", "::1]:443", "a..b:443", ".example.com:443", "api.example.com", "api.example.com:", "1.2.3.4:99999", "host:443:1", "http://x:443", "[api.example.com]:443"} {
		t.Run("approve "+d, func(t *testing.T) {
			wantError(t, e.do("POST", known+"/approvals", op, FeedbackRequest{Destination: d}), http.StatusBadRequest, "destination")
			wantError(t, e.do("POST", known+"/rejections", op, FeedbackRequest{Destination: d}), http.StatusBadRequest, "destination")
		})
	}
	wantError(t, e.do("PUT", known+"/mode", op, ModeRequest{Mode: "quarantine", Allow: []string{"[::1"}}), http.StatusBadRequest, "allow")
	unknown := "/v1/services/" + url.PathEscape("ghost/svc")
	wantError(t, e.do("POST", unknown+"/approvals", op, FeedbackRequest{Destination: "api.example.com:443"}), http.StatusNotFound, "unknown service")
	wantError(t, e.do("POST", unknown+"/rejections", op, FeedbackRequest{Destination: "api.example.com:443"}), http.StatusNotFound, "unknown service")
	wantError(t, e.do("PUT", unknown+"/mode", op, ModeRequest{Mode: "quarantine"}), http.StatusNotFound, "unknown service")
	wantError(t, e.do("GET", unknown, op, nil), http.StatusNotFound, "unknown service")
	if names := e.model.ServiceNames(); len(names) != 2 {
		t.Fatalf("phantom service: %v", names)
	}
	wantError(t, e.do("PUT", known+"/mode", op, ModeRequest{Mode: "sleep"}), http.StatusBadRequest, "")
	wantError(t, e.do("PUT", known+"/mode", op, `{"mode":"learn"}{"mode":"enforce"}`), http.StatusBadRequest, "more than one")
	wantError(t, e.do("PUT", known+"/mode", op, `{"mode":"learn","extra":1}`), http.StatusBadRequest, "unknown field")
	big := `{"mode":"learn","reason":"` + strings.Repeat("x", maxBody) + `"}`
	wantError(t, e.do("PUT", known+"/mode", op, big), http.StatusRequestEntityTooLarge, "too large")
	var list AuditList
	e.mustJSON(e.do("GET", "/v1/audit?service="+url.QueryEscape("shop/checkout"), op, nil), &list)
	if len(list.Records) != 0 {
		t.Fatalf("refused changes were audited: %+v", list.Records)
	}
}

type fakeResolver map[string][]netip.Addr

func (r fakeResolver) Lookup(host string) ([]netip.Addr, bool) {
	a, ok := r[host]
	return a, ok
}

// TestApproveHostUnblocks covers issue 11's review fix: approving the host a 403 named
// unblocks it, with its current IPs (from DNS, or given), and the answer says which.
func TestApproveHostUnblocks(t *testing.T) {
	res := fakeResolver{"api.pay.example": {netip.MustParseAddr("203.0.113.9"), netip.MustParseAddr("203.0.113.10")}}
	e := newEnv(t, func(c *flowmodel.Config, _ *Options) { c.Resolver = res })
	e.model.SetMode("shop/checkout", flowmodel.ModeChange{Mode: flowmodel.ModeEnforce})
	flow := func(ip string) *flowmodel.Flow {
		return &flowmodel.Flow{Time: t0.Add(time.Minute), Service: "shop/checkout", Method: "GET", Path: "/",
			Destination: flowmodel.Destination{Host: "api.pay.example", IP: netip.MustParseAddr(ip), Port: 443}}
	}
	if v := e.model.Decide(flow("203.0.113.9")); v.Action != flowmodel.Block {
		t.Fatalf("before approval: %s", v.Action)
	}
	var fr FeedbackResponse
	e.mustJSON(e.do("POST", "/v1/services/shop%2Fcheckout/approvals", e.tokens[RoleOperator],
		FeedbackRequest{Destination: "api.pay.example:443", Addresses: []string{"198.51.100.7"}, Reason: "ticket 7"}), &fr)
	want := []string{"198.51.100.7:443", "203.0.113.9:443", "203.0.113.10:443"}
	if fr.Approved == nil || strings.Join(fr.Approved.Addresses, ",") != strings.Join(want, ",") || !fr.Approved.Resolved {
		t.Fatalf("approved %+v, want addresses %v", fr.Approved, want)
	}
	for _, ip := range []string{"203.0.113.9", "203.0.113.10", "198.51.100.7"} {
		// Allowed; its request shape, new on this host, may still alert.
		if v := e.model.Decide(flow(ip)); v.Action == flowmodel.Block || v.Reasons.Has(flowmodel.ReasonNewDestination) {
			t.Fatalf("after approval, %s: %s %v", ip, v.Action, v.Reasons)
		}
	}
	// An address nobody approved stays blocked: the approval vouches for those IPs only.
	if v := e.model.Decide(flow("192.0.2.66")); v.Action != flowmodel.Block {
		t.Fatalf("unapproved IP under the approved host: %s", v.Action)
	}
	// Without DNS or addresses the answer says the host alone was approved.
	fr = FeedbackResponse{}
	e.mustJSON(e.do("POST", "/v1/services/shop%2Fcheckout/approvals", e.tokens[RoleOperator],
		FeedbackRequest{Destination: "other.example:443"}), &fr)
	if len(fr.Approved.Addresses) != 0 || !strings.Contains(fr.Note, "no address of other.example") {
		t.Fatalf("approval without addresses: %+v %q", fr.Approved, fr.Note)
	}
	var list AuditList
	e.mustJSON(e.do("GET", "/v1/audit", e.tokens[RoleViewer], nil), &list)
	if list.Records[1].Action != "approve" || !strings.Contains(string(list.Records[1].After), "198.51.100.7:443") || list.Records[1].Reason != "ticket 7" {
		t.Fatalf("audit of the approval: %+v", list.Records[1])
	}
}

func TestRejectAudited(t *testing.T) {
	e := newEnv(t)
	e.mustJSON(e.do("POST", "/v1/services/shop%2Fcheckout/rejections", e.tokens[RoleOperator],
		FeedbackRequest{Destination: "api.example.com:443", By: "alice"}), &FeedbackResponse{})
	s, _ := e.model.Service("shop/checkout")
	for _, d := range s.Destinations {
		if d.Destination == "api.example.com:443" {
			t.Fatal("rejected destination still in the baseline")
		}
	}
	if fb := s.Feedback[len(s.Feedback)-1]; fb.By != "alice (operator-tok)" {
		t.Fatalf("feedback by %q", fb.By)
	}
	var list AuditList
	e.mustJSON(e.do("GET", "/v1/audit", e.tokens[RoleViewer], nil), &list)
	a := list.Records[0]
	if a.Action != "reject" || !strings.Contains(string(a.Before), "api.example.com:443") || string(a.After) != "null" {
		t.Fatalf("audit %+v %s %s", a, a.Before, a.After)
	}
}

// TestAdversaryFarFutureTimeKeepsListing covers issue 10 case 6: a service whose times lie
// in year 10000 does not truncate GET /v1/services.
func TestAdversaryFarFutureTimeKeepsListing(t *testing.T) {
	e := newEnv(t)
	y10k := time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)
	e.model.Decide(&flowmodel.Flow{Time: y10k, Service: "evil/future", Destination: flowmodel.Destination{Host: "x.example", Port: 443}})
	var list ServiceList
	e.mustJSON(e.do("GET", "/v1/services", e.tokens[RoleViewer], nil), &list)
	if len(list.Services) != 3 {
		t.Fatalf("%d services listed, want 3", len(list.Services))
	}
	r := e.do("GET", "/v1/services/evil%2Ffuture", e.tokens[RoleViewer], nil)
	if r.code != http.StatusOK {
		t.Fatalf("%d %s", r.code, r.body)
	}
}

// failingStore saves through a real store but fails the services named in bad.
type failingStore struct {
	*store.Bolt
	bad map[string]bool
}

func (f *failingStore) SaveAudited(recs []flowmodel.ServiceRecord, audit []flowmodel.AuditRecord) error {
	se := flowmodel.SaveErrors{}
	var good []flowmodel.ServiceRecord
	for _, r := range recs {
		if f.bad[r.Name] {
			se[r.Name] = errors.New("disk says no")
			continue
		}
		good = append(good, r)
	}
	if err := f.Bolt.SaveAudited(good, audit); err != nil {
		return err
	}
	if len(se) > 0 {
		return se
	}
	return nil
}

func (f *failingStore) Save(recs []flowmodel.ServiceRecord) error { return f.SaveAudited(recs, nil) }

// TestReadyzShowsFailingSaves covers issue 10 case 5: while one service cannot be saved,
// an operator's change to another is saved and answered 200, /readyz stays 200 but says
// "degraded" and names the failing service, and the model keeps deciding.
func TestReadyzShowsFailingSaves(t *testing.T) {
	var p *flowmodel.Persister
	e := newEnv(t, func(_ *flowmodel.Config, o *Options) {
		o.Committer = committerFunc(func() *flowmodel.Persister { return p })
	})
	fs := &failingStore{Bolt: e.store, bad: map[string]bool{"shop/cart": true}}
	p = &flowmodel.Persister{Model: e.model, Store: fs, Interval: time.Hour}
	r := e.do("PUT", modePath, e.tokens[RoleOperator], ModeRequest{Mode: "enforce"})
	if r.code != http.StatusOK {
		t.Fatalf("change of a healthy service: %d %s", r.code, r.body)
	}
	r = e.do("GET", "/readyz", "", nil)
	var rd Readiness
	if err := json.Unmarshal(r.body, &rd); r.code != http.StatusOK || err != nil || rd.Status != "degraded" ||
		rd.Store == nil || len(rd.Store.Failing) != 1 || rd.Store.Failing[0].Service != "shop/cart" {
		t.Fatalf("/readyz %d %s", r.code, r.body)
	}
	// A change to the failing service is in effect but not durable: 503 says so.
	wantError(t, e.do("PUT", "/v1/services/shop%2Fcart/mode", e.tokens[RoleOperator], ModeRequest{Mode: "enforce"}), http.StatusServiceUnavailable, "in effect")
	if e.mode("shop/cart") != flowmodel.ModeEnforce {
		t.Fatal("model lost the change")
	}
	fs.bad = nil
	if err := p.Flush(); err != nil {
		t.Fatal(err)
	}
	if r := e.do("GET", "/readyz", "", nil); r.code != http.StatusOK || string(r.body) != "ok\n" {
		t.Fatalf("/readyz after recovery: %d %s", r.code, r.body)
	}
	var list AuditList
	e.mustJSON(e.do("GET", "/v1/audit?limit=2", e.tokens[RoleViewer], nil), &list)
	if len(list.Records) != 2 || list.Records[0].Service != "shop/cart" || list.Records[1].Service != "shop/checkout" {
		t.Fatalf("audit records %d, want 2 (the pending one saved on recovery)", len(list.Records))
	}
}

type committerFunc func() *flowmodel.Persister

func (c committerFunc) Commit(s string, a *flowmodel.AuditRecord, f func() error) error {
	return c().Commit(s, a, f)
}
func (c committerFunc) Status() flowmodel.PersistStatus { return c().Status() }

func TestTokensLifecycle(t *testing.T) {
	e := newEnv(t)
	var ti TokenInfo
	e.mustJSON(e.do("POST", "/v1/tokens", adminToken, TokenRequest{Name: "ci", Role: RoleOperator, Reason: "pipeline"}), &ti)
	if len(ti.Token) < 40 || ti.Role != RoleOperator {
		t.Fatalf("created %+v", ti)
	}
	wantError(t, e.do("POST", "/v1/tokens", adminToken, TokenRequest{Name: "ci", Role: RoleViewer}), http.StatusConflict, "exists")
	wantError(t, e.do("POST", "/v1/tokens", adminToken, TokenRequest{Name: "bad name", Role: RoleViewer}), http.StatusBadRequest, "name")
	wantError(t, e.do("POST", "/v1/tokens", adminToken, `{"name":"x","role":"root"}`), http.StatusBadRequest, "role")
	r := e.do("GET", "/v1/tokens", adminToken, nil)
	if r.code != http.StatusOK || strings.Contains(string(r.body), ti.Token) || !strings.Contains(string(r.body), `"ci"`) {
		t.Fatalf("list: %d %s", r.code, r.body)
	}
	if r := e.do("GET", "/v1/services", ti.Token, nil); r.code != http.StatusOK {
		t.Fatalf("new token: %d", r.code)
	}
	// A restart loads the stored tokens.
	h2, err := New(e.model, Options{Store: e.store, Committer: e.persist})
	if err != nil {
		t.Fatal(err)
	}
	srv2 := httptest.NewServer(h2)
	defer srv2.Close()
	hr, _ := http.NewRequest("GET", srv2.URL+"/v1/whoami", nil)
	hr.Header.Set("Authorization", "Bearer "+ti.Token)
	if r2, err := http.DefaultClient.Do(hr); err != nil || r2.StatusCode != http.StatusOK {
		t.Fatalf("stored token after restart: %v %v", r2, err)
	}
	e.mustJSON(e.do("DELETE", "/v1/tokens/ci", adminToken, RevokeRequest{Reason: "leaked"}), &TokenInfo{})
	wantError(t, e.do("GET", "/v1/services", ti.Token, nil), http.StatusUnauthorized, "revoked")
	wantError(t, e.do("DELETE", "/v1/tokens/ci", adminToken, nil), http.StatusNotFound, "no token")
	var list AuditList
	e.mustJSON(e.do("GET", "/v1/audit", adminToken, nil), &list)
	if list.Records[0].Action != "token.revoke" || list.Records[0].Reason != "leaked" || list.Records[1].Action != "token.create" {
		t.Fatalf("audit %+v", list.Records[:2])
	}
	if strings.Contains(string(mustMarshal(list)), ti.Token) {
		t.Fatal("the token is in the audit log")
	}
}

func compact(raw []byte) string {
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return string(raw)
	}
	return b.String()
}

func mustMarshal(v any) []byte { b, _ := json.Marshal(v); return b }

func TestNewRefusesBadOptions(t *testing.T) {
	m, _ := flowmodel.New(flowmodel.Config{})
	_, err := New(m, Options{Token: "short", Hosts: []string{"a:80"}, CertDefaultRole: Role(9)})
	if err == nil || !strings.Contains(err.Error(), "admin token") || !strings.Contains(err.Error(), "admin host") || !strings.Contains(err.Error(), "default certificate role") {
		t.Fatalf("err = %v", err)
	}
}

// TestBackupEndpoint: an admin takes a consistent backup of the running store, audited
// in the backup itself; an operator may not.
func TestBackupEndpoint(t *testing.T) {
	var st *store.Bolt
	bdir := filepath.Join(t.TempDir(), "backups")
	e := newEnv(t, func(_ *flowmodel.Config, o *Options) {
		o.Backup = func() (string, store.Report, error) { return st.BackupNow(store.BackupSchedule{Dir: bdir, Keep: 3}) }
	})
	st = e.store
	wantError(t, e.do("POST", "/v1/backup", e.tokens[RoleOperator], nil), http.StatusForbidden, "needs admin")
	var br BackupResult
	e.mustJSON(e.do("POST", "/v1/backup", adminToken, RevokeRequest{Reason: "before upgrade"}), &br)
	rep, err := store.Check(br.Path)
	if err != nil || rep.Services != 2 || rep.Audit != 3 || rep.Tokens != 2 {
		t.Fatalf("backup %s: %+v %v", br.Path, rep, err)
	}
}

// TestStoreCollector: the persister's state is exported as gauges.
func TestStoreCollector(t *testing.T) {
	e := newEnv(t)
	fs := &failingStore{Bolt: e.store, bad: map[string]bool{"shop/cart": true}}
	p := &flowmodel.Persister{Model: e.model, Store: fs}
	p.Flush()
	reg := prometheus.NewRegistry()
	reg.MustRegister(StoreCollector(p))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		got[mf.GetName()] = mf.GetMetric()[0].GetGauge().GetValue()
	}
	if got["meshguard_store_failing_services"] != 1 || got["meshguard_store_pending_services"] != 1 || got["meshguard_store_save_failures_in_row"] != 1 {
		t.Fatalf("metrics %v", got)
	}
}

// TestAdversaryCredentialTricks covers what a careful attacker tries next against issue 10
// case 4: a token in the query string, two Authorization headers (one of them valid), an
// oversized token, another scheme, a cookie, a path spelled around the route: all 401.
func TestAdversaryCredentialTricks(t *testing.T) {
	e := newEnv(t)
	hr := func(method, path string, hdr http.Header) int {
		t.Helper()
		r, err := http.NewRequest(method, e.srv.URL+path, strings.NewReader(`{"mode":"learn"}`))
		if err != nil {
			t.Fatal(err)
		}
		r.Header = hdr
		r.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	tests := []struct {
		name, method, path string
		hdr                http.Header
	}{
		{"token in the query", "PUT", modePath + "?token=" + adminToken + "&access_token=" + adminToken, http.Header{}},
		{"two Authorization headers", "PUT", modePath, http.Header{"Authorization": {"Bearer nope-nope-nope-nope", "Bearer " + adminToken}}},
		{"oversized token", "PUT", modePath, http.Header{"Authorization": {"Bearer " + strings.Repeat("a", 4096)}}},
		{"token as Basic password", "PUT", modePath, http.Header{"Authorization": {"Basic " + adminToken}}},
		{"token with a prefix", "PUT", modePath, http.Header{"Authorization": {"Bearer x" + adminToken}}},
		{"token in a cookie", "PUT", modePath, http.Header{"Cookie": {"token=" + adminToken}}},
		{"X-Forwarded-User", "PUT", modePath, http.Header{"X-Forwarded-User": {"admin"}, "X-Remote-User": {"admin"}}},
		{"HEAD read", "HEAD", "/v1/services", http.Header{}},
		{"encoded path", "PUT", "/v1/services/shop%2Fcheckout/%6Dode", http.Header{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if code := hr(tt.method, tt.path, tt.hdr); code != http.StatusUnauthorized {
				t.Fatalf("status %d, want 401", code)
			}
		})
	}
	if m := e.mode("shop/checkout"); m != flowmodel.ModeLearn {
		t.Fatalf("mode %s", m)
	}
	// The scheme is case-insensitive, as RFC 9110 says.
	if code := hr("GET", "/v1/whoami", http.Header{"Authorization": {"bearer " + adminToken}}); code != http.StatusOK {
		t.Fatalf("lower-case scheme: %d", code)
	}
}
