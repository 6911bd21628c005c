package main

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestEvaluate(t *testing.T) {
	series := func(n int, f func(i int) Sample) []Sample {
		out := make([]Sample, n)
		for i := range out {
			out[i] = f(i)
		}
		return out
	}
	bounds := Bounds{Goroutines: 50, HeapBytes: 16 << 20, FDs: 8}
	for _, tc := range []struct {
		name     string
		samples  []Sample
		exceeded []string
	}{
		{"steady with noise", series(50, func(i int) Sample {
			return Sample{Goroutines: 30 + int64(i%7)*10, HeapInuse: 8<<20 + int64(i%3)*(20<<20), FDs: 17}
		}), nil},
		{"goroutine leak", series(50, func(i int) Sample {
			return Sample{Goroutines: 30 + int64(i)*3, HeapInuse: 8 << 20, FDs: 17}
		}), []string{"goroutines"}},
		{"heap and fd leak", series(50, func(i int) Sample {
			return Sample{Goroutines: 30, HeapInuse: 8<<20 + int64(i)<<20, FDs: 17 + int64(i)/4}
		}), []string{"heap in use", "open fds"}},
		{"one spike is not growth", series(50, func(i int) Sample {
			g := int64(30)
			if i == 49 {
				g = 500
			}
			return Sample{Goroutines: g, HeapInuse: 8 << 20, FDs: 17}
		}), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, g := range evaluate(tc.samples, bounds) {
				if g.Exceeded {
					got = append(got, g.Name)
				}
			}
			if strings.Join(got, ",") != strings.Join(tc.exceeded, ",") {
				t.Fatalf("exceeded %v, want %v", got, tc.exceeded)
			}
		})
	}
}

// TestSoakShort is the soak in small: the built binary under a steady load for a few
// seconds, sampled four times a second, must not grow and must stop cleanly.
func TestSoakShort(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary for 7s")
	}
	cfg, err := parseConfig([]string{"--duration", "5s", "--warmup", "2s", "--sample", "250ms", "--rate", "200",
		"--services", "10", "--dests", "5", "--max-error-share", "0.05", "--work-dir", t.TempDir()}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := Soak(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + report(res))
	if f := res.Failures(); len(f) > 0 {
		t.Fatalf("soak failed: %v", f)
	}
	if len(res.Measured) < 10 || res.Answered < 1000 || res.Blocked == 0 {
		t.Fatalf("not the soak meant: %d samples measured, %d answered, %d blocked", len(res.Measured), res.Answered, res.Blocked)
	}
}

func TestParseConfigReportsEveryProblem(t *testing.T) {
	_, err := parseConfig([]string{"--rate", "0", "--max-heap-growth", "lots", "--services", "0", "--new-dest-share", "2",
		"--duration", "2s", "--sample", "1s"}, io.Discard)
	if err == nil {
		t.Fatal("want errors")
	}
	for _, want := range []string{"--rate", "--max-heap-growth", "--services", "--new-dest-share", "fewer than 5 samples"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("no %q in %v", want, err)
		}
	}
}
