package admin

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/meshguard/meshguard/flowmodel"
	"github.com/meshguard/meshguard/flowmodel/store"
)

// AuditList is the body of GET /v1/audit: records newest first. Next, when set, is the
// "before" that asks for the page after this one.
type AuditList struct {
	Records []flowmodel.AuditRecord `json:"records"`
	Next    uint64                  `json:"next,omitempty"`
}

// audit serves GET /v1/audit?service=NAME&before=SEQ&limit=N.
func (h *Handler) audit(w http.ResponseWriter, r *http.Request) {
	if h.store == nil {
		writeError(w, http.StatusServiceUnavailable, "no audit log: the admin API has no store")
		return
	}
	q := store.AuditQuery{Service: r.URL.Query().Get("service")}
	var err error
	if s := r.URL.Query().Get("before"); s != "" {
		if q.Before, err = strconv.ParseUint(s, 10, 64); err != nil {
			writeError(w, http.StatusBadRequest, "before: want a sequence number")
			return
		}
	}
	if s := r.URL.Query().Get("limit"); s != "" {
		if q.Limit, err = strconv.Atoi(s); err != nil || q.Limit < 1 {
			writeError(w, http.StatusBadRequest, "limit: want a positive number")
			return
		}
	}
	recs, err := h.store.Audit(q)
	if err != nil {
		h.log.Error("admin API: read audit log", slog.Any("error", err))
		writeError(w, http.StatusInternalServerError, "read audit log: "+err.Error())
		return
	}
	out := AuditList{Records: recs}
	if n := len(recs); n > 0 && (q.Limit == 0 || n == q.Limit) && recs[n-1].Seq > 1 {
		out.Next = recs[n-1].Seq
	}
	writeJSON(w, http.StatusOK, out)
}

// TokenInfo describes an API token; the token itself is shown once, when it is created.
type TokenInfo struct {
	Name      string    `json:"name"`
	Role      Role      `json:"role"`
	Created   time.Time `json:"created,omitzero"`
	CreatedBy string    `json:"created_by,omitempty"`
	// Token is set only in the answer to its creation.
	Token string `json:"token,omitempty"`
}

// TokenRequest is the body of POST /v1/tokens.
type TokenRequest struct {
	Name   string `json:"name"`
	Role   Role   `json:"role"`
	Reason string `json:"reason,omitempty"`
}

// RevokeRequest is the optional body of DELETE /v1/tokens/{name}.
type RevokeRequest struct {
	Reason string `json:"reason,omitempty"`
}

func (h *Handler) listTokens(w http.ResponseWriter, _ *http.Request) {
	if h.store == nil {
		writeError(w, http.StatusServiceUnavailable, "no token store: the admin API has no store")
		return
	}
	toks, err := h.store.Tokens()
	if err != nil {
		writeError(w, http.StatusInternalServerError, "read tokens: "+err.Error())
		return
	}
	out := []TokenInfo{}
	for _, t := range toks {
		role, _ := ParseRole(t.Role)
		out = append(out, TokenInfo{Name: t.Name, Role: role, Created: t.Created, CreatedBy: t.CreatedBy})
	}
	writeJSON(w, http.StatusOK, out)
}

func validTokenName(n string) bool {
	if n == "" || len(n) > 64 {
		return false
	}
	for _, c := range n {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("-_.@", c)) {
			return false
		}
	}
	return true
}

func (h *Handler) createToken(w http.ResponseWriter, r *http.Request) {
	if h.store == nil {
		writeError(w, http.StatusServiceUnavailable, "no token store: the admin API has no store")
		return
	}
	var req TokenRequest
	if !decodeBody(w, r, &req, `{"name":"ci","role":"viewer|operator|admin","reason":"..."}`) {
		return
	}
	if !validTokenName(req.Name) || req.Name == h.tokenName {
		writeError(w, http.StatusBadRequest, "name: 1 to 64 of letters, digits and -_.@, not the admin token's")
		return
	}
	if req.Role == RoleNone {
		writeError(w, http.StatusBadRequest, "role: want viewer, operator or admin")
		return
	}
	tok, err := NewToken()
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	id := IdentityFrom(r.Context())
	sum := hashToken(tok)
	st := store.Token{Name: req.Name, Role: req.Role.String(), SHA256: sum[:], Created: h.now().UTC(), CreatedBy: id.Name}
	a := h.auditRecord(r, id, "token.create", "", req.Name, req.Reason)
	a.After = mustJSON(TokenInfo{Name: st.Name, Role: req.Role, Created: st.Created, CreatedBy: st.CreatedBy})
	if err := h.store.PutToken(st, a); err != nil {
		if errors.Is(err, store.ErrTokenExists) {
			writeError(w, http.StatusConflict, fmt.Sprintf("a token named %q exists; revoke it first", req.Name))
			return
		}
		writeError(w, http.StatusServiceUnavailable, "save token: "+err.Error())
		return
	}
	h.tokMu.Lock()
	h.tokens[sum] = tokenInfo{name: req.Name, role: req.Role}
	h.tokMu.Unlock()
	h.log.Info("token created", slog.String("name", req.Name), slog.String("role", req.Role.String()), slog.String("by", id.Name), slog.Uint64("audit", a.Seq))
	writeJSON(w, http.StatusOK, TokenInfo{Name: req.Name, Role: req.Role, Created: st.Created, CreatedBy: id.Name, Token: tok})
}

func (h *Handler) revokeToken(w http.ResponseWriter, r *http.Request) {
	if h.store == nil {
		writeError(w, http.StatusServiceUnavailable, "no token store: the admin API has no store")
		return
	}
	name := r.PathValue("name")
	var req RevokeRequest
	if r.ContentLength != 0 && !decodeBody(w, r, &req, `{"reason":"..."}`) {
		return
	}
	id := IdentityFrom(r.Context())
	a := h.auditRecord(r, id, "token.revoke", "", name, req.Reason)
	// Forget it in memory first: from here on it no longer authenticates, saved or not.
	h.tokMu.Lock()
	var info tokenInfo
	found := false
	for k, t := range h.tokens {
		if t.name == name {
			info, found = t, true
			delete(h.tokens, k)
		}
	}
	h.tokMu.Unlock()
	if found {
		a.Before = mustJSON(TokenInfo{Name: name, Role: info.role})
	}
	deleted, err := h.store.DeleteToken(name, a)
	if err != nil {
		h.log.Error("admin API: revoke token not saved", slog.String("name", name), slog.Any("error", err))
		writeError(w, http.StatusServiceUnavailable, "the token no longer works here but its revocation could not be saved: "+err.Error())
		return
	}
	if !deleted {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no token named %.100q", name))
		return
	}
	h.log.Info("token revoked", slog.String("name", name), slog.String("by", id.Name), slog.Uint64("audit", a.Seq))
	writeJSON(w, http.StatusOK, TokenInfo{Name: name, Role: info.role})
}
