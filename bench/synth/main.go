// Command synth generates a synthetic egress suite with known ground truth (services with
// daily cycles, then injected attacks) and evaluates meshguard's model on it per attack kind.
//
//	go run ./bench/synth gen --seed 1 --out FILE.jsonl [--days 14] [--learn-days 3] [--scale 1]
//	go run ./bench/synth eval [--seed 1] [--days 14] [--learn-days 3] [--scale 1] [--write]
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
		fmt.Fprintln(os.Stderr, "synth:", err)
		stop()
		os.Exit(1)
	}
}
