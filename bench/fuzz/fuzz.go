package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/meshguard/meshguard/bench/evaluate"
	"github.com/meshguard/meshguard/bench/results"
)

// Target is one fuzz target.
type Target struct {
	Pkg  string // ./path/to/pkg, relative to the module root
	Name string // FuzzXxx
}

func (t Target) String() string { return t.Pkg + "." + t.Name }

// Outcome is what one target's run came to.
type Outcome struct {
	Target
	Elapsed     time.Duration
	Execs       int64
	Interesting int64 // new interesting inputs found in this run
	Corpus      int64 // interesting inputs in all (the cached corpus)
	Failed      bool  // the target failed (a crasher, or the build)
	// DeadlineRace is set when go test failed with a bare "context deadline exceeded" at the
	// end of -fuzztime and wrote no input: the race of Go's fuzz coordinator fixed in Go 1.27
	// (go.dev/issue/75804), not a finding. It does not fail the run.
	DeadlineRace bool
	Input        string // the failing input written, relative to the module root
	Output       string // the tail of go test's output, when it failed
}

type config struct {
	root         string
	fuzztime     time.Duration
	minimizeTime time.Duration
	parallel     int
	run          *regexp.Regexp
	list         bool
	write        bool
	results      string
}

func parseConfig(args []string, stderr io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("fuzz", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: go run ./bench/fuzz [flags]\n\nRuns every fuzz target of the module in turn. Flags:")
		fs.PrintDefaults()
	}
	fs.StringVar(&c.root, "root", "", "module root (default: the module holding the working directory)")
	fs.DurationVar(&c.fuzztime, "fuzztime", 5*time.Minute, "time each target is fuzzed")
	fs.DurationVar(&c.minimizeTime, "minimize-time", 30*time.Second, "time go test may spend minimising a new input (-fuzzminimizetime)")
	fs.IntVar(&c.parallel, "parallel", 0, "fuzzing workers per target (default: GOMAXPROCS)")
	run := fs.String("run", "", "only targets whose name or package.name matches this regular expression")
	fs.BoolVar(&c.list, "list", false, "list the targets and exit")
	fs.BoolVar(&c.write, "write", false, "write the \"fuzz\" section of bench/RESULTS.md")
	fs.StringVar(&c.results, "results", "", "results file (default: bench/RESULTS.md in the module)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	var errs []error
	if fs.NArg() > 0 {
		errs = append(errs, fmt.Errorf("unexpected arguments %q", fs.Args()))
	}
	if c.fuzztime <= 0 || c.minimizeTime < 0 || c.parallel < 0 {
		errs = append(errs, errors.New("--fuzztime must be positive, --minimize-time and --parallel not negative"))
	}
	var err error
	if c.run, err = regexp.Compile(*run); err != nil {
		errs = append(errs, fmt.Errorf("--run: %w", err))
	}
	if c.root == "" {
		if c.root, err = evaluate.RepoRoot(); err != nil {
			errs = append(errs, err)
		}
	}
	return c, errors.Join(errs...)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseConfig(args, stderr)
	if err != nil {
		return err
	}
	targets, err := discover(cfg.root)
	if err != nil {
		return err
	}
	targets = slices.DeleteFunc(targets, func(t Target) bool {
		return !cfg.run.MatchString(t.Name) && !cfg.run.MatchString(t.String())
	})
	if len(targets) == 0 {
		return errors.New("no fuzz target matches")
	}
	if cfg.list {
		for _, t := range targets {
			fmt.Fprintln(stdout, t)
		}
		return nil
	}
	var outcomes []Outcome
	for i, t := range targets {
		fmt.Fprintf(stderr, "[%d/%d] %s for %v\n", i+1, len(targets), t, cfg.fuzztime)
		o, err := fuzz(ctx, cfg, t)
		if err != nil {
			return err
		}
		state := "ok"
		if o.DeadlineRace {
			state = "ok (ignored go.dev/issue/75804: context deadline exceeded at the end, no input written)"
		}
		if o.Failed {
			state = "FAILED"
		}
		fmt.Fprintf(stderr, "      %s: %d execs, %d new interesting (corpus %d)\n", state, o.Execs, o.Interesting, o.Corpus)
		outcomes = append(outcomes, o)
	}
	md := report(cfg, outcomes)
	fmt.Fprint(stdout, md)
	if cfg.write {
		path := cfg.results
		if path == "" {
			path = filepath.Join(cfg.root, "bench", "RESULTS.md")
		}
		if err := results.WriteSection(path, "fuzz", md); err != nil {
			return err
		}
	}
	var failed []string
	for _, o := range outcomes {
		if o.Failed {
			failed = append(failed, o.String())
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("%d target(s) failed: %s", len(failed), strings.Join(failed, ", "))
	}
	return nil
}

// discover finds the fuzz targets under root, in package and file order.
func discover(root string) ([]Target, error) {
	var out []Target
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if path != root && (name == "testdata" || name == "vendor" || strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_")) {
				return filepath.SkipDir
			}
			if path != root {
				if _, err := os.Stat(filepath.Join(path, "go.mod")); err == nil {
					return filepath.SkipDir // another module
				}
			}
			return nil
		}
		if !strings.HasSuffix(name, "_test.go") {
			return nil
		}
		names, err := fuzzFuncs(path)
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, filepath.Dir(path))
		if err != nil {
			return err
		}
		for _, n := range names {
			out = append(out, Target{Pkg: "./" + filepath.ToSlash(rel), Name: n})
		}
		return nil
	})
	return out, err
}

