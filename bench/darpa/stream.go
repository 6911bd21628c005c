package main

import (
	"archive/zip"
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"time"

	bencheval "github.com/meshguard/meshguard/bench/evaluate"
)

// stream is the DARPA edge stream in memory: one entry per row, in file order.
type stream struct {
	src, dst []uint64 // FNV-1a hashes of the source and destination addresses
	tick     []int64  // minutes since the Unix epoch
	attack   []bool   // label other than "-"
	attacks  int
}

func (s *stream) len() int { return len(s.tick) }

// csvName is the one member of the zip that holds the stream.
const csvName = "darpa_original.csv"

// loadZip streams the CSV inside the zip at path without unpacking it to disk, reading at most
// limit rows (all when limit <= 0).
func loadZip(path string, limit int) (*stream, error) {
	zr, err := zip.OpenReader(path)
	if err != nil {
		return nil, fmt.Errorf("open DARPA data: %w", err)
	}
	defer zr.Close()
	for _, f := range zr.File {
		if filepath.Base(f.Name) != csvName {
			continue
		}
		rc, err := f.Open()
		if err != nil {
			return nil, fmt.Errorf("open %s in %s: %w", f.Name, path, err)
		}
		defer rc.Close()
		s, err := readStream(rc, limit)
		if err != nil {
			return nil, fmt.Errorf("%s in %s: %w", f.Name, path, err)
		}
		return s, nil
	}
	return nil, fmt.Errorf("%s holds no %s", path, csvName)
}

// readStream parses rows `src,dst,MM/DD/YYYY-HH:MM,label`.
func readStream(r io.Reader, limit int) (*stream, error) {
	br := bufio.NewReaderSize(r, 1<<20)
	s := &stream{}
	if limit > 0 {
		s.grow(limit)
	} else {
		s.grow(1 << 22)
	}
	for line := 1; limit <= 0 || s.len() < limit; line++ {
		b, err := br.ReadSlice('\n')
		if errors.Is(err, io.EOF) && len(b) == 0 {
			break
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		b = bytes.TrimRight(b, "\r\n")
		if len(b) == 0 {
			continue
		}
		if err := s.add(b); err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
	}
	if s.len() == 0 {
		return nil, errors.New("no rows")
	}
	return s, nil
}

func (s *stream) grow(n int) {
	s.src = make([]uint64, 0, n)
	s.dst = make([]uint64, 0, n)
	s.tick = make([]int64, 0, n)
	s.attack = make([]bool, 0, n)
}

func (s *stream) add(row []byte) error {
	var f [4][]byte
	rest := row
	for i := range 3 {
		j := bytes.IndexByte(rest, ',')
		if j < 0 {
			return fmt.Errorf("%q: want 4 comma-separated fields", row)
		}
		f[i], rest = rest[:j], rest[j+1:]
	}
	f[3] = rest
	if len(f[0]) == 0 || len(f[1]) == 0 || len(f[3]) == 0 {
		return fmt.Errorf("%q: empty field", row)
	}
	minute, err := parseMinute(f[2])
	if err != nil {
		return err
	}
	attack := string(f[3]) != "-"
	s.src = append(s.src, hashBytes(f[0]))
	s.dst = append(s.dst, hashBytes(f[1]))
	s.tick = append(s.tick, minute)
	s.attack = append(s.attack, attack)
	if attack {
		s.attacks++
	}
	return nil
}

// parseMinute reads `MM/DD/YYYY-HH:MM` (UTC) as minutes since the Unix epoch. Out-of-range
// days roll over as time.Date does: the file holds "07/32/1998", which is 1 August.
func parseMinute(b []byte) (int64, error) {
	// MM/DD/YYYY-HH:MM
	// 0123456789012345
	if len(b) != 16 || b[2] != '/' || b[5] != '/' || b[10] != '-' || b[13] != ':' {
		return 0, fmt.Errorf("time %q: want MM/DD/YYYY-HH:MM", b)
	}
	num := func(i, n int) (int, bool) {
		v := 0
		for _, c := range b[i : i+n] {
			if c < '0' || c > '9' {
				return 0, false
			}
			v = v*10 + int(c-'0')
		}
		return v, true
	}
	mo, ok1 := num(0, 2)
	d, ok2 := num(3, 2)
	y, ok3 := num(6, 4)
	h, ok4 := num(11, 2)
	mi, ok5 := num(14, 2)
	if !(ok1 && ok2 && ok3 && ok4 && ok5) || mo < 1 || mo > 12 || d < 1 || d > 32 || h > 23 || mi > 59 {
		return 0, fmt.Errorf("time %q: want MM/DD/YYYY-HH:MM", b)
	}
	return time.Date(y, time.Month(mo), d, h, mi, 0, 0, time.UTC).Unix() / 60, nil
}

// hashBytes is 64-bit FNV-1a, written out so that hashing a row allocates nothing.
func hashBytes(b []byte) uint64 {
	h := uint64(14695981039346656037)
	for _, c := range b {
		h ^= uint64(c)
		h *= 1099511628211
	}
	return h
}

// dataPath is where the DARPA zip is looked for when --data is not given: under the shared
// datasets ($MESHGUARD_DATASETS, else ../shared/datasets from the repository root).
func dataPath() (string, error) {
	base, err := bencheval.DatasetsRoot()
	if err != nil {
		return "", fmt.Errorf("no --data and no MESHGUARD_DATASETS: %w", err)
	}
	return filepath.Join(base, "darpa", "darpa_original.zip"), nil
}

// errNoData explains where the data was looked for and how to point elsewhere.
func errNoData(path string, err error) error {
	return fmt.Errorf("DARPA data not found at %s (expected ../shared/datasets/%s from the "+
		"repository root, as in CI; or pass --data PATH, or set MESHGUARD_DATASETS): %w",
		path, "darpa/darpa_original.zip", err)
}
