// Package admin is meshguard's admin HTTP API for people and probes: /healthz, /readyz and
// /metrics, open to all; and under /v1 the service API (list services, change a service's
// mode, approve and reject destinations and shapes, accept or reject a rate shift), the
// audit log and API tokens, each behind a credential (a bearer token or a verified client
// certificate) with a role: viewer reads, operator changes modes and approves or rejects,
// admin manages tokens.
//
// Every change is written with its audit record (who, what, before, after, when, why) in
// one transaction synced to disk before the API answers 200 (Committer). Changes are
// refused unless they come with Content-Type: application/json, no Origin or one that
// matches the Host, and a Host that is one of the listener's names, an IP literal or
// localhost (DNS rebinding).
package admin

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshguard/meshguard/flowmodel"
	"github.com/meshguard/meshguard/flowmodel/store"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Model is what the admin API needs of the flow model. flowmodel.Model satisfies it.
type Model interface {
	ServiceNames() []string
	Service(name string) (flowmodel.ServiceRecord, bool)
	HasService(name string) bool
	SetMode(name string, c flowmodel.ModeChange) error
	ModeCounts() map[flowmodel.Mode]int
	ApproveKnown(service string, fb flowmodel.Feedback, addrs []netip.Addr) (flowmodel.Approval, error)
	Reject(service string, fb flowmodel.Feedback) error
	// AcceptRate makes a service's current request rate its baseline at once; RejectRate
	// keeps its current shift alarming past probation (rate.go).
	AcceptRate(service string) error
	RejectRate(service string) error
}

// Committer makes operators' changes durable. flowmodel.Persister satisfies it.
type Committer interface {
	// Commit runs change, then saves it with the audit record before it returns.
	Commit(service string, a *flowmodel.AuditRecord, change func() error) error
	// Status reports what is not saved, for /readyz.
	Status() flowmodel.PersistStatus
}

// Store keeps the audit log and the API tokens. *store.Bolt satisfies it.
type Store interface {
	Audit(q store.AuditQuery) ([]flowmodel.AuditRecord, error)
	Tokens() ([]store.Token, error)
	PutToken(t store.Token, a *flowmodel.AuditRecord) error
	DeleteToken(name string, a *flowmodel.AuditRecord) (bool, error)
}

// Options configure a Handler.
type Options struct {
	// Gatherer serves /metrics. Default: no /metrics endpoint.
	Gatherer prometheus.Gatherer
	Logger   *slog.Logger
	// Now is the wall clock used to stamp changes. Default: time.Now.
	Now func() time.Time

	// Committer saves every change with its audit record before the 200. Without one,
	// changes are refused (503).
	Committer Committer
	// Store keeps the audit log (GET /v1/audit) and the tokens made through the API.
	// Without one, those endpoints answer 503.
	Store Store

	// Token is the admin token (see LoadOrCreateToken): a bearer token with the admin
	// role. "" for none.
	Token string
	// TokenName names the admin token in the audit log. Default: "admin-token".
	TokenName string
	// CertRoles gives the role of a verified client certificate, by a URI SAN of it
	// (e.g. "spiffe://cluster.local/ns/ops/sa/oncall") or its subject common name; the
	// first URI SAN found wins over the common name.
	CertRoles map[string]Role
	// CertDefaultRole is the role of a verified client certificate that CertRoles does not
	// name. Default: RoleNone (refused).
	CertDefaultRole Role
	// Hosts are the names by which clients reach the listener (the Host header), beside
	// IP literals and "localhost", which are always accepted.
	Hosts []string
	// Backup, when set, writes a backup of the running store (POST /v1/backup, admin
	// role), e.g. func() (string, store.Report, error) { return st.BackupNow(schedule) }.
	Backup func() (path string, r store.Report, err error)
	// ResolveWait bounds how long an approval of a host waits for the resolver's first
	// answer about the host. Default: 2s.
	ResolveWait time.Duration
}

// Handler serves the admin API.
type Handler struct {
	model  Model
	commit Committer
	store  Store
	ready  atomic.Bool
	log    *slog.Logger
	mux    *http.ServeMux
	gather prometheus.Gatherer
	now    func() time.Time

	adminHash   *[sha256.Size]byte
	tokenName   string
	certRoles   map[string]Role
	certDefault Role
	hosts       map[string]bool
	resolveWait time.Duration
	backupFn    func() (string, store.Report, error)

	tokMu  sync.RWMutex
	tokens map[[sha256.Size]byte]tokenInfo

	onChange func()
}

