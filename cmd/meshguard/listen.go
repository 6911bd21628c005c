package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strings"
	"time"
)

// listen listens on host:port or unix:///path. A stale unix socket (nobody listening) is
// replaced; any other file at the path is an error.
//
// A unix socket is made connectable by every user (0666): in the sidecar layout Envoy runs
// as another user (istio-proxy, UID 1337). Who may connect is decided by the directory the
// socket is in, a volume that only meshguard and Envoy mount (install/istio/sidecar), and
// the admin API asks for its token on top.
func listen(ctx context.Context, addr string) (net.Listener, error) {
	var lc net.ListenConfig
	if path, ok := strings.CutPrefix(addr, "unix://"); ok {
		if err := removeStaleSocket(path); err != nil {
			return nil, err
		}
		l, err := lc.Listen(ctx, "unix", path)
		if err != nil {
			return nil, err
		}
		if err := os.Chmod(path, 0o666); err != nil {
			l.Close()
			return nil, fmt.Errorf("listen unix %s: %w", path, err)
		}
		return l, nil
	}
	return lc.Listen(ctx, "tcp", addr)
}

func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode()&fs.ModeSocket == 0 {
		return fmt.Errorf("listen unix %s: a file that is not a socket is in the way", path)
	}
	c, err := net.DialTimeout("unix", path, 200*time.Millisecond)
	if err == nil {
		c.Close()
		return fmt.Errorf("listen unix %s: another process is listening there", path)
	}
	return os.Remove(path)
}

// addrString names a listener's address the way the flags take it.
func addrString(l net.Listener) string {
	if l.Addr().Network() == "unix" {
		return "unix://" + l.Addr().String()
	}
	return l.Addr().String()
}
