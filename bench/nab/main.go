// Command nab evaluates meshguard's rate detector on series of the Numenta Anomaly Benchmark
// (Twitter mention volumes and New York taxi passengers, each read as one service's requests
// per interval) beside a trivial fixed-threshold baseline, and reports the labelled windows
// alerted, false alert episodes per series-day and NAB's standard score. Run it from the
// repository root:
//
//	go run ./bench/nab [--data PATH] [--write]
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "nab:", err)
		os.Exit(1)
	}
}
