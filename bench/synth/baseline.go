package main

import (
	"math"
	"time"

	"github.com/meshguard/meshguard/bench/evaluate"
	"github.com/meshguard/meshguard/flowmodel"
)

// baseline is the trivial detector a reviewer would run first: a destination (IP and port,
// or host name) the service did not use while learning scores 1; a learned one scores its
// requests in the current hour against a fixed rate threshold, mean + k·sd of the
// destination's hourly counts while learning (empty hours included, at least 1 request),
// half-way (0.5, an alert) at the threshold. Each service learns for the learn window from
// its first event, as the model does. Bytes are not looked at.
type baseline struct {
	learn    time.Duration
	k        float64
	services map[string]*baseService
}

// baselineK is the threshold's multiplier of the standard deviation.
const baselineK = 3

type baseService struct {
	start time.Time
	ready bool // thresholds computed
	dests map[string]*baseDest
}

type baseDest struct {
	learned  bool
	hours    map[int64]float64 // learning: requests per hour
	limit    float64
	cur      int64 // current hour after learning
	curCount float64
}

func newBaseline(learn time.Duration) *baseline {
	return &baseline{learn: learn, k: baselineK, services: map[string]*baseService{}}
}

// Decide implements evaluate.Decider.
func (b *baseline) Decide(f *flowmodel.Flow) flowmodel.Verdict {
	s := b.services[f.Service]
	if s == nil {
		s = &baseService{start: f.Time, dests: map[string]*baseDest{}}
		b.services[f.Service] = s
	}
	hour := f.Time.Unix() / 3600
	var keys [2]string
	n := 0
	if f.Destination.IP.IsValid() {
		keys[n] = "ip " + f.Destination.IP.String() + ":" + itoa(int(f.Destination.Port))
		n++
	}
	if f.Destination.Host != "" {
		keys[n] = "host " + f.Destination.Host + ":" + itoa(int(f.Destination.Port))
		n++
	}
	if f.Time.Sub(s.start) < b.learn {
		for _, k := range keys[:n] {
			d := s.dests[k]
			if d == nil {
				d = &baseDest{learned: true, hours: map[int64]float64{}}
				s.dests[k] = d
			}
			d.hours[hour]++
		}
		return flowmodel.Verdict{Mode: flowmodel.ModeLearn}
	}
	if !s.ready {
		b.thresholds(s)
	}
	v := flowmodel.Verdict{Mode: flowmodel.ModeMonitor}
	for _, k := range keys[:n] {
		d := s.dests[k]
		if d == nil || !d.learned {
			v.Score = 1
			continue
		}
		if hour != d.cur {
			d.cur, d.curCount = hour, 0
		}
		d.curCount++
		v.Score = max(v.Score, min(0.5*d.curCount/d.limit, 0.99))
	}
	if v.Score >= 0.5 {
		v.Action = flowmodel.Alert
	}
	return v
}

// thresholds fixes each learned destination's rate threshold at the end of learning.
func (b *baseline) thresholds(s *baseService) {
	s.ready = true
	hours := math.Max(b.learn.Hours(), 1)
	for _, d := range s.dests {
		var sum, sq float64
		for _, c := range d.hours {
			sum += c
			sq += c * c
		}
		mean := sum / hours
		sd := math.Sqrt(math.Max(sq/hours-mean*mean, 0))
		d.limit = math.Max(mean+b.k*sd, 1)
		d.hours = nil
	}
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b [8]byte
	i := len(b)
	for n > 0 {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
	}
	return string(b[i:])
}

// baselineReport runs the baseline on the events and measures it as the model is measured.
func baselineReport(events []evaluate.Event, c genConfig) (*evaluate.Report, error) {
	return evaluate.Measure(events, evaluate.Run(events, newBaseline(modelConfig(c).LearnWindow)), evaluate.Options{})
}
