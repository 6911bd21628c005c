package interval

import (
	"math"
	"testing"
	"time"
)

func TestFloorDiv(t *testing.T) {
	for _, c := range []struct{ a, b, want int64 }{
		{0, 60, 0}, {59, 60, 0}, {60, 60, 1}, {-1, 60, -1}, {-60, 60, -1}, {-61, 60, -2},
		{7, -2, -4}, {-7, -2, 3},
	} {
		if got := FloorDiv(c.a, c.b); got != c.want {
			t.Errorf("FloorDiv(%d, %d) = %d, want %d", c.a, c.b, got, c.want)
		}
	}
}

func TestPow(t *testing.T) {
	for _, n := range []int64{0, 1, 2, 8, 9, 61, 1000} {
		got, want := Pow(0.99, n), math.Pow(0.99, float64(n))
		if math.Abs(got-want) > 1e-15 {
			t.Errorf("Pow(0.99, %d) = %g, want %g", n, got, want)
		}
	}
}

func TestCheck(t *testing.T) {
	if errs := Check("rate", time.Minute, time.Minute); len(errs) != 0 {
		t.Errorf("a half-life of one interval: %v", errs)
	}
	errs := Check("rate", 1500*time.Microsecond, time.Millisecond)
	want := []string{
		"rate interval must be a whole number of milliseconds, at least 1ms, got 1.5ms",
		"rate half-life 1ms is shorter than the interval 1.5ms",
	}
	if len(errs) != len(want) {
		t.Fatalf("errors %v, want %q", errs, want)
	}
	for i := range want {
		if errs[i].Error() != want[i] {
			t.Errorf("error %d: %q, want %q", i, errs[i], want[i])
		}
	}
}
