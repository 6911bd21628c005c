package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

var update = flag.Bool("update", false, "rewrite the README's option table from the code")

const (
	readmePath  = "../../README.md"
	tableBegin  = "<!-- serve options: begin -->\n"
	tableEnd    = "<!-- serve options: end -->"
	tableHeader = "| option | type | default | what it sets |\n| --- | --- | --- | --- |\n"
)

// optionTable renders serve's options as the README shows them.
func optionTable() string {
	var f serveFlags
	fs := newServeFlagSet(&f)
	var b strings.Builder
	b.WriteString(tableHeader)
	for _, o := range f.options() {
		fl := fs.Lookup(o.name)
		def := fl.DefValue
		if fl.Value.Type() == "string" {
			def = fmt.Sprintf("%q", def)
		}
		fmt.Fprintf(&b, "| `%s` | %s | `%s` | %s |\n", o.name, typeName(fl), def, markdownEscaper.Replace(o.help))
	}
	return b.String()
}

func typeName(f *pflag.Flag) string {
	if t := f.Value.Type(); t != "float64" {
		return t
	}
	return "float"
}

// TestREADMEOptionTable keeps the README's table of serve's options in step with the option
// tables: every option, with its type, default and help, and nothing else. With -update it
// rewrites the table.
func TestREADMEOptionTable(t *testing.T) {
	b, err := os.ReadFile(readmePath)
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	i, j := strings.Index(readme, tableBegin), strings.Index(readme, tableEnd)
	if i < 0 || j < i {
		t.Fatalf("README.md has no %q … %q block", tableBegin, tableEnd)
	}
	have, want := readme[i+len(tableBegin):j], optionTable()
	if have == want {
		return
	}
	if *update {
		if err := os.WriteFile(readmePath, []byte(readme[:i+len(tableBegin)]+want+readme[j:]), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	// Name what differs, option by option.
	rows := func(s string) map[string]string {
		m := map[string]string{}
		for _, line := range strings.Split(s, "\n") {
			if name, ok := strings.CutPrefix(line, "| `"); ok {
				name, _, _ = strings.Cut(name, "`")
				m[name] = line
			}
		}
		return m
	}
	h, w := rows(have), rows(want)
	for name, line := range w {
		if h[name] == "" {
			t.Errorf("README lacks option %s", name)
		} else if h[name] != line {
			t.Errorf("README's row of %s:\n  %s\nwant\n  %s", name, h[name], line)
		}
	}
	for name := range h {
		if w[name] == "" {
			t.Errorf("README names option %s, which serve does not have", name)
		}
	}
	t.Errorf("README.md's option table is out of date: go test ./cmd/meshguard -run TestREADMEOptionTable -update")
}

// markdownEscaper keeps help text literal in a Markdown table cell.
var markdownEscaper = strings.NewReplacer("|", `\|`, "<", "&lt;", ">", "&gt;")
