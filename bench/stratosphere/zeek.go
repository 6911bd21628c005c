package main

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// zeekLog is one Zeek ASCII log: its #fields header and its rows, values as written except
// that the unset ("-") and empty ("(empty)") markers read as "".
type zeekLog struct {
	path   string
	fields map[string]int
	rows   [][]string
	lines  []int // line number of each row
}

// readZeek parses a Zeek ASCII (TSV) log: "#separator", "#unset_field", "#empty_field",
// "#path" and "#fields" headers, then one row per line. A row whose column count differs
// from the header's is an error naming its line.
func readZeek(r io.Reader) (*zeekLog, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	l := &zeekLog{}
	sep, unset, empty := "\t", "-", "(empty)"
	var names []string
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if line == "" {
			continue
		}
		if strings.HasPrefix(line, "#") {
			switch key, val, _ := strings.Cut(line, headerSep(line, sep)); key {
			case "#separator":
				s, err := unescapeSeparator(val)
				if err != nil {
					return nil, fmt.Errorf("line %d: #separator: %w", n, err)
				}
				sep = s
			case "#unset_field":
				unset = val
			case "#empty_field":
				empty = val
			case "#path":
				l.path = val
			case "#fields":
				names = strings.Split(val, sep)
				l.fields = make(map[string]int, len(names))
				for i, f := range names {
					l.fields[f] = i
				}
			}
			continue
		}
		if names == nil {
			return nil, fmt.Errorf("line %d: row before the #fields header", n)
		}
		row := strings.Split(line, sep)
		if len(row) != len(names) {
			return nil, fmt.Errorf("line %d: %d columns, the #fields header names %d", n, len(row), len(names))
		}
		for i, v := range row {
			if v == unset || v == empty {
				row[i] = ""
			}
		}
		l.rows = append(l.rows, row)
		l.lines = append(l.lines, n)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if names == nil {
		return nil, fmt.Errorf("no #fields header")
	}
	return l, nil
}

// headerSep is the separator between a header's key and value: "#separator" is always
// followed by a space, other headers by the separator.
func headerSep(line, sep string) string {
	if strings.HasPrefix(line, "#separator ") {
		return " "
	}
	return sep
}

// unescapeSeparator decodes "\x09" style separators.
func unescapeSeparator(s string) (string, error) {
	if strings.HasPrefix(s, `\x`) && len(s) == 4 {
		b, err := strconv.ParseUint(s[2:], 16, 8)
		if err != nil {
			return "", err
		}
		return string(rune(b)), nil
	}
	if s == "" {
		return "", fmt.Errorf("empty separator")
	}
	return s, nil
}

// columns returns the index of each named column, or an error naming those missing.
func (l *zeekLog) columns(names ...string) ([]int, error) {
	idx := make([]int, len(names))
	var missing []string
	for i, n := range names {
		j, ok := l.fields[n]
		if !ok {
			missing = append(missing, n)
		}
		idx[i] = j
	}
	if missing != nil {
		return nil, fmt.Errorf("%s log lacks columns %s", l.path, strings.Join(missing, ", "))
	}
	return idx, nil
}

// parseZeekTime parses Zeek's "seconds.micros" timestamps exactly (no float rounding).
func parseZeekTime(s string) (time.Time, error) {
	secs, frac, _ := strings.Cut(s, ".")
	sec, err := strconv.ParseInt(secs, 10, 64)
	if err != nil || sec < 0 {
		return time.Time{}, fmt.Errorf("bad timestamp %q", s)
	}
	var nsec int64
	if frac != "" {
		if len(frac) > 9 {
			frac = frac[:9]
		}
		n, err := strconv.ParseInt(frac+strings.Repeat("0", 9-len(frac)), 10, 64)
		if err != nil {
			return time.Time{}, fmt.Errorf("bad timestamp %q", s)
		}
		nsec = n
	}
	return time.Unix(sec, nsec).UTC(), nil
}
