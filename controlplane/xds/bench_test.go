package xds

import (
	"fmt"
	"testing"

	"github.com/meshguard/meshguard/extproc/nodeid"
	"github.com/meshguard/meshguard/flowmodel"
)

// baseline returns n destinations: IPs on a few ports and one host name each.
func baseline(n int) []flowmodel.DestinationRecord {
	out := make([]flowmodel.DestinationRecord, 0, 2*n)
	for i := range n {
		out = append(out,
			flowmodel.DestinationRecord{Destination: fmt.Sprintf("10.%d.%d.%d:%d", i>>16&255, i>>8&255, i&255, 443+i%4)},
			flowmodel.DestinationRecord{Destination: fmt.Sprintf("api%d.example.com:443", i)})
	}
	return out
}

func BenchmarkBuildSidecar(b *testing.B) {
	g, err := NewGenerator(Config{})
	if err != nil {
		b.Fatal(err)
	}
	for _, n := range []int{10, 1000} {
		rec := []flowmodel.ServiceRecord{{Name: "shop/checkout", Mode: flowmodel.ModeEnforce, Destinations: baseline(n)}}
		b.Run(fmt.Sprintf("dests=%d", 2*n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := g.Build(sidecar, rec); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkBuildGateway(b *testing.B) {
	g, err := NewGenerator(Config{})
	if err != nil {
		b.Fatal(err)
	}
	recs := make([]flowmodel.ServiceRecord, 200)
	for i := range recs {
		recs[i] = flowmodel.ServiceRecord{Name: fmt.Sprintf("ns%d/sa%d", i%10, i), Mode: flowmodel.ModeEnforce, Destinations: baseline(20)}
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := g.Build(nodeid.Identity{Role: nodeid.RoleGateway}, recs); err != nil {
			b.Fatal(err)
		}
	}
}
