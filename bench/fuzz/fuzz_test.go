package main

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshguard/meshguard/bench/evaluate"
)

// tinyModule writes a module with a fuzz target that passes and one that fails on any input
// of 8 bytes or more, and a testdata directory with a _test.go file that must be ignored.
func tinyModule(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	files := map[string]string{
		"go.mod": "module example.com/tiny\n\ngo 1.26\n",
		"a/a.go": "// Package a is a test fixture.\npackage a\n",
		"a/a_test.go": `package a

import "testing"

func FuzzFine(f *testing.F) {
	f.Add([]byte("a"))
	f.Fuzz(func(t *testing.T, b []byte) {})
}
`,
		"b/b_test.go": `package b

import "testing"

func FuzzLong(f *testing.F) {
	f.Add([]byte("a"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) >= 8 {
			t.Fatalf("too long: %d bytes", len(b))
		}
	})
}

func helperNotATarget(f *testing.F) {}

func FuzzyName(t *testing.T) {}

var source = ` + "`" + `
func FuzzInAString(f *testing.F) {}
` + "`" + `
`,
		"b/testdata/x_test.go": "package x\n\nimport \"testing\"\n\nfunc FuzzIgnored(f *testing.F) {}\n",
	}
	for name, body := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestDiscover(t *testing.T) {
	got, err := discover(tinyModule(t))
	if err != nil {
		t.Fatal(err)
	}
	want := []Target{{Pkg: "./a", Name: "FuzzFine"}, {Pkg: "./b", Name: "FuzzLong"}}
	if !slices.Equal(got, want) {
		t.Fatalf("targets %v, want %v", got, want)
	}
}

func TestDiscoverFindsThisModulesTargets(t *testing.T) {
	root, err := evaluate.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	got, err := discover(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []Target{{"./extproc", "FuzzProcess"}, {"./extproc", "FuzzAttributes"}, {"./flowmodel", "FuzzParseEvent"}} {
		if !slices.Contains(got, want) {
			t.Errorf("%v not found among %v", want, got)
		}
	}
}

// TestRunReportsTheFailingInput fuzzes the tiny module for real: the failing target's input
// is reported where go test wrote it, and the run fails.
func TestRunReportsTheFailingInput(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and fuzzes a module")
	}
	root := tinyModule(t)
	var out strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err := run(ctx, []string{"--root", root, "--fuzztime", "2s", "--minimize-time", "1s"}, &out, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "./b.FuzzLong") || strings.Contains(err.Error(), "FuzzFine") {
		t.Fatalf("run: %v, want FuzzLong (only) failed\n%s", err, out.String())
	}
	report := out.String()
	if !strings.Contains(report, "| ./a.FuzzFine |") || !strings.Contains(report, "`./b/testdata/fuzz/FuzzLong/") {
		t.Fatalf("report:\n%s", report)
	}
	inputs, _ := filepath.Glob(filepath.Join(root, "b", "testdata", "fuzz", "FuzzLong", "*"))
	if len(inputs) != 1 {
		t.Fatalf("failing inputs written: %v", inputs)
	}
}

func TestDeadlineRace(t *testing.T) {
	for _, tc := range []struct {
		name string
		tail string
		want bool
	}{
		{"the coordinator race", "fuzz: elapsed: 20s, execs: 545582 (28040/sec)\n--- FAIL: FuzzTemplate (20.31s)\n    context deadline exceeded\nFAIL\nexit status 1", true},
		{"a crasher", "--- FAIL: FuzzLong (0.09s)\n    --- FAIL: FuzzLong (0.00s)\n        b_test.go:9: too long", false},
		{"a deadline in the code under test", "--- FAIL: FuzzX (1.00s)\n    x_test.go:3: dial: context deadline exceeded\nFAIL", false},
		{"a build failure", "# example.com/tiny/b\nb/b_test.go:3:1: syntax error", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := deadlineRace(strings.Split(tc.tail, "\n")); got != tc.want {
				t.Fatalf("deadlineRace = %v, want %v", got, tc.want)
			}
		})
	}
}
