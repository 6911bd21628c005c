package burst

import (
	"math/rand/v2"
	"testing"
)

// benchEdges is a fixed stream of 4096 edges over 200 services and 2000 destinations, a few
// of them hot, as a mesh sees.
func benchEdges() [][2]uint64 {
	rng := rand.New(rand.NewPCG(42, 42))
	zs := rand.NewZipf(rng, 1.2, 1, 1999)
	out := make([][2]uint64, 4096)
	for i := range out {
		out[i] = [2]uint64{rng.Uint64N(200) * 0x9e3779b97f4a7c15, zs.Uint64() * 0xc2b2ae3d27d4eb4f}
	}
	return out
}

// BenchmarkObserve measures one edge. Compare with BenchmarkExactCount in the same run: an
// exact per-edge counter in a Go map, the cheapest thing that remembers edges at all.
func BenchmarkObserve(b *testing.B) {
	edges := benchEdges()
	for _, bc := range []struct {
		name        string
		cfg         Config
		edgesPerTck int
	}{
		{name: "2x1024/1000-per-tick", cfg: Config{}, edgesPerTck: 1000},
		{name: "2x1024/1-per-tick", cfg: Config{}, edgesPerTck: 1},
		{name: "4x65536/1000-per-tick", cfg: Config{Rows: 4, Buckets: 65536}, edgesPerTck: 1000},
	} {
		b.Run(bc.name, func(b *testing.B) {
			d := mustNew(b, bc.cfg)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				e := edges[i&4095]
				d.Observe(e[0], e[1], int64(i/bc.edgesPerTck))
				i++
			}
			b.ReportMetric(float64(d.Config().Bytes()), "bytes")
		})
	}
}

func BenchmarkExactCount(b *testing.B) {
	edges := benchEdges()
	counts := make(map[[2]uint64]uint32)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		counts[edges[i&4095]]++
		i++
	}
	if len(counts) == 0 {
		b.Fatal("no edges counted")
	}
}
