// Package wire encodes the fixed-size states of meshguard's detectors (rate, seasonal,
// volume) for the store: little-endian fields behind a one-byte version, decoded with no
// float NaN, no count negative, flags 0 or 1 and the length exact, so that a damaged or
// foreign value is an error, never a state that poisons a detector.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// Writer appends fields to a byte slice.
type Writer struct{ B []byte }

// I64 appends v.
func (w *Writer) I64(v int64) { w.B = binary.LittleEndian.AppendUint64(w.B, uint64(v)) }

// F64 appends v.
func (w *Writer) F64(v float64) { w.B = binary.LittleEndian.AppendUint64(w.B, math.Float64bits(v)) }

// F32 appends v.
func (w *Writer) F32(v float32) { w.B = binary.LittleEndian.AppendUint32(w.B, math.Float32bits(v)) }

// U16 appends v.
func (w *Writer) U16(v uint16) { w.B = binary.LittleEndian.AppendUint16(w.B, v) }

// Bool appends v as one byte.
func (w *Writer) Bool(v bool) {
	var b byte
	if v {
		b = 1
	}
	w.B = append(w.B, b)
}

// Reader reads fields in the order a Writer wrote them; the first problem sticks in Err.
type Reader struct {
	b   []byte
	Err error
}

// NewReader checks b's version byte and returns a reader of the rest.
func NewReader(b []byte, version byte) *Reader {
	switch {
	case len(b) == 0:
		return &Reader{Err: errors.New("empty state")}
	case b[0] != version:
		return &Reader{Err: fmt.Errorf("state version %d, want %d", b[0], version)}
	}
	return &Reader{b: b[1:]}
}

func (r *Reader) take(n int) []byte {
	if r.Err != nil {
		return nil
	}
	if len(r.b) < n {
		r.Err = errors.New("state truncated")
		return nil
	}
	p := r.b[:n]
	r.b = r.b[n:]
	return p
}

// I64 reads an int64; it fails below min.
func (r *Reader) I64(min int64) int64 {
	p := r.take(8)
	if p == nil {
		return 0
	}
	v := int64(binary.LittleEndian.Uint64(p))
	if v < min {
		r.Err = fmt.Errorf("state field %d below %d", v, min)
		return 0
	}
	return v
}

// F64 reads a float64; it fails on NaN (infinities are the detectors' sentinels, such as a
// limit no count reaches).
func (r *Reader) F64() float64 {
	p := r.take(8)
	if p == nil {
		return 0
	}
	v := math.Float64frombits(binary.LittleEndian.Uint64(p))
	if math.IsNaN(v) {
		r.Err = errors.New("state field is NaN")
		return 0
	}
	return v
}

// F32 reads a float32; it fails on NaN.
func (r *Reader) F32() float32 {
	p := r.take(4)
	if p == nil {
		return 0
	}
	v := math.Float32frombits(binary.LittleEndian.Uint32(p))
	if v != v {
		r.Err = errors.New("state field is NaN")
		return 0
	}
	return v
}

// U16 reads a uint16.
func (r *Reader) U16() uint16 {
	p := r.take(2)
	if p == nil {
		return 0
	}
	return binary.LittleEndian.Uint16(p)
}

// Bool reads a byte that must be 0 or 1.
func (r *Reader) Bool() bool {
	p := r.take(1)
	if p == nil {
		return false
	}
	if p[0] > 1 {
		r.Err = fmt.Errorf("state flag %d is not 0 or 1", p[0])
	}
	return p[0] == 1
}

// Done reports the first problem, or trailing bytes.
func (r *Reader) Done() error {
	if r.Err == nil && len(r.b) != 0 {
		r.Err = fmt.Errorf("state has %d trailing bytes", len(r.b))
	}
	return r.Err
}

// AnyInt is the least value of an int64 field that may take any value.
const AnyInt = math.MinInt64
