// Command stratosphere converts the Stratosphere Laboratory's labelled Zeek logs (a benign
// Windows host and a host infected with Kovter) into flow events and evaluates meshguard's
// model on them.
//
//	go run ./bench/stratosphere convert [--data DIR] --out FILE.jsonl
//	go run ./bench/stratosphere eval [--data DIR] [--learn 4h,8h,12h] [--write]
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "stratosphere:", err)
		stop()
		os.Exit(1)
	}
}
