package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"time"
)

// MarkerSuffix names the marker file written beside a store when it is created
// ("meshguard.db.marker"). While the marker exists, a missing or empty store file is an
// error, never a new empty store: baselines that were there must not vanish in silence.
const MarkerSuffix = ".marker"

// ErrDamaged is returned (wrapped) for a store file that was a meshguard store and is no
// longer whole: truncated, emptied, bit-flipped, or missing where its marker says it was.
var ErrDamaged = errors.New("store damaged")

// wayBack tells an operator how to recover from a damaged store at path.
func wayBack(path string) string {
	dir := filepath.Dir(path)
	return fmt.Sprintf("check it with `meshguard store check %s`; restore the latest good backup with "+
		"`meshguard store restore %s <backup>` (scheduled backups are in %s); or, to start over with empty "+
		"baselines (every service back to learn), move %s and %s away",
		path, path, filepath.Join(dir, BackupDir), path, path+MarkerSuffix)
}

func damaged(path, what string) error {
	return fmt.Errorf("open %s: %w: %s; %s", path, ErrDamaged, what, wayBack(path))
}

// precheck looks at path before bbolt maps it: an empty file, a file missing where the
// marker says a store was, and a file shorter than its own meta page says (truncated: bbolt
// would fault on the missing pages, later) are errors. It returns whether the file exists.
func precheck(path string) (exists bool, err error) {
	fi, err := os.Stat(path)
	_, markerErr := os.Stat(path + MarkerSuffix)
	marked := markerErr == nil
	switch {
	case errors.Is(err, os.ErrNotExist):
		if marked {
			return false, damaged(path, "the file is missing but its marker "+path+MarkerSuffix+" says a store was created here")
		}
		return false, nil
	case err != nil:
		return false, fmt.Errorf("open %s: %w", path, err)
	case !fi.Mode().IsRegular():
		return true, fmt.Errorf("open %s: %w: not a regular file", path, ErrNotStore)
	case fi.Size() == 0:
		return true, damaged(path, "the file is empty (0 bytes)")
	}
	f, err := os.Open(path)
	if err != nil {
		return true, fmt.Errorf("open %s: %w", path, err)
	}
	defer f.Close()
	need, ok, oneBad := highWater(f)
	if oneBad {
		return true, damaged(path, "one of its two meta pages is damaged (opening it would silently roll back to an older transaction)")
	}
	if ok && fi.Size() < need {
		return true, damaged(path, fmt.Sprintf("the file is truncated: %d bytes, its meta page says %d", fi.Size(), need))
	}
	return true, nil
}

// bbolt's meta page, as laid out by go.etcd.io/bbolt/internal/common: a 16-byte page header,
// then magic, version, page size, flags (4 bytes each), the root bucket (16), the freelist
// page id, the high-water page id, the transaction id and an FNV-64a checksum of what
// precedes it (8 each).
const (
	pageHeaderSize = 16
	metaMagic      = 0xED0CDAED
	metaVersion    = 2
	metaSumOffset  = 56
	metaSize       = 64
)

type meta struct {
	pageSize uint32
	pgid     uint64
	txid     uint64
	root     uint64 // the root bucket's page (set by parseMeta)
}

func readMeta(r io.ReaderAt, off int64) (meta, bool) {
	var buf [pageHeaderSize + metaSize]byte
	if _, err := r.ReadAt(buf[:], off); err != nil {
		return meta{}, false
	}
	m := buf[pageHeaderSize:]
	le := binary.LittleEndian
	if le.Uint32(m[0:]) != metaMagic || le.Uint32(m[4:]) != metaVersion {
		return meta{}, false
	}
	h := fnv.New64a()
	h.Write(m[:metaSumOffset])
	if h.Sum64() != le.Uint64(m[metaSumOffset:]) {
		return meta{}, false
	}
	return meta{pageSize: le.Uint32(m[8:]), pgid: le.Uint64(m[40:]), txid: le.Uint64(m[48:])}, true
}

// highWater returns the file size the newest valid meta page implies (its high-water page
// id times the page size), and false when no meta page is valid (bbolt says why). oneBad
// is set when exactly one of the two meta pages is invalid.
func highWater(r io.ReaderAt) (size int64, ok, oneBad bool) {
	m0, ok0 := readMeta(r, 0)
	ps := int64(os.Getpagesize())
	if ok0 && m0.pageSize >= 512 {
		ps = int64(m0.pageSize)
	}
	m1, ok1 := readMeta(r, ps)
	if !ok1 && !ok0 {
		// The second meta page sits at the page size in the first; try common sizes.
		for _, try := range []int64{4096, 8192, 16384, 65536} {
			if m1, ok1 = readMeta(r, try); ok1 {
				break
			}
		}
	}
	best, ok := m0, ok0
	if ok1 && (!ok0 || m1.txid > m0.txid) {
		best, ok = m1, true
	}
	if !ok || best.pageSize == 0 {
		return 0, false, false
	}
	return int64(best.pgid) * int64(best.pageSize), true, ok0 != ok1
}

// guard runs fn, turning a panic or a memory fault (a page of the mapped file that is not
// there) into an error naming path. bbolt panics on some kinds of corruption.
func guard(path string, fn func() error) (err error) {
	old := debug.SetPanicOnFault(true)
	defer debug.SetPanicOnFault(old)
	defer func() {
		if r := recover(); r != nil {
			err = damaged(path, fmt.Sprintf("reading it failed: %v", r))
		}
	}()
	return fn()
}

// writeMarker records that a store lives at path (see MarkerSuffix).
func writeMarker(path string) error {
	mp := path + MarkerSuffix
	if _, err := os.Stat(mp); err == nil {
		return nil
	}
	body := fmt.Sprintf("meshguard store %s created %s; while this file exists, a missing or empty %s is an error\n",
		filepath.Base(path), time.Now().UTC().Format(time.RFC3339), filepath.Base(path))
	if err := writeFileSync(mp, []byte(body), 0o600); err != nil {
		return fmt.Errorf("write marker: %w", err)
	}
	return nil
}

// writeFileSync writes data to path through a temporary file, synced, then renamed, and
// syncs the directory.
func writeFileSync(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
