// Command soak runs meshguard for a long time at a steady request rate and fails when the
// process grows: goroutines (go_goroutines), Go heap in use (go_memstats_heap_inuse_bytes,
// both from /metrics) or open file descriptors (/proc/PID/fd) rising, between the start and
// the end of the measured window, by more than the stated bounds.
//
// It builds the binary (or takes --meshguard), starts `meshguard serve` on loopback, teaches
// it --services services of --dests destinations each, switches them to enforce, then drives
// an open-loop load at --rate requests per second the way Envoy does (one stream per request,
// envoysim), --new-dest-share of them to never-seen addresses (blocked, and never learned),
// samples the process every --sample, and stops it with SIGTERM at the end, which must
// succeed. Growth is the median of the last fifth of the samples after --warmup minus the
// median of the first fifth: medians ride out GC sawteeth and streams in flight.
//
//	go run ./bench/soak                                 # 10 minutes at 500 requests/s
//	go run ./bench/soak --duration 30s --warmup 10s     # a quick look
//	go run ./bench/soak --write                         # and the "soak" section of bench/RESULTS.md
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(1)
	}
}
