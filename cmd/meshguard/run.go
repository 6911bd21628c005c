package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"runtime/debug"
	"strings"
)

const usage = `meshguard: a network guard for Envoy sidecars and egress gateways.

Usage:
  meshguard serve   [flags]   serve ext_proc to Envoy, with the admin API
  meshguard demo    [flags]   run the guard in-process and play sidecar traffic through it
  meshguard replay  [flags] [FILE|-]
                              decide flow events (JSONL) and print one verdict per line
  meshguard learn   --pcap FILE --service NAME | --events FILE [flags]
                              seed baselines from a capture or flow events
  meshguard approve SERVICE DESTINATION [SHAPE]
  meshguard reject  SERVICE DESTINATION [SHAPE]
                              teach a running meshguard what is (not) expected
  meshguard policy  export --format istio|cilium|networkpolicy [flags]
                              write learned baselines as reviewable policies (YAML)
  meshguard version           print the version

Run "meshguard COMMAND -h" for a command's flags.
`

// errUsage is returned after usage was printed for bad arguments.
var errUsage = errors.New("bad usage")

// run is the whole program: main only wires signals and the exit code.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errUsage
	}
	cmd, rest := args[0], args[1:]
	var err error
	switch cmd {
	case "serve":
		err = runServe(ctx, rest, stdout, stderr)
	case "demo":
		err = runDemo(ctx, rest, stdout, stderr)
	case "replay":
		err = runReplay(ctx, rest, stdin, stdout, stderr)
	case "learn":
		err = runLearn(ctx, rest, stdin, stdout, stderr)
	case "approve", "reject":
		err = runFeedback(ctx, cmd, rest, stdout, stderr)
	case "policy":
		err = runPolicy(ctx, rest, stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, "meshguard", version())
		return nil
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprintf(stderr, "unknown command %q\n\n%s", cmd, usage)
		return errUsage
	}
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	return err
}

// newFlagSet returns the flag set of command name, reporting to stderr; -h prints usage
// and then the flags.
func newFlagSet(name, usage string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	return fs
}

func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "(unknown)"
	}
	v := bi.Main.Version
	if v == "" || v == "(devel)" {
		v = "devel"
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			v += "+" + s.Value[:12]
		}
	}
	return v + " " + strings.TrimPrefix(bi.GoVersion, "go")
}