type tokenInfo struct {
	name string
	role Role
}

// maxBody bounds request bodies.
const maxBody = 64 << 10

// New returns the admin handler. It reports not ready until SetReady(true). It loads the
// tokens of o.Store.
func New(m Model, o Options) (*Handler, error) {
	h := &Handler{model: m, commit: o.Committer, store: o.Store, log: o.Logger, gather: o.Gatherer, now: o.Now,
		mux: http.NewServeMux(), tokenName: o.TokenName, certDefault: o.CertDefaultRole,
		certRoles: make(map[string]Role, len(o.CertRoles)), hosts: map[string]bool{},
		tokens: map[[sha256.Size]byte]tokenInfo{}, resolveWait: o.ResolveWait, backupFn: o.Backup}
	if h.log == nil {
		h.log = slog.Default()
	}
	if h.now == nil {
		h.now = time.Now
	}
	if h.tokenName == "" {
		h.tokenName = "admin-token"
	}
	if h.resolveWait <= 0 {
		h.resolveWait = 2 * time.Second
	}
	var errs []error
	if o.Token != "" {
		if len(o.Token) < minTokenLen || len(o.Token) > maxTokenLen {
			errs = append(errs, fmt.Errorf("admin token: want %d to %d characters", minTokenLen, maxTokenLen))
		}
		sum := hashToken(o.Token)
		h.adminHash = &sum
	}
	for k, r := range o.CertRoles {
		if r < RoleNone || r > RoleAdmin {
			errs = append(errs, fmt.Errorf("certificate %q: invalid role %d", k, r))
		}
		h.certRoles[k] = r
	}
	if o.CertDefaultRole < RoleNone || o.CertDefaultRole > RoleAdmin {
		errs = append(errs, fmt.Errorf("invalid default certificate role %d", o.CertDefaultRole))
	}
	for _, n := range o.Hosts {
		n = strings.TrimSuffix(strings.ToLower(strings.TrimSpace(n)), ".")
		if n == "" || strings.ContainsAny(n, ":/ ") {
			errs = append(errs, fmt.Errorf("admin host %q: want a bare host name", n))
			continue
		}
		h.hosts[n] = true
	}
	if h.store != nil {
		toks, err := h.store.Tokens()
		if err != nil {
			errs = append(errs, fmt.Errorf("load tokens: %w", err))
		}
		for _, t := range toks {
			role, err := ParseRole(t.Role)
			if err != nil || len(t.SHA256) != sha256.Size {
				errs = append(errs, fmt.Errorf("stored token %q: bad role or hash", t.Name))
				continue
			}
			h.tokens[[sha256.Size]byte(t.SHA256)] = tokenInfo{name: t.Name, role: role}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}

	h.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	h.mux.HandleFunc("GET /readyz", h.readyz)
	if h.gather != nil {
		h.mux.Handle("GET /metrics", promhttp.HandlerFor(h.gather, promhttp.HandlerOpts{ErrorLog: slogPrinter{h.log}}))
	}
	route := func(pattern string, role Role, fn http.HandlerFunc) { h.mux.Handle(pattern, h.Require(role, fn)) }
	route("GET /v1/whoami", RoleViewer, h.whoami)
	route("GET /v1/services", RoleViewer, h.listServices)
	route("GET /v1/services/{service}", RoleViewer, h.getService)
	route("PUT /v1/services/{service}/mode", RoleOperator, h.putMode)
	route("POST /v1/services/{service}/approvals", RoleOperator, h.approve)
	route("POST /v1/services/{service}/rejections", RoleOperator, h.reject)
	route("POST /v1/services/{service}/rate/accept", RoleOperator, h.acceptRate)
	route("POST /v1/services/{service}/rate/reject", RoleOperator, h.rejectRate)
	route("GET /v1/audit", RoleViewer, h.audit)
	route("GET /v1/tokens", RoleAdmin, h.listTokens)
	route("POST /v1/tokens", RoleAdmin, h.createToken)
	route("DELETE /v1/tokens/{name}", RoleAdmin, h.revokeToken)
	route("POST /v1/backup", RoleAdmin, h.backup)
	// Anything else under /v1 asks for a credential before it says "not found".
	route("/v1/", RoleViewer, func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such endpoint")
	})
	return h, nil
}

