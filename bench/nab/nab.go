package main

import (
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// A Series is one NAB data file: a value per row, rows evenly spaced.
type Series struct {
	Name    string // file name without .csv
	Times   []time.Time
	Values  []float64
	Windows []Window // NAB's labelled anomaly windows, in order
	Step    time.Duration
}

// A Window is a labelled anomaly window, as row indexes (both inclusive).
type Window struct {
	From, To         int
	FromTime, ToTime time.Time
}

// Files are the series this evaluation reads, with their key in windows.json.
var Files = []struct{ Name, Key string }{
	{"Twitter_volume_AAPL", "realTweets/Twitter_volume_AAPL.csv"},
	{"Twitter_volume_AMZN", "realTweets/Twitter_volume_AMZN.csv"},
	{"Twitter_volume_FB", "realTweets/Twitter_volume_FB.csv"},
	{"Twitter_volume_GOOG", "realTweets/Twitter_volume_GOOG.csv"},
	{"Twitter_volume_IBM", "realTweets/Twitter_volume_IBM.csv"},
	{"nyc_taxi", "realKnownCause/nyc_taxi.csv"},
}

const nabTime = "2006-01-02 15:04:05"

// Load reads the series of Files and their windows from dir.
func Load(dir string) ([]*Series, error) {
	raw, err := os.ReadFile(filepath.Join(dir, "windows.json"))
	if err != nil {
		return nil, err
	}
	var windows map[string][][2]string
	if err := json.Unmarshal(raw, &windows); err != nil {
		return nil, fmt.Errorf("windows.json: %w", err)
	}
	var out []*Series
	for _, f := range Files {
		s, err := readSeries(filepath.Join(dir, f.Name+".csv"))
		if err != nil {
			return nil, err
		}
		s.Name = f.Name
		ws, ok := windows[f.Key]
		if !ok {
			return nil, fmt.Errorf("windows.json has no windows for %s", f.Key)
		}
		for _, w := range ws {
			var win Window
			if win.FromTime, err = time.Parse(nabTime, w[0][:len(nabTime)]); err != nil {
				return nil, fmt.Errorf("%s window: %w", f.Name, err)
			}
			if win.ToTime, err = time.Parse(nabTime, w[1][:len(nabTime)]); err != nil {
				return nil, fmt.Errorf("%s window: %w", f.Name, err)
			}
			win.From, win.To = s.index(win.FromTime), s.index(win.ToTime)
			if win.From < 0 || win.To < 0 {
				return nil, fmt.Errorf("%s: window %s to %s does not start and end on rows", f.Name, w[0], w[1])
			}
			s.Windows = append(s.Windows, win)
		}
		out = append(out, s)
	}
	return out, nil
}

func (s *Series) index(t time.Time) int {
	for i, at := range s.Times {
		if at.Equal(t) {
			return i
		}
	}
	return -1
}

func readSeries(path string) (*Series, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := csv.NewReader(f)
	if _, err := r.Read(); err != nil {
		return nil, fmt.Errorf("%s: header: %w", path, err)
	}
	s := &Series{}
	for {
		rec, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		t, err := time.Parse(nabTime, rec[0])
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		v, err := strconv.ParseFloat(rec[1], 64)
		if err != nil || v < 0 || math.IsInf(v, 0) || math.IsNaN(v) {
			return nil, fmt.Errorf("%s: bad value %q", path, rec[1])
		}
		s.Times = append(s.Times, t)
		s.Values = append(s.Values, v)
	}
	if len(s.Times) < 2 {
		return nil, fmt.Errorf("%s: fewer than two rows", path)
	}
	s.Step = s.Times[1].Sub(s.Times[0])
	return s, nil
}

// Probation is NAB's probationary length for n rows: 15% of them, at most 750 (NAB's
// sweeper: min(floor(0.15·n), 0.15·5000)). Detections there are not scored; the detectors
// learn there.
func Probation(n int) int { return min(int(math.Floor(0.15*float64(n))), 750) }

// Profile is a NAB application profile: the weights of a true positive, a false positive
// and a false negative.
type Profile struct{ TP, FP, FN float64 }

// Standard is NAB's standard application profile.
var Standard = Profile{TP: 1, FP: 0.11, FN: 1}

func sigmoid(x float64) float64 { return 1 / (1 + math.Exp(-x)) }

// scaledSigmoid is NAB's weighting of a detection by its position relative to a window:
// −1 is the window's left edge (0.987), 0 its right edge (0), positive values are past it.
func scaledSigmoid(pos float64) float64 {
	if pos >= 3 {
		return -1
	}
	return 2*sigmoid(-5*pos) - 1
}

// NABScore is NAB's raw score of a series' detections (one bool per row) under profile p,
// as NAB's sweeper computes it for a detector whose scores are 0 or 1: the rows of the
// probationary period are not scored; each window counts its earliest detection, weighted
// by the scaled sigmoid of its position (a window without one costs p.FN); each detection
// outside windows costs p.FP times the scaled sigmoid of its distance past the last window
// (the full p.FP before any window or three window lengths after one). Also returned: the
// raw scores of the null detector (no detection) and of a perfect one (each window detected
// at its left edge), between which NAB normalises to 0..100.
func NABScore(s *Series, detect []bool, p Profile) (raw, null, perfect float64) {
	prob := Probation(len(detect))
	maxTP := scaledSigmoid(-1)
	best := make([]float64, len(s.Windows))
	scored := make([]bool, len(s.Windows))
	for w, win := range s.Windows {
		best[w] = -p.FN
		scored[w] = win.To >= prob
	}
	fp := 0.0
	cur, prev := -1, -1 // window the row is in; window before it
	for i := range detect {
		if cur < 0 {
			for w := prev + 1; w < len(s.Windows); w++ {
				if s.Windows[w].From == i {
					cur = w
					break
				}
			}
		}
		if detect[i] && i >= prob {
			if cur >= 0 {
				win := s.Windows[cur]
				width := float64(win.To - win.From + 1)
				pos := -float64(win.To-i+1) / width
				best[cur] = max(best[cur], scaledSigmoid(pos)*p.TP/maxTP)
			} else {
				pos := 3.0
				if prev >= 0 {
					win := s.Windows[prev]
					pos = math.Abs(float64(win.To-i)) / float64(win.To-win.From)
				}
				fp += scaledSigmoid(pos) * p.FP
			}
		}
		if cur >= 0 && s.Windows[cur].To == i {
			prev, cur = cur, -1
		}
	}
	raw = fp
	for w := range best {
		if scored[w] {
			raw += best[w]
			null -= p.FN
			perfect += p.TP
		}
	}
	return raw, null, perfect
}

// Normalised is NAB's normalised score: 100 for perfect, 0 for null.
func Normalised(raw, null, perfect float64) float64 {
	return 100 * (raw - null) / (perfect - null)
}
