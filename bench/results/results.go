// Package results keeps bench/RESULTS.md: each evaluation or load program owns one section,
// delimited by HTML comments, and replaces it when it runs, leaving the others alone.
package results

import (
	"bytes"
	"fmt"
	"os"
	"strings"
)

// WriteSection replaces the section called name in the markdown file at path (creating the
// file or appending the section when missing). body should end with a newline.
func WriteSection(path, name, body string) error {
	if strings.ContainsAny(name, " \n>") || name == "" {
		return fmt.Errorf("results: bad section name %q", name)
	}
	begin := []byte("<!-- BEGIN " + name + " -->\n")
	end := []byte("<!-- END " + name + " -->\n")
	old, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	if len(old) == 0 {
		old = []byte("# meshguard benchmark and evaluation results\n\nEach section is written by the command it names; rerun that command to refresh it.\n")
	}
	section := append(append(append([]byte{}, begin...), body...), end...)
	var out []byte
	i := bytes.Index(old, begin)
	j := bytes.Index(old, end)
	switch {
	case i >= 0 && j > i:
		out = append(append(append(out, old[:i]...), section...), old[j+len(end):]...)
	case i >= 0 || j >= 0:
		return fmt.Errorf("results: %s has a broken %q section; fix its markers by hand", path, name)
	default:
		out = append(out, old...)
		if !bytes.HasSuffix(out, []byte("\n\n")) {
			out = append(out, '\n')
		}
		out = append(out, section...)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, out, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
