package flowmodel

import "github.com/meshguard/meshguard/flowmodel/episode"

// The alert budget counts episodes (issue 11): a service's alert threshold is the lowest bin
// edge at which the scores of its learning period would have made at most AlertBudget
// episodes a day, an episode being a run of scores at or above the edge each within
// Config.Episodes.QuietGap of the one before (episode.Ladder). A learning period with one
// hour-long storm of high scores thus spends one alert of the budget, not the storm's
// hundreds of requests, and the threshold stays low enough for everything else.
//
// The histogram of scores (Calibration.Histogram) is still kept and shown; a service restored
// in the middle of its learning period has lost its ladder and is calibrated from the
// histogram, counting scores rather than episodes.

// calibrationLevels are the bin edges of the calibration: alarmLevel and up, calBinWidth
// apart.
var calibrationLevels = func() []float64 {
	out := make([]float64, calBins)
	for i := range out {
		out[i] = alarmLevel + float64(i)*calBinWidth
	}
	return out
}()

// startLadder gives c a ladder, unless it has one. Call with the service's mutex held.
func (m *Model) startLadder(c *calibration) {
	if c.ladder != nil {
		return
	}
	// The levels are strictly ascending and finite, the gap checked: NewLadder cannot fail.
	c.ladder, _ = episode.NewLadder(calibrationLevels, m.cfg.Episodes.QuietGap)
}

// finishEpisodes sets the threshold from the ladder: the lowest edge with at most
// maxEpisodes episodes, else 1. The ladder is dropped: learning is over.
func (c *calibration) finishEpisodes(maxEpisodes float64) {
	c.threshold = 1
	if level, ok := c.ladder.Lowest(maxEpisodes); ok {
		c.threshold = level
	}
	c.ladder = nil
}
