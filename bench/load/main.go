// Command load drives ext_proc load the way Envoy's ext_proc filter does (one stream per HTTP
// request, attributes and headers on the first message, each phase sent only after the
// previous one was answered, a per-message timeout) against a null ext_proc server and
// meshguard, alternately and under the same conditions, and reports throughput, latency
// percentiles, CPU per 1,000 decisions and memory, with meshguard's figures as ratios to the
// null server's. With --scale it loads many services and lets one of them scan a million
// addresses. With --write it records its results in the "load" section of bench/RESULTS.md.
//
//	go run ./bench/load --targets null,meshguard --duration 10s --rounds 2 --write
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
	defer stop()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "load:", err)
		os.Exit(1)
	}
}
