package admin

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshguard/meshguard/flowmodel"
	"github.com/meshguard/meshguard/flowmodel/store"
)

// childDirEnv, when set, makes TestChildServe a meshguard-like process serving the admin API
// over the store in that directory, for TestAdversaryModeChangeSurvivesSIGKILL to kill.
const childDirEnv = "MESHGUARD_ADMIN_TEST_CHILD_DIR"

// TestChildServe is not a test of its own: it is the child process of
// TestAdversaryModeChangeSurvivesSIGKILL, and skips unless that test started it.
func TestChildServe(t *testing.T) {
	dir := os.Getenv(childDirEnv)
	if dir == "" {
		t.Skip("child process of TestAdversaryModeChangeSurvivesSIGKILL only")
	}
	st, err := store.Open(dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	m, _ := flowmodel.New(flowmodel.Config{})
	if _, err := m.Load(st); err != nil {
		t.Fatal(err)
	}
	// The service exists in memory only: the persister's interval never comes.
	m.Decide(&flowmodel.Flow{Time: t0, Service: "shop/checkout", Destination: flowmodel.Destination{Host: "api.example.com", Port: 443}})
	p := &flowmodel.Persister{Model: m, Store: st, Interval: time.Hour}
	h, err := New(m, Options{Token: adminToken, Committer: p, Store: st, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	h.SetReady(true)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "addr.tmp"), []byte(lis.Addr().String()), 0o600); err != nil {
		t.Fatal(err)
	}
	os.Rename(filepath.Join(dir, "addr.tmp"), filepath.Join(dir, "addr"))
	http.Serve(lis, h) // until killed
}

// TestAdversaryModeChangeSurvivesSIGKILL covers issue 10 case 10: a mode change answered
// 200 survives a SIGKILL right after, inside the flush interval: a real process with a real
// bbolt file is killed, and the store read afresh has the change and its audit record.
func TestAdversaryModeChangeSurvivesSIGKILL(t *testing.T) {
	if os.Getenv(childDirEnv) != "" {
		t.Skip("in the child")
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestChildServe$", "-test.count=1")
	cmd.Env = append(os.Environ(), childDirEnv+"="+dir)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	defer func() {
		if !killed {
			cmd.Process.Kill()
			cmd.Wait()
		}
	}()
	var addr []byte
	deadline := time.Now().Add(30 * time.Second)
	for {
		var err error
		if addr, err = os.ReadFile(filepath.Join(dir, "addr")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("child did not start: %s", out.String())
		}
		time.Sleep(20 * time.Millisecond) // polling for the child's address file
	}
	body, _ := json.Marshal(ModeRequest{Mode: "quarantine", Allow: []string{"vault:8200"}, Reason: "compromised"})
	hr, _ := http.NewRequest("PUT", fmt.Sprintf("http://%s/v1/services/shop%%2Fcheckout/mode", addr), bytes.NewReader(body))
	hr.Header.Set("Authorization", "Bearer "+adminToken)
	hr.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(hr)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("mode change: %s", resp.Status)
	}
	// SIGKILL at once: no flush, no close.
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	killed = true

	st, err := store.Open(dir, store.Options{})
	if err != nil {
		t.Fatalf("reopen after SIGKILL: %v", err)
	}
	defer st.Close()
	m, _ := flowmodel.New(flowmodel.Config{})
	if _, err := m.Load(st); err != nil {
		t.Fatal(err)
	}
	rec, ok := m.Service("shop/checkout")
	if !ok || rec.Mode != flowmodel.ModeQuarantine || strings.Join(rec.QuarantineAllow, ",") != "vault:8200" {
		t.Fatalf("after SIGKILL the store has %+v (found %v), want quarantine allowing vault:8200", rec, ok)
	}
	audit, err := st.Audit(store.AuditQuery{})
	if err != nil || len(audit) != 1 || audit[0].Action != "mode" || audit[0].Reason != "compromised" {
		t.Fatalf("audit after SIGKILL: %+v %v", audit, err)
	}
}

func TestLoadOrCreateToken(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "admin-token")
	tok, created, err := LoadOrCreateToken(path)
	if err != nil || !created || len(tok) != 43 {
		t.Fatalf("create: %q %v %v", tok, created, err)
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %o", fi.Mode().Perm())
	}
	again, created, err := LoadOrCreateToken(path)
	if err != nil || created || again != tok {
		t.Fatalf("load: %q %v %v", again, created, err)
	}
	other, _, _ := LoadOrCreateToken(filepath.Join(dir, "other"))
	if other == tok {
		t.Fatal("two tokens alike")
	}
	// A Kubernetes Secret mounts the token through a symlink, mode 0400: that is fine.
	secret := filepath.Join(dir, "secret")
	os.WriteFile(secret, []byte(tok+"\n"), 0o400)
	link := filepath.Join(dir, "link")
	os.Symlink(secret, link)
	if got, created, err := LoadOrCreateToken(link); err != nil || created || got != tok {
		t.Fatalf("token through a symlink: %v", err)
	}
	tests := []struct {
		name  string
		setup func(p string)
		want  string
	}{
		{"group readable", func(p string) { os.WriteFile(p, []byte(tok), 0o600); os.Chmod(p, 0o640) }, "mode 0640"},
		{"world readable", func(p string) { os.WriteFile(p, []byte(tok), 0o600); os.Chmod(p, 0o644) }, "chmod 600"},
		{"empty", func(p string) { os.WriteFile(p, nil, 0o600) }, "empty"},
		{"blank", func(p string) { os.WriteFile(p, []byte(" \n"), 0o600) }, "empty"},
		{"too short", func(p string) { os.WriteFile(p, []byte("abc\n"), 0o600) }, "at least"},
		{"two lines", func(p string) { os.WriteFile(p, []byte(tok+"\n"+tok+"\n"), 0o600) }, "more than one"},
		{"directory", func(p string) { os.Mkdir(p, 0o700) }, "not a regular file"},
		{"symlink to a readable file", func(p string) {
			q := p + ".target"
			os.WriteFile(q, []byte(tok), 0o600)
			os.Chmod(q, 0o644)
			os.Symlink(q, p)
		}, "chmod 600"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "admin-token")
			tt.setup(p)
			_, _, err := LoadOrCreateToken(p)
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), p) {
				t.Fatalf("err = %v, want one naming %s and saying %q", err, p, tt.want)
			}
		})
	}
}
