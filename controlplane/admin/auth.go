package admin

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
)

// Role is what a credential may do. Each role may do what the roles below it may.
type Role int

const (
	// RoleNone may do nothing: a credential without a role is refused (403).
	RoleNone Role = iota
	// RoleViewer reads: services, the audit log.
	RoleViewer
	// RoleOperator changes modes (quarantine too), approves and rejects.
	RoleOperator
	// RoleAdmin manages tokens and policy.
	RoleAdmin
)

var roleNames = [...]string{"none", "viewer", "operator", "admin"}

func (r Role) String() string {
	if r < 0 || int(r) >= len(roleNames) {
		return fmt.Sprintf("role(%d)", int(r))
	}
	return roleNames[r]
}

// ParseRole parses "viewer", "operator", "admin" or "none".
func ParseRole(s string) (Role, error) {
	for i, n := range roleNames {
		if strings.EqualFold(strings.TrimSpace(s), n) {
			return Role(i), nil
		}
	}
	return RoleNone, fmt.Errorf("unknown role %q (want viewer, operator or admin)", s)
}

// MarshalText writes the role's name.
func (r Role) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText parses a role's name.
func (r *Role) UnmarshalText(b []byte) error {
	v, err := ParseRole(string(b))
	*r = v
	return err
}

// Identity is who made a request: the name of its credential, the role it holds, and how
// it was presented ("token" or "certificate").
type Identity struct {
	Name string `json:"name"`
	Role Role   `json:"role"`
	Via  string `json:"via"`
}

// TokenBytes is the entropy of a generated token.
const TokenBytes = 32

// maxTokenLen bounds a presented bearer token.
const maxTokenLen = 512