// OnChange, when set, is called after every change an operator makes (mode, approval,
// rejection), e.g. to push new Envoy configuration at once.
func (h *Handler) OnChange(fn func()) { h.onChange = fn }

func (h *Handler) changed() {
	if h.onChange != nil {
		h.onChange()
	}
}

// SetReady sets what /readyz reports.
func (h *Handler) SetReady(ready bool) { h.ready.Store(ready) }

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

// Readiness is the body of /readyz when the store is degraded.
type Readiness struct {
	Status string                   `json:"status"`
	Store  *flowmodel.PersistStatus `json:"store,omitempty"`
}

// readyz answers 503 until SetReady(true). Once ready it stays 200 while saves fail: the
// model keeps deciding from memory, and pulling meshguard out of service would stop
// traffic it guards; the body then says "degraded" and lists the services not saved.
func (h *Handler) readyz(w http.ResponseWriter, _ *http.Request) {
	if !h.ready.Load() {
		writeJSON(w, http.StatusServiceUnavailable, Readiness{Status: "not ready"})
		return
	}
	if h.commit != nil {
		if st := h.commit.Status(); st.Degraded {
			writeJSON(w, http.StatusOK, Readiness{Status: "degraded", Store: &st})
			return
		}
	}
	io.WriteString(w, "ok\n")
}

func (h *Handler) whoami(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, IdentityFrom(r.Context()))
}

// ServiceList is the body of GET /v1/services.
type ServiceList struct {
	Services []flowmodel.ServiceRecord `json:"services"`
}

// listServices writes every service, one record at a time: with thousands of services of
// hundreds of destinations, the whole list is never held in memory. A record is encoded
// whole before it is written, so that one that cannot be encoded never truncates the list.
func (h *Handler) listServices(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	bw := bufio.NewWriterSize(w, 32<<10)
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	bw.WriteString(`{"services":[`)
	first := true
	for _, name := range h.model.ServiceNames() {
		rec, ok := h.model.Service(name)
		if !ok {
			continue // gone meanwhile
		}
		rec.Encodable()
		buf.Reset()
		if err := enc.Encode(rec); err != nil {
			h.log.Error("admin API: service record not encodable", slog.String("service", name), slog.Any("error", err))
			continue
		}
		if !first {
			bw.WriteByte(',')
		}
		first = false
		if _, err := bw.Write(bytes.TrimSuffix(buf.Bytes(), []byte("\n"))); err != nil {
			return // the client has gone
		}
	}
	bw.WriteString("]}\n")
	_ = bw.Flush() // the client has gone if this fails
}

func (h *Handler) getService(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("service")
	s, ok := h.model.Service(name)
	if !ok {
		writeError(w, http.StatusNotFound, fmt.Sprintf("unknown service %.200q", name))
		return
	}
	s.Encodable()
	writeJSON(w, http.StatusOK, s)
}

// ModeRequest is the body of PUT /v1/services/{service}/mode.
type ModeRequest struct {
	Mode string `json:"mode"`
	// Allow lists destinations a quarantined service may still reach.
	Allow []string `json:"allow,omitempty"`
	// Reason is kept in the audit log.
	Reason string `json:"reason,omitempty"`
}

// modeState is a service's mode as the audit log records it.
type modeState struct {
	Mode  string   `json:"mode"`
	Allow []string `json:"allow,omitempty"`
	SetBy string   `json:"set_by,omitempty"`
}

