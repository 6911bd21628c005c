// Command fuzz runs every fuzz target of the module (each func FuzzXxx(*testing.F) in a
// _test.go file), one after the other, for --fuzztime each, and fails when one fails. A
// failing input is written by go test under the package's testdata/fuzz/FuzzXxx/; committed
// there, it runs in every plain go test from then on: found crashers become regression
// tests. The report lists each target's executions and new coverage, and the inputs to commit.
//
//	go run ./bench/fuzz --fuzztime 5s                 # every target briefly (CI)
//	go run ./bench/fuzz --fuzztime 10m --run Process  # FuzzProcess for ten minutes
//	go run ./bench/fuzz --list                        # the targets found
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
		fmt.Fprintln(os.Stderr, "fuzz:", err)
		os.Exit(1)
	}
}
