package main

import (
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
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

// TestSecurityNamesRealTests: every test SECURITY.md cites as proof (`pkg.TestName`,
// `pkg.TestPrefix*`, `FuzzName`) is a test function of that package, so the map of attacks to
// tests cannot point at a test that was renamed or removed.
func TestSecurityNamesRealTests(t *testing.T) {
	doc, err := os.ReadFile("../../SECURITY.md")
	if err != nil {
		t.Fatal(err)
	}
	cited := regexp.MustCompile("`((?:[a-z][a-z0-9]*/)*[a-z][a-z0-9]*\\.)?((?:Test|Fuzz)[A-Za-z0-9_]*)(\\*?)`").FindAllStringSubmatch(string(doc), -1)
	if len(cited) < 50 {
		t.Fatalf("found %d cited tests in SECURITY.md; the pattern is broken", len(cited))
	}
	funcs := map[string][]string{} // test function name -> directories declaring it
	decl := regexp.MustCompile(`(?m)^func ((?:Test|Fuzz)[A-Za-z0-9_]*)\(`)
	err = filepath.WalkDir("../..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "node_modules") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range decl.FindAllStringSubmatch(string(b), -1) {
			funcs[m[1]] = append(funcs[m[1]], filepath.Base(filepath.Dir(path)))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cited {
		pkg := strings.TrimSuffix(c[1], ".")
		if i := strings.LastIndex(pkg, "/"); i >= 0 {
			pkg = pkg[i+1:]
		}
		found := false
		for name, dirs := range funcs {
			if name != c[2] && !(c[3] == "*" && strings.HasPrefix(name, c[2])) {
				continue
			}
			if pkg == "" || slices.Contains(dirs, pkg) {
				found = true
				break
			}
		}
		if !found {
			t.Errorf("SECURITY.md cites %s, which no test file of package %q declares", c[0], pkg)
		}
	}
}
