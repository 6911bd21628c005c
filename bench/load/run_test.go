package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRunAgainstTheNullServerProcess runs the program as the lead would, on a small scale:
// it builds the null server, starts it as a child process, measures it and writes the
// results section.
func TestRunAgainstTheNullServerProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts the null server binary")
	}
	dir := t.TempDir()
	resultsFile := filepath.Join(dir, "RESULTS.md")
	if err := os.WriteFile(resultsFile, []byte("# results\n\n<!-- BEGIN other -->\nkept\n<!-- END other -->\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	args := []string{"--targets", "null", "--duration", "300ms", "--warmup", "100ms", "--rounds", "1",
		"--services", "10", "--dests", "3", "--concurrency", "8", "--conns", "2", "--transport", "unix",
		"--timeout", "10s", "--work-dir", filepath.Join(dir, "work"), "--write", "--results", resultsFile}
	if err := run(context.Background(), args, &stdout, &stderr); err != nil {
		t.Fatalf("run: %v\nstderr:\n%s", err, stderr.String())
	}
	out := stdout.String()
	for _, want := range []string{"| null-sat-1 |", "| null-open-1 |", "go run ./bench/load --targets null", "Server memory (RSS): null"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	b, err := os.ReadFile(resultsFile)
	if err != nil {
		t.Fatal(err)
	}
	got := string(b)
	if !strings.Contains(got, "<!-- BEGIN load -->\n## Load:") || !strings.Contains(got, "<!-- BEGIN other -->\nkept") {
		t.Errorf("results file:\n%s", got)
	}
	if strings.Contains(out, "failures | \n") || strings.Contains(out, "message_timeout") {
		t.Errorf("failures against the null server:\n%s", out)
	}
	if t.Failed() {
		t.Logf("stdout:\n%s\nstderr:\n%s", out, stderr.String())
	}
}
