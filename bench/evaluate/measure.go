package evaluate

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/meshguard/meshguard/bench/roc"
	"github.com/meshguard/meshguard/flowmodel"
)

// Options say how to read labels and where to measure recall.
type Options struct {
	// Benign lists the labels of normal traffic besides "". Default: "benign".
	Benign []string
	// Unknown lists labels whose truth is not known (Stratosphere's "background"): such events
	// are decided, so the model learns from them, but they count neither way.
	Unknown []string
	// Budgets are the false alerts per service-day at which recall is reported.
	// Default: 1 and 0.1.
	Budgets []float64
}

func (o Options) withDefaults() Options {
	if o.Benign == nil {
		o.Benign = []string{"benign"}
	}
	if o.Budgets == nil {
		o.Budgets = []float64{1, 0.1}
	}
	return o
}

// Report is what one evaluation measured.
type Report struct {
	Events int
	// Learning counts the events decided in learn mode.
	Learning int
	// Negatives counts the scored benign events; Unknown the events of unknown truth.
	Negatives, Unknown int
	// ServiceDays is the time under scoring, summed over services: for each service, from
	// its first scored event to its last event.
	ServiceDays float64
	// FalseAlerts counts the scored benign events the model alerted on or blocked.
	FalseAlerts int
	// Budgets are Options.Budgets, in order; KindResult.Recall follows it.
	Budgets []float64
	// Kinds holds one result per attack kind, sorted by name.
	Kinds []KindResult
}

// FalseAlertsPerServiceDay is the model's own false-alert rate; NaN without service-days.
func (r *Report) FalseAlertsPerServiceDay() float64 {
	if r.ServiceDays == 0 {
		return math.NaN()
	}
	return float64(r.FalseAlerts) / r.ServiceDays
}

// Kind returns the result for one attack kind.
func (r *Report) Kind(kind string) (KindResult, bool) {
	for _, k := range r.Kinds {
		if k.Kind == kind {
			return k, true
		}
	}
	return KindResult{}, false
}

// KindResult measures one attack kind against all scored benign events.
type KindResult struct {
	Kind string
	// Positives counts the kind's events; InLearning those decided in learn mode, counted
	// as missed.
	Positives, InLearning int
	// AUC and AP are the ROC-AUC and average precision of Verdict.Score; NaN when there are
	// no scored benign events.
	AUC, AP float64
	// Recall holds, per Report.Budgets entry, the best recall at a score threshold that lets
	// at most budget × service-days benign events through.
	Recall []BudgetRecall
	// Alerted counts the positives the model alerted on or blocked; AlertRecall is
	// Alerted / Positives.
	Alerted     int
	AlertRecall float64
	// Instances counts the attack instances; Detected those with at least one alerted event.
	Instances, Detected int
	// TimeToDetect holds, per detected instance (sorted), the time from the instance's
	// first event to its first alerted event.
	TimeToDetect []time.Duration
}

// BudgetRecall is the recall at one false-alert budget.
type BudgetRecall struct {
	PerServiceDay float64
	// MaxFalseAlerts is PerServiceDay × Report.ServiceDays.
	MaxFalseAlerts float64
	// Recall is 0 and OK false when even the highest score lets more benign events through.
	Recall    float64
	Threshold float64
	OK        bool
}

// MedianTimeToDetect and MaxTimeToDetect summarise TimeToDetect; ok is false when no
// instance was detected.
func (k KindResult) MedianTimeToDetect() (time.Duration, bool) {
	n := len(k.TimeToDetect)
	if n == 0 {
		return 0, false
	}
	if n%2 == 1 {
		return k.TimeToDetect[n/2], true
	}
	return (k.TimeToDetect[n/2-1] + k.TimeToDetect[n/2]) / 2, true
}

// MaxTimeToDetect is the longest time to detect of the detected instances.
func (k KindResult) MaxTimeToDetect() (time.Duration, bool) {
	if len(k.TimeToDetect) == 0 {
		return 0, false
	}
	return k.TimeToDetect[len(k.TimeToDetect)-1], true
}

// missed is the score of an attack event decided while learning: below any real score.
var missed = math.Inf(-1)

type instance struct {
	first, firstAlert time.Time
	alerted           bool
}

type kindAcc struct {
	samples   []roc.Sample // positives only; negatives are shared
	inLearn   int
	alerted   int
	instances map[string]*instance
}

type span struct{ first, last time.Time }

