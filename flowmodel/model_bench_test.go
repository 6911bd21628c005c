package flowmodel

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"time"
)

// benchModel loads n services with 100 destinations each, in enforce mode. The
// benchmarks repeat one flow at one instant, which the rate and burst detectors rightly
// call a flood; so the services' alert thresholds are set above any score: every detector
// still runs on every decision, none raises an alert.
func benchModel(b testing.TB, n int) *Model {
	b.Helper()
	m := mustModel(b, Config{})
	f := Flow{Time: t0, Method: "POST", Path: "/v1/charges/12345?expand=customer", ContentType: "application/json",
		HeaderKeys:   []string{"accept", "authorization", "content-type", "content-length", "user-agent", "x-request-id", "traceparent", "x-envoy-attempt-count", "x-forwarded-proto", "accept-encoding"},
		RequestBytes: 1234}
	for s := range n {
		f.Service = fmt.Sprintf("ns%d/svc%d", s%50, s)
		for d := range 100 {
			f.Destination = Destination{IP: netip.AddrFrom4([4]byte{10, byte(d), byte(s >> 8), byte(s)}), Port: 443, Host: fmt.Sprintf("api%d.example.com", d)}
			m.Decide(&f)
		}
		setMode(b, m, f.Service, ModeEnforce)
	}
	for _, s := range m.all() {
		s.calib.threshold = 1.01
	}
	m.TakeChanges()
	return m
}

func BenchmarkDecide(b *testing.B) {
	for _, n := range []int{1, 10_000} {
		m := benchModel(b, n)
		svc := fmt.Sprintf("ns%d/svc%d", (n-1)%50, n-1)
		known := Flow{Time: t0.Add(time.Hour), Service: svc, Method: "POST", Path: "/v1/charges/98765?expand=customer",
			ContentType: "application/json", RequestBytes: 1100,
			HeaderKeys:  []string{"accept", "authorization", "content-type", "content-length", "user-agent", "x-request-id", "traceparent", "x-envoy-attempt-count", "x-forwarded-proto", "accept-encoding"},
			Destination: Destination{IP: netip.AddrFrom4([4]byte{10, 7, byte((n - 1) >> 8), byte(n - 1)}), Port: 443, Host: "api7.example.com"}}
		b.Run(fmt.Sprintf("services=%d/known", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if v := m.Decide(&known); v.Action != Allow {
					b.Fatal(v)
				}
			}
		})
		unknown := known
		unknown.Destination = Destination{IP: netip.AddrFrom4([4]byte{198, 51, 100, 1}), Port: 443}
		b.Run(fmt.Sprintf("services=%d/new", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if v := m.Decide(&unknown); v.Action != Block {
					b.Fatal(v)
				}
			}
		})
	}
}

// BenchmarkMemory reports the heap a baseline takes: per service with 100 destinations (each
// with its detector state and one shape), and per destination.
func BenchmarkMemory(b *testing.B) {
	const services, dests = 2000, 100
	for b.Loop() {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		m := benchModel(b, services)
		runtime.GC()
		runtime.ReadMemStats(&after)
		perService := float64(after.HeapAlloc-before.HeapAlloc) / services
		b.ReportMetric(perService, "B/service")
		b.ReportMetric(perService/dests, "B/destination")
		runtime.KeepAlive(m)
	}
}

// BenchmarkMemoryServices reports the heap 100,000 services take (MaxServices' default), each
// having learned dests destinations (host and IP, one shape each): what a shared meshguard
// (gateway, DaemonSet) holds at the cap, against a sidecar's 256 MiB limit.
func BenchmarkMemoryServices(b *testing.B) {
	const services = DefaultMaxServices
	for _, dests := range []int{0, 1} {
		b.Run(fmt.Sprintf("dests=%d", dests), func(b *testing.B) {
			for b.Loop() {
				runtime.GC()
				var before, after runtime.MemStats
				runtime.ReadMemStats(&before)
				m := mustModel(b, Config{})
				f := Flow{Time: t0, Method: "GET", Path: "/v1/items/42", HeaderKeys: []string{"accept", "authorization"}, RequestBytes: -1}
				for s := range services {
					f.Service = fmt.Sprintf("ns%d/svc%d", s%50, s)
					if dests == 0 {
						if err := m.SetMode(f.Service, ModeChange{Mode: ModeLearn}); err != nil {
							b.Fatal(err)
						}
					}
					for d := range dests {
						f.Destination = Destination{IP: netip.AddrFrom4([4]byte{10, byte(d), byte(s >> 8), byte(s)}), Port: 443, Host: fmt.Sprintf("api%d.example.com", d)}
						m.Decide(&f)
					}
				}
				m.TakeChanges()
				runtime.GC()
				runtime.ReadMemStats(&after)
				total := float64(after.HeapAlloc - before.HeapAlloc)
				b.ReportMetric(total/services, "B/service")
				b.ReportMetric(total/(1<<20), "MiB/100k-services")
				runtime.KeepAlive(m)
			}
		})
	}
}
