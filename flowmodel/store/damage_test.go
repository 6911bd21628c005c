package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/meshguard/meshguard/flowmodel"
)

// populate writes a store in dir with enough services to fill many pages and returns what
// it holds.
func populate(t *testing.T, dir string) map[string]flowmodel.ServiceRecord {
	t.Helper()
	st, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var recs []flowmodel.ServiceRecord
	for i := range 40 {
		r := flowmodel.ServiceRecord{Name: fmt.Sprintf("ns%d/svc", i), Mode: flowmodel.ModeEnforce, Requests: int64(i), FirstSeen: t0, LastSeen: t0}
		for j := range 20 {
			r.Destinations = append(r.Destinations, flowmodel.DestinationRecord{
				Destination: fmt.Sprintf("host-%d-%d.example.com:443", i, j), Count: int64(j + 1), FirstSeen: t0, LastSeen: t0,
			})
		}
		recs = append(recs, r)
	}
	if err := st.Save(recs); err != nil {
		t.Fatal(err)
	}
	if err := st.SaveAudited(nil, []flowmodel.AuditRecord{{At: t0, Who: "alice", Action: "mode", Service: "ns1/svc"}}); err != nil {
		t.Fatal(err)
	}
	got := loadAll(t, st)
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	return got
}

func loadAll(t *testing.T, st *Bolt) map[string]flowmodel.ServiceRecord {
	t.Helper()
	got := map[string]flowmodel.ServiceRecord{}
	if err := st.Load(func(r flowmodel.ServiceRecord) error { got[r.Name] = r; return nil }); err != nil {
		t.Fatal(err)
	}
	return got
}

// openAndRead opens dir's store and reads all of it, as serve does at start, and reports
// the first error. A panic fails the test (the deferred recover is the test's, not the
// store's).
func openAndRead(t *testing.T, dir string) (map[string]flowmodel.ServiceRecord, error) {
	t.Helper()
	defer func() {
		if r := recover(); r != nil {
			t.Fatalf("panic: %v", r)
		}
	}()
	st, err := Open(dir, Options{LockTimeout: time.Second})
	if err != nil {
		return nil, err
	}
	defer st.Close()
	got := map[string]flowmodel.ServiceRecord{}
	if err := st.Load(func(r flowmodel.ServiceRecord) error { got[r.Name] = r; return nil }); err != nil {
		return nil, err
	}
	return got, nil
}

// TestAdversaryDamagedStore covers issue 10 case 9: a truncated, emptied, bit-flipped or
// foreign meshguard.db is an error that names the file and the way back at open, never a
// panic, never SIGBUS later, never a silent new empty store.
func TestAdversaryDamagedStore(t *testing.T) {
	src := t.TempDir()
	want := populate(t, src)
	orig, err := os.ReadFile(filepath.Join(src, FileName))
	if err != nil {
		t.Fatal(err)
	}
	marker, err := os.ReadFile(filepath.Join(src, FileName+MarkerSuffix))
	if err != nil {
		t.Fatalf("no marker beside a new store: %v", err)
	}
	ps := int(mustHighWaterPageSize(t, orig))
	size := len(orig)
	if size < 8*ps {
		t.Fatalf("populated store of %d bytes: too small for the test", size)
	}

	type damage struct {
		name   string
		mangle func(data []byte) []byte // nil result: delete the file
	}
	var cases []damage
	for _, off := range []int{0, 100, ps - 1, ps + 50, 2 * ps, 3*ps + 7, size / 2, size - ps, size - 1} {
		cases = append(cases, damage{fmt.Sprintf("truncated at %d", off), func(d []byte) []byte { return d[:off] }})
	}
	cases = append(cases,
		damage{"missing with marker", func([]byte) []byte { return nil }},
		damage{"meta page 0 flipped", flip(ps, 16+40)},
		damage{"meta page 1 flipped", flip(ps, ps+16+40)},
	)
	for p := 2; p < size/ps; p++ {
		for _, field := range []int{8, 10, 12} { // flags, count, overflow of the page header
			off := p*ps + field
			cases = append(cases, damage{fmt.Sprintf("page %d header byte %d flipped", p, field), flip(ps, off)})
		}
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, FileName)
			if err := os.WriteFile(path+MarkerSuffix, marker, 0o600); err != nil {
				t.Fatal(err)
			}
			data := tc.mangle(append([]byte(nil), orig...))
			if data != nil {
				if err := os.WriteFile(path, data, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			got, err := openAndRead(t, dir)
			if err == nil {
				// A flip in a free page changes nothing that is read: then what is read
				// must be exactly what was written.
				if !reflect.DeepEqual(got, want) {
					t.Fatalf("no error, and the store reads back different (%d services, want %d)", len(got), len(want))
				}
				return
			}
			t.Logf("refused: %v", err)
			if !errors.Is(err, ErrDamaged) && !errors.Is(err, ErrNotStore) {
				t.Fatalf("err = %v, want ErrDamaged or ErrNotStore", err)
			}
			for _, must := range []string{path, "meshguard store restore"} {
				if !strings.Contains(err.Error(), must) {
					t.Errorf("error %q does not mention %q", err, must)
				}
			}
			if data == nil {
				if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("a missing store was created anew: %v", err)
				}
			}
		})
	}
}

