package main

import (
	"fmt"
	"math"
	"time"

	"github.com/meshguard/meshguard/flowmodel/episode"
	"github.com/meshguard/meshguard/flowmodel/rate"
)

// Detection is what one detector raised on one series.
type Detection struct {
	Alarm    []bool            // per row, after the probationary period
	Opens    []bool            // per row: an episode opens there (what an operator is alerted to)
	Episodes []episode.Episode // grouped alarms, after the probationary period
	Note     string            // how the detector was set up on this series
}

// Meshguard runs meshguard's rate detectors on s as one service's requests per interval:
// row i is value(i) requests in the interval of its timestamp. A row alarms when the rate
// CUSUM (rate.Detector: a rise against a level that follows the daily cycle) or the seasonal
// detector (rate.Seasonal: a rise or a drop against the hour of day's profile) alarms. Both
// have their package defaults but for the interval and the bucket, which are at least the
// series' step. They learn from every row; alarms count from the end of the probationary
// period.
func Meshguard(s *Series) (Detection, error) { return meshguard(s, false) }

// MeshguardNoRebaseline is Meshguard with RequireApproval: no shift becomes the baseline on
// its own, as before re-baselining through probation.
func MeshguardNoRebaseline(s *Series) (Detection, error) { return meshguard(s, true) }

func meshguard(s *Series, requireApproval bool) (Detection, error) {
	d, err := rate.New(rate.Config{Interval: s.Step, RequireApproval: requireApproval})
	if err != nil {
		return Detection{}, err
	}
	sd, err := rate.NewSeasonal(seasonalConfig(s, requireApproval))
	if err != nil {
		return Detection{}, err
	}
	var st rate.State
	var ss rate.SeasonalState
	return detect(s, func(i int) (bool, float64) {
		r := d.Add(&st, s.Times[i], s.Values[i])
		if seasonalDisabled {
			return r.Alarm, r.Score
		}
		q := sd.Add(&ss, s.Times[i], s.Values[i])
		return r.Alarm || q.Alarm, max(r.Score, q.Score)
	}, "rate and seasonal defaults, interval "+s.Step.String())
}

// seasonalConfig is the seasonal detector's configuration on s: its defaults, but a bucket
// no shorter than the series' step.
func seasonalConfig(s *Series, requireApproval bool) rate.SeasonalConfig {
	c := seasonalBase
	c.Bucket = max(rate.DefaultBucket, s.Step)
	c.RequireApproval = requireApproval
	return c
}

// seasonalBase is the seasonal configuration the evaluation starts from (the defaults; the
// sensitivity check varies it).
var seasonalBase rate.SeasonalConfig

// seasonalDisabled runs the rate CUSUM alone (for the sensitivity check).
var seasonalDisabled bool

// thresholdKs are the multipliers the fixed-threshold baseline chooses k from.
var thresholdKs = []float64{1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5, 6, 7, 8, 10, 12, 15, 20}

// Threshold is the trivial baseline: an alarm for a row whose value exceeds mean + k·sd of
// the probationary period's values, with k the smallest of thresholdKs for which the
// probationary period itself would have raised at most budget episodes a day.
func Threshold(s *Series, budget float64, gap time.Duration) (Detection, error) {
	prob := Probation(len(s.Values))
	var sum, sq float64
	for _, v := range s.Values[:prob] {
		sum += v
		sq += v * v
	}
	n := float64(prob)
	mean := sum / n
	sd := math.Sqrt(max(sq/n-mean*mean, 0))
	days := s.Times[prob-1].Sub(s.Times[0]).Hours() / 24
	k := thresholdKs[len(thresholdKs)-1]
	for _, c := range thresholdKs {
		episodes, last := 0, -1
		for i, v := range s.Values[:prob] {
			if v > mean+c*sd {
				if last < 0 || s.Times[i].Sub(s.Times[last]) > gap {
					episodes++
				}
				last = i
			}
		}
		if float64(episodes)/days <= budget {
			k = c
			break
		}
	}
	limit := mean + k*sd
	return detect(s, func(i int) (bool, float64) {
		return s.Values[i] > limit, s.Values[i] / limit
	}, fmt.Sprintf("k = %g: above %.0f", k, limit))
}

// detect runs step on every row of s and groups the alarms after the probationary period
// into episodes with meshguard's episode tracker (its default quiet gap).
func detect(s *Series, step func(i int) (alarm bool, score float64), note string) (Detection, error) {
	tr, err := episode.New(episode.Config{KeepClosed: len(s.Values)})
	if err != nil {
		return Detection{}, err
	}
	prob := Probation(len(s.Values))
	det := Detection{Alarm: make([]bool, len(s.Values)), Opens: make([]bool, len(s.Values)), Note: note}
	for i := range s.Values {
		alarm, score := step(i)
		if !alarm || i < prob {
			continue
		}
		det.Alarm[i] = true
		det.Opens[i] = tr.Observe(episode.Alert{Service: s.Name, Kind: "rate_spike", Time: s.Times[i], Score: score}).New
	}
	tr.Sweep(s.Times[len(s.Times)-1].Add(100 * 365 * 24 * time.Hour))
	det.Episodes, _ = tr.Closed()
	return det, nil
}

// Result is one detector's figures on one series.
type Result struct {
	Windows, Alerted int           // windows scored, and those with an alarm inside
	Episodes, False  int           // episodes, and those entirely outside every window
	Days             float64       // scored series-days
	FalseAlarmRows   int           // alarmed rows outside windows
	Longest          time.Duration // the longest false episode
	Raw, Null, Best  float64       // NAB raw scores: the detector's, null's, perfect's
	Score            float64       // NAB normalised score
}

// FalsePerDay is the false episodes per scored series-day.
func (r Result) FalsePerDay() float64 { return float64(r.False) / r.Days }

// Measure scores a detection on s.
func Measure(s *Series, det Detection) Result {
	prob := Probation(len(s.Values))
	r := Result{Days: s.Times[len(s.Times)-1].Sub(s.Times[prob]).Hours() / 24}
	inWindow := make([]bool, len(s.Values))
	for _, w := range s.Windows {
		if w.To < prob {
			continue
		}
		r.Windows++
		hit := false
		for i := w.From; i <= w.To; i++ {
			inWindow[i] = true
			hit = hit || det.Alarm[i]
		}
		if hit {
			r.Alerted++
		}
	}
	for i, a := range det.Alarm {
		if a && !inWindow[i] {
			r.FalseAlarmRows++
		}
	}
	r.Episodes = len(det.Episodes)
	for _, e := range det.Episodes {
		overlaps := false
		for _, w := range s.Windows {
			if !e.Last.Before(w.FromTime) && !e.First.After(w.ToTime) {
				overlaps = true
			}
		}
		if !overlaps {
			r.False++
			r.Longest = max(r.Longest, e.Last.Sub(e.First))
		}
	}
	r.Raw, r.Null, r.Best = NABScore(s, det.Opens, Standard)
	r.Score = Normalised(r.Raw, r.Null, r.Best)
	return r
}
