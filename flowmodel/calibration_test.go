package flowmodel

import (
	"testing"
	"time"
)

// TestAlertBudgetCountsEpisodes: a learning period of three days with one storm of a hundred
// high scores spends one episode of a budget of one a day, so the threshold stays at the
// alarm level; five storms are more than the budget, and the threshold rises above them.
func TestAlertBudgetCountsEpisodes(t *testing.T) {
	m := mustModel(t, Config{})
	for _, c := range []struct {
		name   string
		storms int
		want   float64
	}{
		{"one storm", 1, alarmLevel},
		{"five storms", 5, alarmLevel + 17*calBinWidth},
	} {
		t.Run(c.name, func(t *testing.T) {
			var cal calibration
			m.startLadder(&cal)
			for i := range 3 * 24 * 60 {
				cal.add(0.1, t0.Add(time.Duration(i)*time.Minute))
			}
			for s := range c.storms {
				at := t0.Add(time.Duration(s)*12*time.Hour + 6*time.Hour)
				for i := range 100 {
					cal.add(0.9, at.Add(time.Duration(i)*time.Second))
				}
			}
			cal.finish(1, t0.Add(72*time.Hour))
			if diff := cal.threshold - c.want; diff > 1e-9 || diff < -1e-9 {
				t.Fatalf("threshold %.4f, want %.4f", cal.threshold, c.want)
			}
			if cal.ladder != nil {
				t.Fatal("the ladder outlived learning")
			}
		})
	}
}
