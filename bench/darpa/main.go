// Command darpa evaluates meshguard's burst detector on the DARPA 1998 edge stream that MIDAS
// was measured on, beside two trivial baselines, and reports per-edge ROC-AUC and time per
// edge. Run it from the repository root:
//
//	go run ./bench/darpa [--data PATH] [--limit N] [--sweep] [--write]
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
		fmt.Fprintln(os.Stderr, "darpa:", err)
		os.Exit(1)
	}
}
