package main

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// In the sidecar layout Envoy (another user) connects to meshguard's sockets: the socket
// must be connectable by others, and the directory it sits in decides who may.
func TestListenUnixSocketConnectableByOthers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "extproc.sock")
	l, err := listen(context.Background(), "unix://"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o666 {
		t.Errorf("socket mode %o, want 666", got)
	}
}
