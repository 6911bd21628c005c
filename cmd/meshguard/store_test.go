package main

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshguard/meshguard/flowmodel/store"
)

// TestStoreCommands is the way back from a damaged store, as a user walks it: serve learns
// and stops; "store backup" copies the store; the store is then truncated, and serve refuses
// to start with an error naming the file and "meshguard store"; "store restore" puts the
// backup back, and serve starts with the learned baseline enforced.
func TestStoreCommands(t *testing.T) {
	dir := t.TempDir()
	ts := startTestServer(t, dir)
	learn(t, ts)
	ts.mustSetMode(t, "shop/checkout", "enforce")
	if err := ts.shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	db := filepath.Join(dir, store.FileName)

	stdout, stderr, err := runCmd(t, "store", "check", "--data-dir", dir)
	if err != nil || !strings.Contains(stdout, "3 services") {
		t.Fatalf("check: %v %q %q", err, stdout, stderr)
	}
	backup := filepath.Join(t.TempDir(), "good.db")
	if stdout, stderr, err = runCmd(t, "store", "backup", "--data-dir", dir, backup); err != nil || !strings.Contains(stdout, "3 services") {
		t.Fatalf("backup: %v %q %q", err, stdout, stderr)
	}

	fi, err := os.Stat(db)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(db, fi.Size()/2); err != nil {
		t.Fatal(err)
	}
	if _, _, err := runCmd(t, "store", "check", "--data-dir", dir); err == nil {
		t.Fatal("check passed a truncated store")
	}
	cfg, err := parseServe([]string{"--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--xds-listen", "off", "--data-dir", dir})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := startServer(t.Context(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), nil); err == nil || !strings.Contains(err.Error(), db) || !strings.Contains(err.Error(), "meshguard store restore") {
		t.Fatalf("start on a truncated store: %v; want an error naming %s and the way back", err, db)
	}

	if stdout, stderr, err = runCmd(t, "store", "restore", "--data-dir", dir, backup); err != nil || !strings.Contains(stdout, "restored") {
		t.Fatalf("restore: %v %q %q", err, stdout, stderr)
	}
	ts = startTestServer(t, dir)
	if code, _ := ts.do(t, checkout.request("198.51.100.66", 443, "exfil.example.net", "GET", "/", "")); code != 403 {
		t.Errorf("after restore, a new destination of the enforced service got %d, want 403", code)
	}
	if code, _ := ts.do(t, checkout.request("203.0.113.10", 443, "api.stripe.com", "GET", "/", "")); code != 200 {
		t.Errorf("after restore, a learned destination got %d, want 200", code)
	}

	if _, _, err := runCmd(t, "store", "backup", "--data-dir", dir, filepath.Join(t.TempDir(), "x.db")); err == nil || !strings.Contains(err.Error(), "/v1/backup") {
		t.Errorf("backup while serving: %v, want the lock error pointing at POST /v1/backup", err)
	}
}
