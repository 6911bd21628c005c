package main

import (
	"strings"
	"testing"
	"time"
)

// synthetic returns a phase result of n decisions over one second, all of latency lat.
func synthetic(name string, n uint64, lat time.Duration, serverCPU time.Duration) *PhaseResult {
	var h Histogram
	for range n {
		h.Record(lat)
	}
	s := h.Snapshot()
	return &PhaseResult{Name: name, Elapsed: time.Second, OK: n, Decision: s, Held: s, Stream: s,
		ServerCPU: serverCPU, ClientCPU: serverCPU, MachineCPU: 2 * serverCPU, CPUSpan: time.Second,
		Immediate: map[int]uint64{}, Failures: map[string]uint64{}}
}

func TestReportAgainstTheGoals(t *testing.T) {
	tests := []struct {
		name          string
		mgRate        uint64
		mgLatency     time.Duration
		want, wantNot []string
	}{
		{
			name: "both goals met", mgRate: 9500, mgLatency: 250 * time.Microsecond,
			want:    []string{"| 10000 | 9500 | ×0.950 (rounds: ×0.95, ×0.95) | ≥ ×0.9 | met |", "| +50µs | ≤ +100µs | met |"},
			wantNot: []string{"not met"},
		},
		{
			name: "throughput and latency short", mgRate: 8000, mgLatency: 400 * time.Microsecond,
			want: []string{"| 10000 | 8000 | ×0.800 (rounds: ×0.80, ×0.80) | ≥ ×0.9 | **not met** |", "| +200µs | ≤ +100µs | **not met** |"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := parseConfig(nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			r := &Report{Cfg: cfg, Command: "go run ./bench/load", Machine: machineInfo(), OpenRate: 5000}
			for round := 1; round <= 2; round++ {
				r.Saturation = append(r.Saturation,
					TargetResult{"null", round, synthetic("null-sat", 10000, 5*time.Millisecond, time.Second)},
					TargetResult{"meshguard", round, synthetic("meshguard-sat", tc.mgRate, 6*time.Millisecond, time.Second)})
				r.Open = append(r.Open,
					TargetResult{"null", round, synthetic("null-open", 5000, 200*time.Microsecond, 500*time.Millisecond)},
					TargetResult{"meshguard", round, synthetic("meshguard-open", 5000, tc.mgLatency, 600*time.Millisecond)})
			}
			md := r.Markdown()
			for _, w := range tc.want {
				if !strings.Contains(md, w) {
					t.Errorf("report lacks %q", w)
				}
			}
			for _, w := range tc.wantNot {
				if strings.Contains(md, w) {
					t.Errorf("report has %q", w)
				}
			}
			if !strings.Contains(md, "```\ngo run ./bench/load\n```") {
				t.Errorf("report lacks the command")
			}
			if t.Failed() {
				t.Log(md)
			}
		})
	}
}

func TestReportWithoutTheNullServer(t *testing.T) {
	cfg, _ := parseConfig([]string{"--targets", "meshguard", "--open-rate", "100"}, nil)
	r := &Report{Cfg: cfg, Saturation: []TargetResult{{"meshguard", 1, synthetic("meshguard-sat", 100, time.Millisecond, time.Second)}}}
	if md := r.Markdown(); !strings.Contains(md, "Ratios to the null server need both targets") {
		t.Fatalf("no caveat:\n%s", md)
	}
}

func TestReportFlagsANoisyRun(t *testing.T) {
	cfg, _ := parseConfig([]string{"--targets", "null"}, nil)
	quiet := synthetic("null-sat", 1000, time.Millisecond, 500*time.Millisecond)
	noisy := synthetic("null-sat", 1000, time.Millisecond, 500*time.Millisecond)
	noisy.MachineCPU = 1500 * time.Millisecond // half a core beyond server and client
	for _, tc := range []struct {
		name string
		p    *PhaseResult
		want bool
	}{{"quiet", quiet, false}, {"noisy", noisy, true}} {
		t.Run(tc.name, func(t *testing.T) {
			r := &Report{Cfg: cfg, Saturation: []TargetResult{{"null", 1, tc.p}}}
			if got := strings.Contains(r.Markdown(), "**Noisy run:**"); got != tc.want {
				t.Fatalf("noisy warning %v, want %v (other %.2f cores)", got, tc.want, otherCores(tc.p))
			}
		})
	}
}