func (h *Handler) putMode(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("service")
	var req ModeRequest
	if !decodeBody(w, r, &req, `{"mode":"learn|monitor|enforce|quarantine","allow":["host:port"],"reason":"..."}`) {
		return
	}
	mode, err := flowmodel.ParseMode(req.Mode)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if len(req.Allow) > 0 && mode != flowmodel.ModeQuarantine {
		writeError(w, http.StatusBadRequest, "allow is only valid with mode quarantine")
		return
	}
	for _, a := range req.Allow {
		if _, err := checkDestination(a, false); err != nil {
			writeError(w, http.StatusBadRequest, "allow: "+err.Error())
			return
		}
	}
	id := IdentityFrom(r.Context())
	a := h.auditRecord(r, id, "mode", name, "", req.Reason)
	err = h.apply(w, name, a, func() error {
		before, ok := h.model.Service(name)
		if !ok {
			return notFound(name)
		}
		a.Before = mustJSON(modeState{Mode: before.Mode.String(), Allow: before.QuarantineAllow, SetBy: before.ModeSetBy})
		if err := h.model.SetMode(name, flowmodel.ModeChange{Mode: mode, Allow: req.Allow, By: id.Name, At: a.At}); err != nil {
			return badRequest(err)
		}
		after, _ := h.model.Service(name)
		a.After = mustJSON(modeState{Mode: after.Mode.String(), Allow: after.QuarantineAllow, SetBy: after.ModeSetBy})
		return nil
	})
	if err != nil {
		return
	}
	h.log.Info("mode changed", slog.String("service", name), slog.String("mode", mode.String()), slog.String("by", id.Name), slog.Uint64("audit", a.Seq))
	h.changed()
	s, _ := h.model.Service(name)
	s.Encodable()
	writeJSON(w, http.StatusOK, s)
}

// FeedbackRequest is the body of POST /v1/services/{service}/approvals and /rejections.
type FeedbackRequest struct {
	// Destination is "host:port", "ip:port" or "[v6]:port".
	Destination string `json:"destination"`
	// Shape, when set, is a request shape on Destination, in the text form alerts show.
	Shape string `json:"shape,omitempty"`
	// Addresses, for an approval of a host, are IPs to approve with it (e.g. the one a
	// block named); the host's current addresses from DNS are approved too.
	Addresses []string `json:"addresses,omitempty"`
	// By names the person who decided, when the credential is shared; the credential's
	// name is recorded in any case.
	By string `json:"by,omitempty"`
	// Reason is kept in the audit log.
	Reason string `json:"reason,omitempty"`
}

// FeedbackResponse is the answer to an approval or a rejection: the service's state, and
// for an approval what it added.
type FeedbackResponse struct {
	flowmodel.ServiceRecord
	Approved *flowmodel.Approval `json:"approved,omitempty"`
	// Note says what the operator should know, e.g. that no address of a host is known.
	Note string `json:"note,omitempty"`
}

const feedbackWant = `{"destination":"host:port","shape":"...","addresses":["ip"],"reason":"..."}`

func (h *Handler) feedbackRequest(w http.ResponseWriter, r *http.Request) (FeedbackRequest, flowmodel.Feedback, bool) {
	var req FeedbackRequest
	if !decodeBody(w, r, &req, feedbackWant) {
		return req, flowmodel.Feedback{}, false
	}
	if _, err := checkDestination(req.Destination, true); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return req, flowmodel.Feedback{}, false
	}
	id := IdentityFrom(r.Context())
	by := id.Name
	if b := strings.TrimSpace(req.By); b != "" {
		by = fmt.Sprintf("%.100s (%s)", b, id.Name)
	}
	return req, flowmodel.Feedback{Destination: strings.TrimSpace(req.Destination), Shape: req.Shape, By: by, At: h.now()}, true
}

func (h *Handler) approve(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("service")
	req, fb, ok := h.feedbackRequest(w, r)
	if !ok {
		return
	}
	var addrs []netip.Addr
	for _, s := range req.Addresses {
		a, err := netip.ParseAddr(strings.Trim(strings.TrimSpace(s), "[]"))
		if err != nil {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("address %.100q: not an IP", s))
			return
		}
		addrs = append(addrs, a)
	}
	if !h.model.HasService(name) {
		writeError(w, http.StatusNotFound, notFound(name).Error())
		return
	}
	h.waitResolver(r.Context(), fb.Destination)
	id := IdentityFrom(r.Context())
	a := h.auditRecord(r, id, "approve", name, target(fb), req.Reason)
	var approval flowmodel.Approval
	err := h.apply(w, name, a, func() error {
		before := destState(h.model, name, fb.Destination)
		var err error
		approval, err = h.model.ApproveKnown(name, fb, addrs)
		switch {
		case errors.Is(err, flowmodel.ErrUnknownService):
			return notFound(name)
		case err != nil:
			return badRequest(err)
		}
		a.Before = mustJSON(before)
		a.After = mustJSON(approval)
		return nil
	})
	if err != nil {
		return
	}
	h.log.Info("approved", slog.String("service", name), slog.String("destination", fb.Destination), slog.String("shape", fb.Shape),
		slog.Any("addresses", approval.Addresses), slog.String("by", fb.By), slog.Uint64("audit", a.Seq))
	h.changed()
	s, _ := h.model.Service(name)
	s.Encodable()
	resp := FeedbackResponse{ServiceRecord: s, Approved: &approval}
	if d, _ := flowmodel.ParseDestination(fb.Destination); d.Host != "" && len(approval.Addresses) == 0 {
		resp.Note = "no address of " + d.Host + " is known (no DNS answer, none given): where requests carry the IP they go to, they stay blocked until an address is approved (\"addresses\")"
	}
	writeJSON(w, http.StatusOK, resp)
}