func flip(ps, off int) func([]byte) []byte {
	return func(d []byte) []byte {
		d[off] ^= 0xff
		return d
	}
}

func mustHighWaterPageSize(t *testing.T, data []byte) uint32 {
	t.Helper()
	m, ok := readMeta(bytesReaderAt(data), 0)
	if !ok {
		t.Fatal("meta page 0 invalid in a fresh store")
	}
	return m.pageSize
}

// TestAdversaryEmptyStoreFile covers issue 10 case 9: a 0-byte meshguard.db, with or without
// its marker, is refused, never taken as a new empty store (every service back to learn).
func TestAdversaryEmptyStoreFile(t *testing.T) {
	for _, marked := range []bool{true, false} {
		t.Run(fmt.Sprintf("marker=%v", marked), func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, FileName)
			if marked {
				populate(t, dir)
			}
			if err := os.WriteFile(path, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := openAndRead(t, dir)
			if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), "empty (0 bytes)") {
				t.Fatalf("err = %v, want ErrDamaged: empty", err)
			}
			if fi, _ := os.Stat(path); fi.Size() != 0 {
				t.Fatal("the empty file was initialised")
			}
		})
	}
}

// TestFreshDirStartsEmpty: a data dir without store or marker is a new store, and gets its
// marker.
func TestFreshDirStartsEmpty(t *testing.T) {
	dir := t.TempDir()
	got, err := openAndRead(t, dir)
	if err != nil || len(got) != 0 {
		t.Fatalf("fresh dir: %v, %d services", err, len(got))
	}
	if _, err := os.Stat(filepath.Join(dir, FileName+MarkerSuffix)); err != nil {
		t.Fatalf("marker: %v", err)
	}
}

// TestAdversaryRandomFlipsNeverPanic covers issue 10 case 9: bytes flipped anywhere in the
// file (a fixed pseudo-random sample) never make opening and reading it panic or fault, and
// never read back as different data: a flip of bbolt's structure fails its check, a flip
// inside a value its checksum; only flips in free space go unnoticed, harmlessly.
func TestAdversaryRandomFlipsNeverPanic(t *testing.T) {
	src := t.TempDir()
	want := populate(t, src)
	orig, err := os.ReadFile(filepath.Join(src, FileName))
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	refused := 0
	const trials = 150
	for i := range trials {
		data := append([]byte(nil), orig...)
		for range 1 + rng.IntN(4) {
			data[rng.IntN(len(data))] ^= byte(1 + rng.IntN(255))
		}
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, FileName), data, 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := openAndRead(t, dir)
		if err != nil {
			refused++
			if !errors.Is(err, ErrDamaged) && !errors.Is(err, ErrNotStore) {
				t.Fatalf("trial %d: %v", i, err)
			}
		} else if !reflect.DeepEqual(got, want) {
			t.Fatalf("trial %d: no error, and the store reads back different data", i)
		}
	}
	t.Logf("%d of %d damaged files refused", refused, trials)
}

// TestAdversaryFlippedOffsetsAreRefused covers issue 10 case 9 where bbolt cannot protect
// itself: its consistency check (Tx.Check) follows element offsets in a goroutine of its own,
// where a fault is fatal, not a panic to recover. An offset flipped to point far beyond its
// page, in every element of every branch and leaf page reachable from the root, must be
// refused as damage by the bounds-checked walk before Tx.Check runs (this crashed the test
// process now and then before validatePages).
func TestAdversaryFlippedOffsetsAreRefused(t *testing.T) {
	src := t.TempDir()
	populate(t, src)
	orig, err := os.ReadFile(filepath.Join(src, FileName))
	if err != nil {
		t.Fatal(err)
	}
	m, ok := parseMeta(orig, 0)
	if !ok {
		t.Fatal("no meta page")
	}
	ps := int(m.pageSize)
	tried := 0
	for id := 2; (id+1)*ps <= len(orig); id++ {
		start := id * ps
		flags, count := binary.LittleEndian.Uint16(orig[start+8:]), int(binary.LittleEndian.Uint16(orig[start+10:]))
		if flags&(branchPageFlag|leafPageFlag) == 0 || count == 0 {
			continue
		}
		posAt := start + pageHeaderSize // a branch element's pos
		if flags&leafPageFlag != 0 {
			posAt += 4 // a leaf element's pos follows its flags
		}
		data := append([]byte(nil), orig...)
		binary.LittleEndian.PutUint32(data[posAt:], 0x7fff0000)
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, FileName), data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := validatePages(filepath.Join(dir, FileName)); err == nil {
			continue // a page no longer reachable (free): bbolt never reads it
		}
		tried++
		if _, err := openAndRead(t, dir); !errors.Is(err, ErrDamaged) {
			t.Fatalf("page %d with a flipped offset: %v, want ErrDamaged", id, err)
		}
	}
	if tried == 0 {
		t.Fatal("no reachable branch or leaf page found to damage")
	}
}
