package interval

import (
	"math"
	"testing"
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
