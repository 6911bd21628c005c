package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
)

// Configuration comes in layers, each overriding the one before: the defaults of the option
// tables, a YAML file (--config, else $MESHGUARD_CONFIG), the environment (MESHGUARD_<NAME>)
// and the command line. The layering is a few functions over pflag rather than a library
// such as viper: pflag already knows each option's name, type, default and help, and
// setting a flag from a string is the one operation every layer needs.

const (
	configFlag = "config"
	envPrefix  = "MESHGUARD_"
)

// source says where an option's value came from.
type source struct {
	layer string // "default", "file", "env" or "flag"
	where string // file:line or the variable, for file and env
}

func (s source) String() string {
	if s.where == "" {
		return s.layer
	}
	return s.layer + " " + s.where
}

// envName is the environment variable of an option: MESHGUARD_ and its name in upper case,
// "-" as "_".
func envName(option string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(option, "-", "_"))
}

// fileValue is an option's value in the YAML file and its line.
type fileValue struct {
	value string
	line  int
}

// readConfigFile reads a flat YAML map of option names to values. A key that names no
// option, a repeated key and a value that is not a scalar (or a list of scalars, for the
// comma-separated options) are errors naming file:line; all are reported.
func readConfigFile(path string, known map[string]bool) (map[string]fileValue, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--config: %w", err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	values := map[string]fileValue{}
	if doc.Kind == 0 || len(doc.Content) == 0 { // empty file
		return values, nil
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("%s:%d: want a map of option names to values, as listen: 127.0.0.1:9001", path, root.Line)
	}
	var errs []error
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		at := fmt.Sprintf("%s:%d", path, k.Line)
		name := k.Value
		switch {
		case k.Kind != yaml.ScalarNode:
			errs = append(errs, fmt.Errorf("%s: a key must be an option name", at))
			continue
		case name == configFlag:
			errs = append(errs, fmt.Errorf("%s: %s: a configuration file cannot name another", at, name))
			continue
		case !known[name]:
			errs = append(errs, fmt.Errorf("%s: unknown option %q", at, name))
			continue
		}
		if prev, ok := values[name]; ok {
			errs = append(errs, fmt.Errorf("%s: %s is already set on line %d", at, name, prev.line))
			continue
		}
		val, err := scalarText(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %s: %w", at, name, err))
			continue
		}
		values[name] = fileValue{value: val, line: k.Line}
	}
	return values, errors.Join(errs...)
}

// scalarText is the text of a scalar node, or of a list of scalars joined by commas.
func scalarText(n *yaml.Node) (string, error) {
	switch n.Kind {
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			return "", errors.New("no value (write \"\" for an empty string)")
		}
		return n.Value, nil
	case yaml.SequenceNode:
		parts := make([]string, 0, len(n.Content))
		for _, e := range n.Content {
			if e.Kind != yaml.ScalarNode {
				return "", errors.New("a list may hold only plain values")
			}
			parts = append(parts, e.Value)
		}
		return strings.Join(parts, ","), nil
	case yaml.AliasNode:
		return scalarText(n.Alias)
	default:
		return "", errors.New("want a plain value, not a map")
	}
}

// layered is a resolved configuration: every option of opts set in fs, and where its value
// came from.
type layered struct {
	opts    []option
	fs      *pflag.FlagSet
	sources map[string]source
}

