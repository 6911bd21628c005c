// Command load drives ext_proc load the way Envoy's ext_proc filter does (one stream per HTTP
// request, attributes and headers on the first message, each phase sent only after the
// previous one was answered, a per-message timeout) against a null ext_proc server and
// meshguard, alternately and under the same conditions, and reports throughput, latency
// percentiles, CPU per 1,000 decisions and memory, with meshguard's figures as ratios to the
// null server's.
//
// A run builds both servers (go build ./bench/load/nullserver, go build ./cmd/meshguard, or
// takes --null-server and --meshguard binaries), starts them as child processes, teaches
// every (service, destination) pair of the traffic mix while meshguard's services learn,
// switches them to enforce (PUT /v1/services/{service}/mode), then runs, for each round,
// a closed-loop saturation phase against each server in turn, and then open-loop phases at
// --open-fraction of the null server's saturation throughput. A line of progress goes to
// stderr every second; the report (markdown) goes to stdout and, with --write, into the
// "load" section of bench/RESULTS.md.
//
//	go run ./bench/load --targets null --duration 5s --rounds 1   # the null server alone
//	go run ./bench/load --write                                   # both, 2 rounds of 10s (about 2 minutes)
//	go run ./bench/load --pprof /tmp/prof                         # and CPU profiles of each server and the client
//	go run ./bench/load --targets '' --scale --write              # 10,000 services × 100, then a 1,000,000-address scan
//
// --scale starts a fresh meshguard, loads --scale-services × --scale-dests destinations
// through ext_proc streams, switches every service to enforce, reads RSS (and the Go heap
// from /metrics), then lets one service scan --scan-ips addresses it never used: every scan
// request must be answered with an ImmediateResponse 403 and RSS may grow by at most
// --scan-rss-bound; its results go to the "load-scale" section.
//
// All traffic goes to the servers on loopback (or a unix socket); the IP addresses inside the
// ext_proc messages are only text.
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
