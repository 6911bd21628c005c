package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/meshguard/meshguard/controlplane/admin"
)

// adminRecorder is an admin API that records the requests it gets and answers 200.
type adminRecorder struct {
	mu   sync.Mutex
	reqs []recorded
}

type recorded struct {
	method, path, auth, contentType string
	body                            admin.FeedbackRequest
}

func (a *adminRecorder) start(t *testing.T) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := recorded{method: r.Method, path: r.URL.EscapedPath(), auth: r.Header.Get("Authorization"), contentType: r.Header.Get("Content-Type")}
		_ = json.NewDecoder(r.Body).Decode(&rec.body)
		a.mu.Lock()
		a.reqs = append(a.reqs, rec)
		a.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"services": []}`))
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

func (a *adminRecorder) last(t *testing.T) recorded {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.reqs) == 0 {
		t.Fatal("no request reached the admin API")
	}
	return a.reqs[len(a.reqs)-1]
}

// TestAdminClientsSendTokenAndJSON: approve, reject and policy export --admin send the
// bearer token, found as options.md says, and Content-Type: application/json.
func TestAdminClientsSendTokenAndJSON(t *testing.T) {
	var rec adminRecorder
	url := rec.start(t)
	dataDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dataDir, "admin-token"), []byte("from-data-dir\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tokenFile := writeFile(t, "token", "  from-file  \n")
	for _, tc := range []struct {
		name string
		vars map[string]string
		args []string
		want string
	}{
		{"--admin-token-file wins", map[string]string{adminTokenEnv: "from-env"}, []string{"--admin-token-file", tokenFile, "--data-dir", dataDir}, "Bearer from-file"},
		{"then the environment", map[string]string{adminTokenEnv: "from-env"}, []string{"--data-dir", dataDir}, "Bearer from-env"},
		{"then the data directory", nil, []string{"--data-dir", dataDir}, "Bearer from-data-dir"},
		{"none anywhere", nil, []string{"--data-dir", t.TempDir()}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, action := range []string{"approve", "reject"} {
				args := append([]string{action, "--admin", url, "--by", "alice", "shop/checkout", "api.example.com:443"}, tc.args...)
				stdout, _, err := runEnv(t, tc.vars, args...)
				if err != nil {
					t.Fatal(err)
				}
				r := rec.last(t)
				if r.auth != tc.want || r.contentType != "application/json" || r.method != http.MethodPost {
					t.Errorf("%s: %s %s, Authorization %q, Content-Type %q", action, r.method, r.path, r.auth, r.contentType)
				}
				past := map[string]string{"approve": "approved", "reject": "rejected"}[action]
				if want := past + " for shop/checkout: api.example.com:443 (by alice)\n"; stdout != want {
					t.Errorf("printed %q, want %q", stdout, want)
				}
			}
		})
	}
	_, _, err := runEnv(t, map[string]string{adminTokenEnv: "from-env"}, "policy", "export", "--format", "istio", "--admin", url)
	if err != nil {
		t.Fatal(err)
	}
	if r := rec.last(t); r.path != "/v1/services" || r.auth != "Bearer from-env" || r.contentType != "application/json" {
		t.Errorf("policy export --admin: %+v", r)
	}
	if _, _, err := runEnv(t, nil, "approve", "--admin", url, "--admin-token-file", "/does/not/exist", "a/b", "x.example:1"); err == nil || !strings.Contains(err.Error(), "admin token") {
		t.Errorf("a missing --admin-token-file: %v", err)
	}
}

// TestApproveWithoutUSER: with $USER unset the decision is recorded under the account's
// login name (or "unknown"), never refused.
func TestApproveWithoutUSER(t *testing.T) {
	var rec adminRecorder
	url := rec.start(t)
	t.Setenv("USER", "")
	if _, _, err := runEnv(t, nil, "approve", "--admin", url, "shop/checkout", "api.example.com:443"); err != nil {
		t.Fatal(err)
	}
	if by := rec.last(t).body.By; strings.TrimSpace(by) == "" || by != whoami() {
		t.Fatalf("recorded by %q, want whoami() %q", by, whoami())
	}
}
