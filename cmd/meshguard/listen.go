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
func listen(ctx context.Context, addr string) (net.Listener, error) {
	var lc net.ListenConfig
	if path, ok := strings.CutPrefix(addr, "unix://"); ok {
		if err := removeStaleSocket(path); err != nil {
			return nil, err
		}
		return lc.Listen(ctx, "unix", path)
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