// NewToken returns a random token: TokenBytes from crypto/rand, base64url without padding.
func NewToken() (string, error) {
	b := make([]byte, TokenBytes)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("random token: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// minTokenLen refuses a token file too short to be a secret.
const minTokenLen = 16

// LoadOrCreateToken reads the admin token from path, or, when path does not exist, writes
// a new random one there (mode 0600, its directory created 0700) and reports created. It
// refuses a file that others may read or write (permissions beyond 0600), that is empty
// or too short, or that is not a regular file: the token gives full control of meshguard.
// A symlink is followed (a Kubernetes Secret mounts its files so; give it defaultMode 0400).
func LoadOrCreateToken(path string) (token string, created bool, err error) {
	fi, err := os.Stat(path) // a Kubernetes Secret's file is a symlink
	switch {
	case errors.Is(err, os.ErrNotExist):
		return createToken(path)
	case err != nil:
		return "", false, fmt.Errorf("admin token %s: %w", path, err)
	case !fi.Mode().IsRegular():
		return "", false, fmt.Errorf("admin token %s: not a regular file", path)
	case fi.Mode().Perm()&0o077 != 0:
		return "", false, fmt.Errorf("admin token %s: mode %04o lets others read or write it; chmod 600 %s", path, fi.Mode().Perm(), path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return "", false, fmt.Errorf("admin token %s: %w", path, err)
	}
	token = strings.TrimSpace(string(data))
	switch {
	case token == "":
		return "", false, fmt.Errorf("admin token %s: the file is empty; delete it to have a new token written, or put the token in it", path)
	case len(token) < minTokenLen:
		return "", false, fmt.Errorf("admin token %s: %d characters, want at least %d", path, len(token), minTokenLen)
	case len(token) > maxTokenLen:
		return "", false, fmt.Errorf("admin token %s: longer than %d characters", path, maxTokenLen)
	case strings.ContainsAny(token, " \t\r\n"):
		return "", false, fmt.Errorf("admin token %s: more than one line or word", path)
	}
	return token, false, nil
}

func createToken(path string) (string, bool, error) {
	token, err := NewToken()
	if err != nil {
		return "", false, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", false, fmt.Errorf("admin token %s: %w", path, err)
	}
	// O_EXCL: never overwrite a token another process has just written.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		// Another process wrote it meanwhile: use that one.
		tok, _, err := LoadOrCreateToken(path)
		return tok, false, err
	}
	if err != nil {
		return "", false, fmt.Errorf("admin token %s: %w", path, err)
	}
	_, err = f.WriteString(token + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return "", false, fmt.Errorf("admin token %s: %w", path, err)
	}
	return token, true, nil
}

func hashToken(tok string) [sha256.Size]byte { return sha256.Sum256([]byte(tok)) }

// authError is a refused request: its status (401 or 403) and why.
type authError struct {
	code int
	msg  string
}

// authenticate returns who made r. A bearer token wins over a client certificate; a bad
// token is refused even when a certificate comes with it.
func (h *Handler) authenticate(r *http.Request) (Identity, *authError) {
	if authz := r.Header.Values("Authorization"); len(authz) > 0 {
		if len(authz) > 1 {
			return Identity{}, &authError{http.StatusUnauthorized, "more than one Authorization header"}
		}
		scheme, tok, ok := strings.Cut(strings.TrimSpace(authz[0]), " ")
		tok = strings.TrimSpace(tok)
		if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" || len(tok) > maxTokenLen {
			return Identity{}, &authError{http.StatusUnauthorized, "want Authorization: Bearer <token>"}
		}
		sum := hashToken(tok)
		// The admin token: compared in constant time.
		if h.adminHash != nil && subtle.ConstantTimeCompare(sum[:], h.adminHash[:]) == 1 {
			return Identity{Name: h.tokenName, Role: RoleAdmin, Via: "token"}, nil
		}
		// Stored tokens are found by their SHA-256: a lookup's timing tells nothing of a
		// token not known already.
		h.tokMu.RLock()
		t, found := h.tokens[sum]
		h.tokMu.RUnlock()
		if found {
			return Identity{Name: t.name, Role: t.role, Via: "token"}, nil
		}
		return Identity{}, &authError{http.StatusUnauthorized, "unknown or revoked token"}
	}
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 && len(r.TLS.PeerCertificates) > 0 {
		leaf := r.TLS.PeerCertificates[0]
		var names []string
		for _, u := range leaf.URIs {
			names = append(names, u.String())
		}
		if leaf.Subject.CommonName != "" {
			names = append(names, leaf.Subject.CommonName)
		}
		for _, n := range names {
			if role, ok := h.certRoles[n]; ok {
				return Identity{Name: n, Role: role, Via: "certificate"}, nil
			}
		}
		name := "certificate"
		if len(names) > 0 {
			name = names[0]
		}
		return Identity{Name: name, Role: h.certDefault, Via: "certificate"}, nil
	}
	return Identity{}, &authError{http.StatusUnauthorized, "credentials required: Authorization: Bearer <token> (the admin token is in <data-dir>/admin-token) or a client certificate"}
}

// checkHost refuses a Host that is neither one of the listener's names, an IP literal nor
// localhost: a browser led to meshguard by a DNS name an attacker controls (DNS
// rebinding) sends that name.
func (h *Handler) checkHost(r *http.Request) *authError {
	host := r.Host
	if host == "" {
		return &authError{http.StatusForbidden, "a Host header is required"}
	}
	if hn, _, err := net.SplitHostPort(host); err == nil {
		host = hn
	}
	host = strings.TrimSuffix(strings.ToLower(strings.Trim(host, "[]")), ".")
	if _, err := netip.ParseAddr(host); err == nil || host == "localhost" || h.hosts[host] {
		return nil
	}
	return &authError{http.StatusForbidden, fmt.Sprintf("Host %.100q is not a name of this listener (configure it among the admin API's hosts)", r.Host)}
}

// checkOrigin refuses a change a browser sends on another site's behalf: a foreign Origin
// or a cross-site fetch.
func checkOrigin(r *http.Request) *authError {
	if o := r.Header.Values("Origin"); len(o) > 0 {
		u, err := url.Parse(o[0])
		if len(o) > 1 || err != nil || (u.Scheme != "http" && u.Scheme != "https") || !strings.EqualFold(u.Host, r.Host) {
			return &authError{http.StatusForbidden, fmt.Sprintf("Origin %.100q does not match Host %.100q", strings.Join(o, ","), r.Host)}
		}
	}
	if s := r.Header.Get("Sec-Fetch-Site"); s != "" && s != "same-origin" && s != "none" {
		return &authError{http.StatusForbidden, "cross-site request (Sec-Fetch-Site: " + s + ")"}
	}
	return nil
}

// checkContentType refuses a change whose body is not JSON: an HTML form or text/plain
// needs no CORS preflight, so a browser sends them cross-site.
func checkContentType(r *http.Request) *authError {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/json" {
		return &authError{http.StatusForbidden, "changes need Content-Type: application/json"}
	}
	return nil
}

// Require wraps next so that it serves only requests with a credential of role min or
// above, after the Host check and, for anything but GET and HEAD, the Origin and
// Content-Type checks. The identity is in the request's context (IdentityFrom).
func (h *Handler) Require(min Role, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mutation := r.Method != http.MethodGet && r.Method != http.MethodHead
		if e := h.checkHost(r); e != nil {
			h.refuse(w, r, e, Identity{})
			return
		}
		if mutation {
			if e := checkOrigin(r); e != nil {
				h.refuse(w, r, e, Identity{})
				return
			}
		}
		id, e := h.authenticate(r)
		if e != nil {
			h.refuse(w, r, e, id)
			return
		}
		if id.Role < min {
			h.refuse(w, r, &authError{http.StatusForbidden, fmt.Sprintf("%s %q has role %s; this needs %s", id.Via, id.Name, id.Role, min)}, id)
			return
		}
		if mutation {
			if e := checkContentType(r); e != nil {
				h.refuse(w, r, e, id)
				return
			}
		}
		next.ServeHTTP(w, r.WithContext(withIdentity(r.Context(), id)))
	})
}

func (h *Handler) refuse(w http.ResponseWriter, r *http.Request, e *authError, id Identity) {
	h.log.Warn("admin API: request refused", "status", e.code, "reason", e.msg, "method", r.Method,
		"path", r.URL.Path, "from", r.RemoteAddr, "credential", id.Name)
	if e.code == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="meshguard"`)
	}
	writeError(w, e.code, e.msg)
}
