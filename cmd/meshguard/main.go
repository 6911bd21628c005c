// Command meshguard is a network guard for service-mesh sidecars and egress gateways: Envoy
// asks it over ext_proc whether each outbound request is expected. See README.md.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "meshguard:", err)
		os.Exit(1)
	}
}