// waitResolver gives the resolver a moment to answer about a host being approved: its
// first lookup starts in the background.
func (h *Handler) waitResolver(ctx context.Context, dest string) {
	r, ok := h.model.(interface{ Config() flowmodel.Config })
	if !ok {
		return
	}
	res := r.Config().Resolver
	d, err := flowmodel.ParseDestination(dest)
	if res == nil || err != nil || d.Host == "" {
		return
	}
	deadline := time.Now().Add(h.resolveWait)
	for {
		if _, ok := res.Lookup(d.Host); ok || time.Now().After(deadline) {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (h *Handler) reject(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("service")
	req, fb, ok := h.feedbackRequest(w, r)
	if !ok {
		return
	}
	if len(req.Addresses) > 0 {
		writeError(w, http.StatusBadRequest, "addresses go with an approval; reject each address as a destination")
		return
	}
	id := IdentityFrom(r.Context())
	a := h.auditRecord(r, id, "reject", name, target(fb), req.Reason)
	err := h.apply(w, name, a, func() error {
		if !h.model.HasService(name) {
			return notFound(name)
		}
		a.Before = mustJSON(destState(h.model, name, fb.Destination))
		if err := h.model.Reject(name, fb); err != nil {
			return badRequest(err)
		}
		a.After = mustJSON(destState(h.model, name, fb.Destination))
		return nil
	})
	if err != nil {
		return
	}
	h.log.Info("rejected", slog.String("service", name), slog.String("destination", fb.Destination), slog.String("shape", fb.Shape),
		slog.String("by", fb.By), slog.Uint64("audit", a.Seq))
	h.changed()
	s, _ := h.model.Service(name)
	s.Encodable()
	writeJSON(w, http.StatusOK, FeedbackResponse{ServiceRecord: s})
}

func target(fb flowmodel.Feedback) string {
	if fb.Shape != "" {
		return fb.Shape + " on " + fb.Destination
	}
	return fb.Destination
}

// destState is a destination's entry in a service's baseline, for the audit log: nil when
// it is not in the baseline.
func destState(m Model, service, dest string) *flowmodel.DestinationRecord {
	d, err := flowmodel.ParseDestination(dest)
	if err != nil {
		return nil
	}
	s, ok := m.Service(service)
	if !ok {
		return nil
	}
	for _, r := range s.Destinations {
		if r.Destination == d.String() {
			r.FirstSeen, _ = flowmodel.ClampTime(r.FirstSeen)
			r.LastSeen, _ = flowmodel.ClampTime(r.LastSeen)
			return &r
		}
	}
	return nil
}

// statusError carries the HTTP status of a change that failed before anything was saved.
type statusError struct {
	code int
	err  error
}

func (e *statusError) Error() string { return e.err.Error() }
func (e *statusError) Unwrap() error { return e.err }

func notFound(service string) error {
	return &statusError{http.StatusNotFound, fmt.Errorf("unknown service %.200q", service)}
}
func badRequest(err error) error { return &statusError{http.StatusBadRequest, err} }

// apply runs change through the Committer and writes the error response when it fails: the
// change's own status (nothing changed), or 503 when the change is in effect but not yet
// saved. It returns nil when the change is durable.
func (h *Handler) apply(w http.ResponseWriter, service string, a *flowmodel.AuditRecord, change func() error) error {
	if h.commit == nil {
		err := errors.New("no store to record changes in: changes are refused")
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return err
	}
	err := h.commit.Commit(service, a, change)
	var se *statusError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &se):
		writeError(w, se.code, se.err.Error())
	default:
		h.log.Error("admin API: change in effect but not saved; retrying", slog.String("service", service), slog.Any("error", err))
		writeError(w, http.StatusServiceUnavailable, "the change is in effect but could not be saved yet (it is retried; see /readyz): "+err.Error())
	}
	return err
}

func (h *Handler) auditRecord(r *http.Request, id Identity, action, service, target, reason string) *flowmodel.AuditRecord {
	return &flowmodel.AuditRecord{At: h.now().UTC(), Who: id.Name, Role: id.Role.String(), From: r.RemoteAddr,
		Action: action, Service: service, Target: target, Reason: truncate(reason, 1024)}
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		return json.RawMessage(strconv.Quote(err.Error()))
	}
	return b
}

