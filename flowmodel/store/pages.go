package store

import (
	"encoding/binary"
	"fmt"
	"os"
)

// bbolt's page format, as far as validatePages reads it.
const (
	branchPageFlag = 0x01
	leafPageFlag   = 0x02
	bucketLeafFlag = 0x01 // a leaf element whose value is a bucket
	elementSize    = 16   // branch and leaf element headers are both 16 bytes
	bucketHeader   = 16   // a bucket value: root page id, sequence; an inline page follows
	maxTreeDepth   = 64
)

// validatePages reads the store file with plain, bounds-checked reads (not bbolt's memory
// map) and checks every page reachable from the newest valid meta page's root bucket: the
// page and its overflow lie within the file and below the high-water mark, and every element
// of a branch or leaf page (and of an inline bucket) lies within its page.
//
// bbolt's own consistency check (Tx.Check) follows element offsets without such checks, in a
// goroutine of its own, where a fault can be neither turned into a panic nor recovered: a
// flipped offset in a page would crash the process. Running this first means Tx.Check only
// ever sees pages whose offsets are sound.
func validatePages(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	m0, ok0 := parseMeta(data, 0)
	ps := 0
	if ok0 {
		ps = int(m0.pageSize)
	}
	var m1 meta
	ok1 := false
	if ps > 0 {
		m1, ok1 = parseMeta(data, ps)
	}
	m := m0
	if ok1 && (!ok0 || m1.txid > m0.txid) {
		m = m1
	}
	if !ok0 && !ok1 {
		return nil // no valid meta page: bbolt refuses the file itself
	}
	v := pageWalker{data: data, pageSize: int(m.pageSize), highWater: m.pgid, seen: map[uint64]bool{}}
	return v.page(m.root, 0)
}

func parseMeta(data []byte, off int) (meta, bool) {
	if off < 0 || off+pageHeaderSize+metaSize > len(data) {
		return meta{}, false
	}
	m, ok := readMeta(bytesReaderAt(data), int64(off))
	if ok {
		m.root = binary.LittleEndian.Uint64(data[off+pageHeaderSize+16:])
	}
	return m, ok && m.pageSize >= 512
}

// bytesReaderAt reads a byte slice as an io.ReaderAt.
type bytesReaderAt []byte

func (b bytesReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(len(b)) {
		return 0, fmt.Errorf("read %d bytes at %d of %d", len(p), off, len(b))
	}
	return copy(p, b[off:]), nil
}

type pageWalker struct {
	data      []byte
	pageSize  int
	highWater uint64
	seen      map[uint64]bool
}

// page checks the page id and what it reaches.
func (w *pageWalker) page(id uint64, depth int) error {
	if depth > maxTreeDepth {
		return fmt.Errorf("page %d: deeper than %d levels", id, maxTreeDepth)
	}
	if id < 2 || id >= w.highWater {
		return fmt.Errorf("page %d: outside the file's pages 2..%d", id, w.highWater)
	}
	if w.seen[id] {
		return fmt.Errorf("page %d: reached twice", id)
	}
	w.seen[id] = true
	start := int(id) * w.pageSize
	if start+pageHeaderSize > len(w.data) || start < 0 {
		return fmt.Errorf("page %d: beyond the end of the file", id)
	}
	overflow := uint64(binary.LittleEndian.Uint32(w.data[start+12:]))
	if id+overflow >= w.highWater {
		return fmt.Errorf("page %d: %d overflow pages run past the high-water mark %d", id, overflow, w.highWater)
	}
	end := start + int(overflow+1)*w.pageSize
	if end > len(w.data) || end < start {
		return fmt.Errorf("page %d: its %d overflow pages run past the end of the file", id, overflow)
	}
	return w.elements(fmt.Sprintf("page %d", id), w.data[start:end], depth)
}

// elements checks the elements of the page p (a page, or an inline bucket's page) and the
// pages and buckets they lead to.
func (w *pageWalker) elements(where string, p []byte, depth int) error {
	if len(p) < pageHeaderSize {
		return fmt.Errorf("%s: %d bytes, shorter than a page header", where, len(p))
	}
	le := binary.LittleEndian
	flags, count := le.Uint16(p[8:]), int(le.Uint16(p[10:]))
	if pageHeaderSize+count*elementSize > len(p) {
		return fmt.Errorf("%s: %d elements do not fit in %d bytes", where, count, len(p))
	}
	for i := range count {
		e := pageHeaderSize + i*elementSize
		switch {
		case flags&branchPageFlag != 0:
			pos, ksize := int(le.Uint32(p[e:])), int(le.Uint32(p[e+4:]))
			if e+pos+ksize > len(p) || pos < 0 || ksize < 0 {
				return fmt.Errorf("%s: branch element %d runs past its page", where, i)
			}
			if err := w.page(le.Uint64(p[e+8:]), depth+1); err != nil {
				return err
			}
		case flags&leafPageFlag != 0:
			eflags := le.Uint32(p[e:])
			pos, ksize, vsize := int(le.Uint32(p[e+4:])), int(le.Uint32(p[e+8:])), int(le.Uint32(p[e+12:]))
			vstart := e + pos + ksize
			if pos < 0 || ksize < 0 || vsize < 0 || vstart+vsize > len(p) || vstart < e {
				return fmt.Errorf("%s: leaf element %d runs past its page", where, i)
			}
			if eflags&bucketLeafFlag == 0 {
				continue
			}
			v := p[vstart : vstart+vsize]
			if len(v) < bucketHeader {
				return fmt.Errorf("%s: bucket element %d: %d bytes, shorter than a bucket header", where, i, len(v))
			}
			if root := le.Uint64(v); root != 0 {
				if err := w.page(root, depth+1); err != nil {
					return err
				}
			} else if err := w.elements(fmt.Sprintf("%s: inline bucket %d", where, i), v[bucketHeader:], depth+1); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%s: neither a branch nor a leaf page (flags %#x)", where, flags)
		}
	}
	return nil
}
