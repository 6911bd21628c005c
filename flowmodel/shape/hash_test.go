package shape

import (
	"math/rand/v2"
	"testing"
)

// TestHasherSplits checks that a field hashes the same however its bytes are split across
// str and byte calls, against a reference that feeds one byte at a time.
func TestHasherSplits(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for n := range 40 {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		s := string(b)
		ref := newHasher(9)
		for i := 0; i < len(s); i++ {
			ref.byte(s[i])
		}
		ref.end()
		for trial := range 50 {
			x := newHasher(9)
			for rest := s; rest != ""; {
				k := rng.IntN(len(rest) + 1)
				if trial%3 == 0 && k > 0 {
					x.byte(rest[0])
					k = 1
				} else {
					x.str(rest[:k])
				}
				rest = rest[k:]
			}
			x.end()
			if x.sum() != ref.sum() {
				t.Fatalf("length %d, trial %d: split hash %x, byte-wise hash %x", n, trial, x.sum(), ref.sum())
			}
		}
	}
	// Field boundaries count: "ab"+"c" differs from "a"+"bc", and a trailing zero byte
	// differs from none.
	h := func(fields ...string) uint64 {
		x := newHasher(0)
		for _, f := range fields {
			x.str(f)
			x.end()
		}
		return x.sum()
	}
	if h("ab", "c") == h("a", "bc") || h("a") == h("a\x00") || h("", "a") == h("a", "") {
		t.Error("field boundaries are not part of the hash")
	}
}