// Measure compares the verdicts (one per event, as Run returns them) with the labels.
func Measure(events []Event, verdicts []flowmodel.Verdict, opt Options) (*Report, error) {
	if len(events) != len(verdicts) {
		return nil, fmt.Errorf("measure: %d events but %d verdicts", len(events), len(verdicts))
	}
	opt = opt.withDefaults()
	rep := &Report{Events: len(events), Budgets: slices.Clone(opt.Budgets)}
	var negatives []roc.Sample
	kinds := map[string]*kindAcc{}
	scored := map[string]*span{} // per service: first scored event, last event
	last := map[string]time.Time{}

	for i := range events {
		e, v := &events[i], verdicts[i]
		svc, t := e.Flow.Service, e.Flow.Time
		if t.After(last[svc]) {
			last[svc] = t
		}
		learning := v.Mode == flowmodel.ModeLearn
		if learning {
			rep.Learning++
		} else if s := scored[svc]; s == nil {
			scored[svc] = &span{first: t}
		} else if t.Before(s.first) {
			s.first = t
		}
		alerted := !learning && v.Action != flowmodel.Allow
		switch {
		case e.Label == "" || slices.Contains(opt.Benign, e.Label):
			if learning {
				continue
			}
			negatives = append(negatives, roc.Sample{Score: v.Score})
			if alerted {
				rep.FalseAlerts++
			}
		case slices.Contains(opt.Unknown, e.Label):
			rep.Unknown++
		default:
			k := kinds[e.Label]
			if k == nil {
				k = &kindAcc{instances: map[string]*instance{}}
				kinds[e.Label] = k
			}
			score := v.Score
			if learning {
				score = missed
				k.inLearn++
			}
			k.samples = append(k.samples, roc.Sample{Score: score, Positive: true})
			id := e.Attack
			if id == "" {
				id = svc
			}
			in := k.instances[id]
			if in == nil {
				in = &instance{first: t}
				k.instances[id] = in
			}
			if t.Before(in.first) {
				in.first = t
			}
			if alerted {
				k.alerted++
				if !in.alerted || t.Before(in.firstAlert) {
					in.alerted, in.firstAlert = true, t
				}
			}
		}
	}
	rep.Negatives = len(negatives)
	for svc, s := range scored {
		rep.ServiceDays += last[svc].Sub(s.first).Hours() / 24
	}

	names := make([]string, 0, len(kinds))
	for name := range kinds {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		kr, err := measureKind(name, kinds[name], negatives, rep)
		if err != nil {
			return nil, err
		}
		rep.Kinds = append(rep.Kinds, kr)
	}
	return rep, nil
}

func measureKind(name string, k *kindAcc, negatives []roc.Sample, rep *Report) (KindResult, error) {
	kr := KindResult{
		Kind:        name,
		Positives:   len(k.samples),
		InLearning:  k.inLearn,
		Alerted:     k.alerted,
		AlertRecall: float64(k.alerted) / float64(len(k.samples)),
		Instances:   len(k.instances),
		AUC:         math.NaN(),
		AP:          math.NaN(),
	}
	for _, in := range k.instances {
		if in.alerted {
			kr.Detected++
			kr.TimeToDetect = append(kr.TimeToDetect, in.firstAlert.Sub(in.first))
		}
	}
	slices.SortFunc(kr.TimeToDetect, cmp.Compare)
	samples := append(slices.Clone(k.samples), negatives...)
	c, err := roc.New(samples)
	switch {
	case errors.Is(err, roc.ErrOneClass):
		// No scored benign events: AUC, AP and recall at a budget are undefined.
		for _, b := range rep.Budgets {
			kr.Recall = append(kr.Recall, BudgetRecall{PerServiceDay: b, MaxFalseAlerts: b * rep.ServiceDays, Recall: math.NaN()})
		}
		return kr, nil
	case err != nil:
		return kr, fmt.Errorf("measure %s: %w", name, err)
	}
	kr.AUC, kr.AP = c.AUC(), c.AveragePrecision()
	for _, b := range rep.Budgets {
		br := BudgetRecall{PerServiceDay: b, MaxFalseAlerts: b * rep.ServiceDays}
		br.Recall, br.Threshold, br.OK = c.RecallAtFalsePositives(br.MaxFalseAlerts)
		// A threshold at the missed score would count learning-time events as found.
		if br.OK && br.Threshold == missed {
			br.Recall = float64(kr.Positives-kr.InLearning) / float64(kr.Positives)
		}
		kr.Recall = append(kr.Recall, br)
	}
	return kr, nil
}
