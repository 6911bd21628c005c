package evaluate

import (
	"flag"
	"fmt"
	"io"

	"github.com/meshguard/meshguard/bench/results"
)

// ResultsFlags are an evaluation program's --write and --results flags: whether to write the
// program's section of the results file, and which file.
type ResultsFlags struct {
	section string
	write   *bool
	path    *string
}

// NewResultsFlags registers --write and --results on fs, for the section called section.
func NewResultsFlags(fs *flag.FlagSet, section string) *ResultsFlags {
	return &ResultsFlags{
		section: section,
		write:   fs.Bool("write", false, "write the "+section+" section of bench/RESULTS.md"),
		path:    fs.String("results", "", "results file (default: bench/RESULTS.md of the repository)"),
	}
}

// Publish prints body on stdout and, with --write, writes it as the section of the results
// file (--results, else ResultsPath) and says so on stderr.
func (r *ResultsFlags) Publish(stdout, stderr io.Writer, body string) error {
	fmt.Fprint(stdout, body)
	if !*r.write {
		return nil
	}
	path := *r.path
	if path == "" {
		var err error
		if path, err = ResultsPath(); err != nil {
			return err
		}
	}
	if err := results.WriteSection(path, r.section, body); err != nil {
		return err
	}
	fmt.Fprintln(stderr, "wrote the "+r.section+" section of", path)
	return nil
}
