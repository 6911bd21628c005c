// Command nullserver is the null ext_proc server the load generator compares meshguard with:
// it answers every message with the matching CONTINUE response and registers grpc.health.v1.
//
//	go run ./bench/load/nullserver --listen 127.0.0.1:9001
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	_ "net/http/pprof" // served only when --pprof-listen is set
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/meshguard/meshguard/bench/load/nullproc"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "nullserver:", err)
		os.Exit(1)
	}
}

// stopGrace bounds GracefulStop before the server is stopped hard.
const stopGrace = 2 * time.Second

func run(ctx context.Context, args []string, _, stderr io.Writer) error {
	fs := flag.NewFlagSet("nullserver", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:9001", "ext_proc gRPC address: host:port or unix:///path")
	maxStreams := fs.Uint("max-concurrent-streams", nullproc.DefaultMaxConcurrentStreams, "HTTP/2 concurrent streams per connection (keep equal to meshguard's)")
	pprofListen := fs.String("pprof-listen", "", "serve net/http/pprof on this host:port (off when empty)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))

	lis, err := nullproc.Listen(ctx, *listen)
	if err != nil {
		return err
	}
	srv := nullproc.NewServer(nullproc.Config{MaxConcurrentStreams: uint32(*maxStreams)})
	if *pprofListen != "" {
		ps := &http.Server{Addr: *pprofListen, ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := ps.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("pprof server", "err", err)
			}
		}()
		defer ps.Close()
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(lis) }()
	log.Info("null ext_proc server listening", "addr", *listen)
	select {
	case err := <-done:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(stopGrace):
		srv.Stop()
	}
	return nil
}