// fuzzFuncs returns the fuzz targets declared in a test file: top-level functions named
// FuzzXxx whose only parameter is a *testing.F.
func fuzzFuncs(path string) ([]string, error) {
	f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.SkipObjectResolution)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, d := range f.Decls {
		fn, ok := d.(*ast.FuncDecl)
		if !ok || fn.Recv != nil || !strings.HasPrefix(fn.Name.Name, "Fuzz") || len(fn.Type.Params.List) != 1 {
			continue
		}
		star, ok := fn.Type.Params.List[0].Type.(*ast.StarExpr)
		if !ok {
			continue
		}
		if sel, ok := star.X.(*ast.SelectorExpr); ok && sel.Sel.Name == "F" {
			if pkg, ok := sel.X.(*ast.Ident); ok && pkg.Name == "testing" {
				out = append(out, fn.Name.Name)
			}
		}
	}
	return out, nil
}

var (
	execsLine  = regexp.MustCompile(`execs: (\d+) .*new interesting: (\d+) \(total: (\d+)\)`)
	failedLine = regexp.MustCompile(`Failing input written to (\S+)`)
)

// fuzz runs one target with go test -fuzz.
func fuzz(ctx context.Context, cfg config, t Target) (Outcome, error) {
	o := Outcome{Target: t}
	args := []string{"test", t.Pkg, "-run", "^$", "-fuzz", "^" + t.Name + "$",
		"-fuzztime", cfg.fuzztime.String(), "-fuzzminimizetime", cfg.minimizeTime.String()}
	if cfg.parallel > 0 {
		args = append(args, "-parallel", strconv.Itoa(cfg.parallel))
	}
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = cfg.root
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return o, err
	}
	waitErr := make(chan error, 1)
	go func() { waitErr <- cmd.Wait(); pw.Close() }()
	var tail []string
	sc := bufio.NewScanner(pr)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		if m := execsLine.FindStringSubmatch(line); m != nil {
			o.Execs, _ = strconv.ParseInt(m[1], 10, 64)
			o.Interesting, _ = strconv.ParseInt(m[2], 10, 64)
			o.Corpus, _ = strconv.ParseInt(m[3], 10, 64)
		}
		if m := failedLine.FindStringSubmatch(line); m != nil {
			o.Input = t.Pkg + "/" + filepath.ToSlash(m[1])
		}
		tail = append(tail, line)
		if len(tail) > 40 {
			tail = tail[1:]
		}
	}
	err := <-waitErr
	o.Elapsed = time.Since(start)
	if ctx.Err() != nil {
		return o, ctx.Err()
	}
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit) && o.Input == "" && deadlineRace(tail):
		o.DeadlineRace = true
	case errors.As(err, &exit):
		o.Failed, o.Output = true, strings.Join(tail, "\n")
	default:
		return o, fmt.Errorf("%s: %w", t, err)
	}
	return o, nil
}

// deadlineRace reports whether go test's output ends the way go.dev/issue/75804 does: the
// target's only failure is "context deadline exceeded".
func deadlineRace(tail []string) bool {
	for i, line := range tail {
		if strings.HasPrefix(line, "--- FAIL: Fuzz") {
			rest := tail[i+1:]
			return len(rest) > 0 && strings.TrimSpace(rest[0]) == "context deadline exceeded" &&
				(len(rest) == 1 || strings.TrimSpace(rest[1]) == "FAIL")
		}
	}
	return false
}

func report(cfg config, outs []Outcome) string {
	var b strings.Builder
	fmt.Fprintf(&b, "## fuzz: every fuzz target\n\nCommand: `go run ./bench/fuzz --fuzztime %v` (each target in turn).\n\n", cfg.fuzztime)
	b.WriteString("| target | time | execs | new interesting | corpus | result |\n|---|---|---|---|---|---|\n")
	for _, o := range outs {
		res := "ok"
		if o.DeadlineRace {
			res = "ok (Go's end-of-fuzztime race, go.dev/issue/75804, ignored)"
		}
		if o.Failed {
			res = "**failed**"
			if o.Input != "" {
				res += ": `" + o.Input + "`"
			}
		}
		fmt.Fprintf(&b, "| %s | %v | %d | %d | %d | %s |\n", o, o.Elapsed.Round(time.Second), o.Execs, o.Interesting, o.Corpus, res)
	}
	for _, o := range outs {
		if !o.Failed {
			continue
		}
		fmt.Fprintf(&b, "\n%s failed", o)
		if o.Input != "" {
			fmt.Fprintf(&b, "; go test now replays `%s` on every run: fix the code, keep the file as a regression test", o.Input)
		}
		fmt.Fprintf(&b, ".\n\n```\n%s\n```\n", o.Output)
	}
	b.WriteString("\n")
	return b.String()
}