// checkDestination parses a destination as an operator names it, more strictly than
// flowmodel.ParseDestination: brackets only around an IPv6 address, no empty labels, and,
// when needPort, a port.
func checkDestination(s string, needPort bool) (flowmodel.Destination, error) {
	s = strings.TrimSpace(s)
	bad := func(why string) (flowmodel.Destination, error) {
		return flowmodel.Destination{}, fmt.Errorf("destination %.200q: %s", s, why)
	}
	if s == "" {
		return bad(`empty; want "host:port", "ip:port" or "[v6]:port"`)
	}
	if strings.ContainsAny(s, "[]") {
		if _, err := netip.ParseAddrPort(s); err != nil {
			if _, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")); err != nil || !strings.HasPrefix(s, "[") || !strings.HasSuffix(s, "]") {
				return bad("brackets go only around an IPv6 address")
			}
		}
	}
	d, err := flowmodel.ParseDestination(s)
	if err != nil {
		return bad(err.Error())
	}
	if d.Host != "" {
		if strings.HasPrefix(d.Host, ".") || strings.HasPrefix(d.Host, "-") || strings.Contains(d.Host, "..") {
			return bad("bad host name")
		}
		if strings.Count(s, ":") > 1 {
			return bad("bad port")
		}
	}
	if needPort && d.Port == 0 {
		return bad(`no port; want "host:port"`)
	}
	return d, nil
}

func decodeBody(w http.ResponseWriter, r *http.Request, v any, want string) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusRequestEntityTooLarge, "body too large")
			return false
		}
		writeError(w, http.StatusBadRequest, "bad JSON body: "+err.Error()+"; want "+want)
		return false
	}
	if dec.More() {
		writeError(w, http.StatusBadRequest, "bad JSON body: more than one value; want "+want)
		return false
	}
	return true
}

// ErrorBody is the body of every error response.
type ErrorBody struct {
	Error string `json:"error"`
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, ErrorBody{Error: msg})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v) // the client has gone if this fails
}

type slogPrinter struct{ l *slog.Logger }

func (p slogPrinter) Println(v ...any) { p.l.Error(fmt.Sprint(v...)) }

// ModeCollector exports meshguard_services{mode}: the number of services in each mode,
// computed at scrape time.
func ModeCollector(m interface {
	ModeCounts() map[flowmodel.Mode]int
}) prometheus.Collector {
	return modeCollector{m}
}

type modeCollector struct {
	m interface {
		ModeCounts() map[flowmodel.Mode]int
	}
}

var servicesDesc = prometheus.NewDesc("meshguard_services", "Services by mode.", []string{"mode"}, nil)

func (c modeCollector) Describe(ch chan<- *prometheus.Desc) { ch <- servicesDesc }

func (c modeCollector) Collect(ch chan<- prometheus.Metric) {
	counts := c.m.ModeCounts()
	for _, name := range flowmodel.ModeNames {
		mode, _ := flowmodel.ParseMode(name)
		ch <- prometheus.MustNewConstMetric(servicesDesc, prometheus.GaugeValue, float64(counts[mode]), name)
	}
}

type identityKey struct{}

func withIdentity(ctx context.Context, id Identity) context.Context {
	return context.WithValue(ctx, identityKey{}, id)
}

// IdentityFrom returns the identity Require put in a request's context.
func IdentityFrom(ctx context.Context) Identity {
	id, _ := ctx.Value(identityKey{}).(Identity)
	return id
}
