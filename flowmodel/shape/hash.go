package shape

import "math/bits"

// The shape key is a fixed function of the canonical shape, so that keys stay valid across
// processes and releases: they are persisted. The hash follows wyhash's 64×64→128-bit
// multiply-and-fold; it is fast and well mixed but not cryptographic (see Config.Seed).
const (
	k1 = 0xa0761d6478bd642f
	k2 = 0xe7037ed1a0b428db
	k3 = 0x8ebc6af09c88c6e3
)

func mix(a, b uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	return hi ^ lo
}

// hasher hashes a sequence of fields. The bytes of a field are read as little-endian 64-bit
// words, the last one padded with zeros, and each field ends with its length, so field
// boundaries are part of the hash. The result does not depend on how a field's bytes were
// split across calls.
type hasher struct {
	h    uint64
	w    uint64 // pending bytes of the current word, little-endian
	n    uint   // number of pending bytes, 0..7
	flen uint64 // bytes in the current field
}

func newHasher(seed uint64) hasher { return hasher{h: mix(seed^k1, k2)} }

func (x *hasher) word(w uint64) { x.h = mix(x.h^w^k2, k1) }

func (x *hasher) byte(c byte) {
	x.w |= uint64(c) << (8 * x.n)
	x.n++
	x.flen++
	if x.n == 8 {
		x.word(x.w)
		x.w, x.n = 0, 0
	}
}

func (x *hasher) str(s string) {
	x.flen += uint64(len(s))
	if x.n == 0 {
		for len(s) >= 8 {
			x.word(le64(s))
			s = s[8:]
		}
	} else {
		// Pending bytes: each new word is the pending bytes followed by the first bytes of
		// the next eight.
		sh := 8 * x.n
		for len(s) >= 8 {
			v := le64(s)
			x.word(x.w | v<<sh)
			x.w = v >> (64 - sh)
			s = s[8:]
		}
	}
	if len(s) == 0 {
		return
	}
	var v uint64
	for i := len(s) - 1; i >= 0; i-- {
		v = v<<8 | uint64(s[i])
	}
	x.w |= v << (8 * x.n) // bits beyond 64 are lost here and recovered below
	if x.n+uint(len(s)) < 8 {
		x.n += uint(len(s))
		return
	}
	x.word(x.w)
	used := 8 - x.n
	x.n = uint(len(s)) - used
	x.w = v >> (8 * used)
}

// le64 reads the first 8 bytes of s as a little-endian word; the compiler combines the loads.
func le64(s string) uint64 {
	_ = s[7]
	return uint64(s[0]) | uint64(s[1])<<8 | uint64(s[2])<<16 | uint64(s[3])<<24 |
		uint64(s[4])<<32 | uint64(s[5])<<40 | uint64(s[6])<<48 | uint64(s[7])<<56
}

// end closes the current field.
func (x *hasher) end() {
	if x.n != 0 {
		x.word(x.w)
		x.w, x.n = 0, 0
	}
	x.word(x.flen ^ k3)
	x.flen = 0
}

// sum returns the hash of the fields written so far. Call it after end.
func (x *hasher) sum() uint64 { return mix(x.h^k3, k1) }
