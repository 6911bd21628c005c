package episode

import (
	"testing"
	"time"
)

// TestLadder: scores over a day, counted at three levels with a quiet gap of an hour.
func TestLadder(t *testing.T) {
	l, err := NewLadder([]float64{0.5, 0.7, 0.9}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []struct {
		minute int
		score  float64
	}{
		{0, 0.6}, {30, 0.95}, {60, 0.6}, // one episode at each level
		{100, 0.95},             // 0.5 extends; 0.7 and 0.9: 70 minutes after their last: new ones
		{300, 0.4},              // below every level
		{400, 0.75}, {410, 0.5}, // new at 0.5 and 0.7
	} {
		l.Add(at(s.minute), s.score)
	}
	for i, want := range []int{2, 3, 2} { // not monotone: fewer alerts leave wider gaps
		if got := l.Episodes(i); got != want {
			t.Errorf("level %d: %d episodes, want %d", i, got, want)
		}
	}
	if v, ok := l.Lowest(2); !ok || v != 0.5 {
		t.Errorf("Lowest(2) = %v %v, want 0.5", v, ok)
	}
	if _, ok := l.Lowest(1); ok {
		t.Error("Lowest(1) found a level")
	}
}

func TestLadderConfig(t *testing.T) {
	for name, tc := range map[string]struct {
		levels []float64
		gap    time.Duration
	}{
		"no levels":     {nil, time.Hour},
		"not ascending": {[]float64{0.5, 0.5}, time.Hour},
		"no gap":        {[]float64{0.5}, 0},
	} {
		if _, err := NewLadder(tc.levels, tc.gap); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestLadderAddDoesNotAllocate(t *testing.T) {
	l, _ := NewLadder([]float64{0.5, 0.6, 0.7, 0.8, 0.9}, time.Hour)
	now := t0
	if n := testing.AllocsPerRun(1000, func() {
		now = now.Add(time.Minute)
		l.Add(now, 0.85)
	}); n != 0 {
		t.Errorf("Add allocates %g times", n)
	}
}
