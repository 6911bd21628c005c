package episode

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// Ladder counts, for a fixed set of score levels, the episodes that alerting at each level
// would have made on one stream of scores: what calibrating an alert threshold to a budget
// of episodes per day needs (a service's learning period, scored as if it were judged).
// Scores at or above a level within the quiet gap of the previous such score extend its
// episode. Add does not allocate. A Ladder is not safe for concurrent use.
type Ladder struct {
	gapMS  int64
	levels []float64
	last   []int64 // Unix ms of the latest score at or above each level
	count  []int   // episodes at each level
}

// NewLadder returns a Ladder for the given levels (strictly ascending, finite) and quiet
// gap (at least 1ms).
func NewLadder(levels []float64, gap time.Duration) (*Ladder, error) {
	var errs []error
	if gap < time.Millisecond {
		errs = append(errs, fmt.Errorf("ladder quiet gap must be at least 1ms, got %s", gap))
	}
	if len(levels) == 0 {
		errs = append(errs, errors.New("ladder needs at least one level"))
	}
	for i, v := range levels {
		if math.IsNaN(v) || math.IsInf(v, 0) || (i > 0 && v <= levels[i-1]) {
			errs = append(errs, fmt.Errorf("ladder levels must be finite and strictly ascending, got %v", levels))
			break
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return &Ladder{
		gapMS:  gap.Milliseconds(),
		levels: append([]float64(nil), levels...),
		last:   make([]int64, len(levels)),
		count:  make([]int, len(levels)),
	}, nil
}

// Add counts a score at t.
func (l *Ladder) Add(t time.Time, score float64) {
	ms := t.UnixMilli()
	for i, v := range l.levels {
		if score < v {
			return
		}
		switch {
		case l.count[i] == 0:
			l.count[i], l.last[i] = 1, ms
		case ms-l.last[i] > l.gapMS:
			l.count[i]++
			l.last[i] = ms
		default:
			l.last[i] = max(l.last[i], ms)
		}
	}
}

// Episodes returns the episodes counted at level i (in the order given to NewLadder).
func (l *Ladder) Episodes(i int) int { return l.count[i] }

// Lowest returns the lowest level at which at most maxEpisodes episodes were counted; ok is
// false when every level counted more. (Counts need not fall as levels rise: fewer alerts
// can leave gaps that split an episode.)
func (l *Ladder) Lowest(maxEpisodes float64) (level float64, ok bool) {
	for i, v := range l.levels {
		if float64(l.count[i]) <= maxEpisodes {
			return v, true
		}
	}
	return 0, false
}