// applyLayers sets every option of opts that the command line did not set (fs is already
// parsed) from the environment, else from the configuration file, else leaves its default,
// and records the source of each. lookupEnv is os.LookupEnv outside tests. Every bad value
// is reported, naming the option and its source.
func applyLayers(fs *pflag.FlagSet, opts []option, configFile string, lookupEnv func(string) (string, bool)) (*layered, error) {
	l := &layered{opts: opts, fs: fs, sources: map[string]source{}}
	known := map[string]bool{}
	for _, o := range opts {
		known[o.name] = true
	}
	var errs []error
	var file map[string]fileValue
	if configFile == "" {
		configFile, _ = lookupEnv(envPrefix + "CONFIG")
	}
	if configFile != "" {
		var err error
		if file, err = readConfigFile(configFile, known); err != nil {
			errs = append(errs, err)
		}
	}
	for _, o := range opts {
		f := fs.Lookup(o.name)
		if f.Changed {
			l.sources[o.name] = source{layer: "flag"}
			continue
		}
		var (
			val string
			src source
		)
		if v, ok := lookupEnv(envName(o.name)); ok {
			val, src = v, source{layer: "env", where: envName(o.name)}
		} else if v, ok := file[o.name]; ok {
			val, src = v.value, source{layer: "file", where: fmt.Sprintf("%s:%d", configFile, v.line)}
		} else {
			l.sources[o.name] = source{layer: "default"}
			continue
		}
		prev := f.Value.String()
		if err := f.Value.Set(val); err != nil {
			// pflag's numbers store what they parsed (0) before reporting the error: put the
			// previous value back, so that the checks do not report the option a second time.
			_ = f.Value.Set(prev)
			errs = append(errs, fmt.Errorf("%s: %s %q: %v", src.where, o.name, val, badValue(f, err)))
			continue
		}
		l.sources[o.name] = src
	}
	return l, errors.Join(errs...)
}

// annotate adds to each line of a check's error the source of the option it names (as
// --name) when that is the file or the environment: "--lameduck must not be negative (file
// meshguard.yaml:4)". Lines that name no such option stay as they are.
func (l *layered) annotate(err error) error {
	if err == nil {
		return nil
	}
	lines := strings.Split(err.Error(), "\n")
	changed := false
	for i, line := range lines {
		best := ""
		for _, o := range l.opts {
			if len(o.name) > len(best) && mentions(line, "--"+o.name) {
				best = o.name
			}
		}
		if s := l.sources[best]; best != "" && (s.layer == "file" || s.layer == "env") {
			lines[i] = line + " (" + s.String() + ")"
			changed = true
		}
	}
	if !changed {
		return err
	}
	return errors.New(strings.Join(lines, "\n"))
}

// mentions reports whether line names flag as a whole word ("--listen" is not in
// "--listen-x").
func mentions(line, flag string) bool {
	for rest := line; ; {
		i := strings.Index(rest, flag)
		if i < 0 {
			return false
		}
		rest = rest[i+len(flag):]
		if rest == "" || !(rest[0] == '-' || rest[0] >= 'a' && rest[0] <= 'z') {
			return true
		}
	}
}

// badValue says what an option wanted, in words a reader of the file understands.
func badValue(f *pflag.Flag, err error) string {
	switch f.Value.Type() {
	case "bool":
		return "want true or false"
	case "int", "int64":
		return "want an integer"
	case "float64":
		return "want a number"
	case "duration":
		return "want a duration, as 1.5s, 2m or 24h"
	}
	return err.Error()
}

// print writes the configuration as a YAML file that --config reads back, each line with
// a comment saying where its value came from.
func (l *layered) print(w io.Writer) error {
	type row struct{ kv, src string }
	rows := make([]row, 0, len(l.opts))
	width := 0
	for _, o := range l.opts {
		f := l.fs.Lookup(o.name)
		r := row{kv: o.name + ": " + yamlValue(f), src: l.sources[o.name].String()}
		width = max(width, len(r.kv))
		rows = append(rows, r)
	}
	var b bytes.Buffer
	b.WriteString("# meshguard serve: the effective configuration; later sources win:\n")
	b.WriteString("# default < file (--config) < env (MESHGUARD_*) < flag\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "%-*s  # %s\n", width, r.kv, r.src)
	}
	_, err := w.Write(b.Bytes())
	return err
}

// yamlValue renders a flag's value for YAML: booleans and numbers plain, the rest quoted.
func yamlValue(f *pflag.Flag) string {
	switch f.Value.Type() {
	case "bool", "int", "int64", "float64":
		return f.Value.String()
	}
	q, _ := json.Marshal(f.Value.String()) // a JSON string is a YAML double-quoted scalar
	return string(q)
}
