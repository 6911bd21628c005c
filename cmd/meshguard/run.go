package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// errUsage marks an error in how a command was called: an unknown command or flag, a
// missing or extra argument.
var errUsage = errors.New("bad usage")

// usageError is a command-line mistake: one line, and how to get the command's help.
type usageError struct {
	cmd string // "meshguard serve"
	err error
}

func (e usageError) Error() string {
	return fmt.Sprintf("%v\nRun '%s --help' for usage.", e.err, e.cmd)
}

func (e usageError) Unwrap() []error { return []error{e.err, errUsage} }

func newUsageError(c *cobra.Command, err error) error {
	return usageError{cmd: c.CommandPath(), err: err}
}

// env is what run takes from its environment besides the arguments and standard streams.
type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	lookupEnv      func(string) (string, bool)
}

// run is the whole program: main only wires signals and the exit code.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	root := newRootCommand(&env{stdin: stdin, stdout: stdout, stderr: stderr, lookupEnv: os.LookupEnv})
	root.SetArgs(args)
	return root.ExecuteContext(ctx)
}

// newRootCommand is meshguard's command tree. Each command is a small constructor below or
// in the file of its feature; a new group (say "store check|backup|restore") is one more
// AddCommand here.
func newRootCommand(e *env) *cobra.Command {
	root := &cobra.Command{
		Use:   "meshguard",
		Short: "a network guard for Envoy sidecars and egress gateways",
		Long: `meshguard: a network guard for Envoy sidecars and egress gateways.

Envoy asks meshguard, over ext_proc, whether each outbound request is expected; meshguard
learns each service's destinations and request shapes and alerts on or blocks the rest.`,
		Version:       version(),
		SilenceErrors: true,
		SilenceUsage:  true,
		// Flags may follow arguments, as in kubectl: "meshguard replay FILE --learn-window 1h".
		Args: cobra.ArbitraryArgs,
		RunE: func(c *cobra.Command, args []string) error {
			if len(args) > 0 {
				return newUsageError(c, fmt.Errorf("unknown command %q", args[0]))
			}
			return newUsageError(c, errors.New("want a command, as serve or demo"))
		},
	}
	root.SetIn(e.stdin)
	root.SetOut(e.stdout)
	root.SetErr(e.stderr)
	root.SetVersionTemplate("meshguard {{.Version}}\n")
	root.SetFlagErrorFunc(newUsageError)
	root.CompletionOptions.DisableDefaultCmd = true
	root.AddCommand(
		newServeCommand(e),
		newConfigCommand(e),
		newDemoCommand(e),
		newReplayCommand(e),
		newLearnCommand(e),
		newFeedbackCommand(e, "approve"),
		newFeedbackCommand(e, "reject"),
		newPolicyCommand(e),
		newStoreCommand(e),
		&cobra.Command{
			Use:   "version",
			Short: "print the version",
			Args:  noArgs,
			Run:   func(c *cobra.Command, _ []string) { fmt.Fprintln(c.OutOrStdout(), "meshguard", version()) },
		},
	)
	return root
}

// newGroupCommand is a command that only holds subcommands, as "policy" holds "export";
// called alone or with an unknown subcommand it is a usage error.
func newGroupCommand(name, short, subcommands string) *cobra.Command {
	return &cobra.Command{
		Use:   name,
		Short: short,
		Args:  cobra.ArbitraryArgs,
		RunE: func(c *cobra.Command, args []string) error {
			if len(args) > 0 {
				return newUsageError(c, fmt.Errorf("unknown subcommand %q: want %s", args[0], subcommands))
			}
			return newUsageError(c, fmt.Errorf("want a subcommand: %s", subcommands))
		},
	}
}

// noArgs refuses positional arguments as a usage error.
func noArgs(c *cobra.Command, args []string) error {
	if len(args) > 0 {
		return newUsageError(c, fmt.Errorf("%s takes no arguments, got %q", c.Name(), args))
	}
	return nil
}

// rangeArgs wants between lo and hi positional arguments.
func rangeArgs(lo, hi int, what string) cobra.PositionalArgs {
	return func(c *cobra.Command, args []string) error {
		if len(args) < lo || len(args) > hi {
			return newUsageError(c, fmt.Errorf("want %s, got %d arguments", what, len(args)))
		}
		return nil
	}
}

// newServeCommand is "meshguard serve".
func newServeCommand(e *env) *cobra.Command {
	var (
		f          serveFlags
		configFile string
	)
	c := &cobra.Command{
		Use:   "serve [flags]",
		Short: "serve ext_proc to Envoy, with the admin API and the xDS control plane",
		Long: `Serves ext_proc to Envoy, the admin API and the xDS control plane.

Every option is read, each source overriding the one before, from its default, the YAML file
--config (a flat map of option names to values), the environment (MESHGUARD_<NAME>, as
MESHGUARD_DATA_DIR) and the command line. "meshguard config print" shows the result.`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cfg, _, err := resolveServe(c.Flags(), &f, configFile, e.lookupEnv)
			if err != nil {
				return err
			}
			return runServe(c.Context(), cfg, e.stdout, e.stderr)
		},
	}
	addServeFlags(c.Flags(), &f, &configFile)
	return c
}

// addServeFlags registers serve's options and --config on fs, in the table's order.
func addServeFlags(fs *pflag.FlagSet, f *serveFlags, configFile *string) {
	fs.SortFlags = false
	fs.StringVar(configFile, configFlag, "", "YAML file of options (flat: option name: value); default $MESHGUARD_CONFIG")
	registerOptions(fs, f.options())
}

// resolveServe layers the file and the environment under the parsed command line and
// checks the result.
func resolveServe(fs *pflag.FlagSet, f *serveFlags, configFile string, lookupEnv func(string) (string, bool)) (serveConfig, *layered, error) {
	l, lerr := applyLayers(fs, f.options(), configFile, lookupEnv)
	// An option whose layer failed keeps its previous value, so checking the rest reports
	// every problem at once.
	cfg, err := f.validate()
	return cfg, l, errors.Join(lerr, l.annotate(err))
}

// newConfigCommand is "meshguard config print".
func newConfigCommand(e *env) *cobra.Command {
	group := newGroupCommand("config", "show serve's configuration", "print")
	var (
		f          serveFlags
		configFile string
	)
	print := &cobra.Command{
		Use:   "print [serve flags]",
		Short: "print the effective configuration of serve, and where each value came from",
		Long: `Prints, as a YAML file that --config reads back, the configuration "meshguard serve" would
run with given the same flags, file and environment; a comment on each line says where the
value came from (default, file FILE:LINE, env MESHGUARD_*, flag). Problems are reported
after the listing, and make the command fail.`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			_, l, err := resolveServe(c.Flags(), &f, configFile, e.lookupEnv)
			if l != nil {
				if perr := l.print(e.stdout); perr != nil {
					return perr
				}
			}
			return err
		},
	}
	addServeFlags(print.Flags(), &f, &configFile)
	group.AddCommand(print)
	return group
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
