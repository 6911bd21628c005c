// Package roc computes detection-quality figures from scored, labelled samples: ROC-AUC,
// average precision and the recall at a given number of false alerts. Ties in score are
// handled exactly (a tie counts half, as in the Mann-Whitney statistic).
package roc

import (
	"cmp"
	"errors"
	"slices"
)

// Sample is one scored item with its ground truth.
type Sample struct {
	Score    float64
	Positive bool
}

// Curve holds samples sorted by descending score, grouped by equal score.
type Curve struct {
	groups         []group
	positives, all int
}

type group struct {
	score    float64
	pos, neg int
}

// ErrOneClass is returned when the samples hold only positives or only negatives.
var ErrOneClass = errors.New("roc: need both positive and negative samples")

// New sorts the samples (in place) and returns their curve.
func New(samples []Sample) (*Curve, error) {
	slices.SortFunc(samples, func(a, b Sample) int { return cmp.Compare(b.Score, a.Score) })
	c := &Curve{all: len(samples)}
	for _, s := range samples {
		if len(c.groups) == 0 || c.groups[len(c.groups)-1].score != s.Score {
			c.groups = append(c.groups, group{score: s.Score})
		}
		g := &c.groups[len(c.groups)-1]
		if s.Positive {
			g.pos++
			c.positives++
		} else {
			g.neg++
		}
	}
	if c.positives == 0 || c.positives == c.all {
		return nil, ErrOneClass
	}
	return c, nil
}

// Positives and Negatives count the samples of each class.
func (c *Curve) Positives() int { return c.positives }
func (c *Curve) Negatives() int { return c.all - c.positives }

// AUC is the area under the ROC curve: the probability that a random positive scores above
// a random negative, ties counting half.
func (c *Curve) AUC() float64 {
	var area float64 // in units of pos*neg
	negAbove := 0
	for _, g := range c.groups {
		area += float64(g.pos) * (float64(c.Negatives()-negAbove-g.neg) + float64(g.neg)/2)
		negAbove += g.neg
	}
	return area / (float64(c.positives) * float64(c.Negatives()))
}

// AveragePrecision is the area under the precision-recall curve, summed over the distinct
// score thresholds (as scikit-learn's average_precision_score).
func (c *Curve) AveragePrecision() float64 {
	var ap float64
	tp, fp := 0, 0
	for _, g := range c.groups {
		tp += g.pos
		fp += g.neg
		if g.pos > 0 {
			ap += float64(g.pos) / float64(c.positives) * float64(tp) / float64(tp+fp)
		}
	}
	return ap
}

// RecallAtFalsePositives returns the highest recall reachable at a threshold that lets at most
// maxFP negatives through, and that threshold (samples scoring >= it are flagged). With
// maxFP < the negatives of the top group, the recall is 0 and the threshold +Inf-like (the
// top score, exclusive), reported as ok=false.
func (c *Curve) RecallAtFalsePositives(maxFP float64) (recall, threshold float64, ok bool) {
	tp, fp := 0, 0
	for _, g := range c.groups {
		if float64(fp+g.neg) > maxFP {
			break
		}
		tp += g.pos
		fp += g.neg
		recall, threshold, ok = float64(tp)/float64(c.positives), g.score, true
	}
	return recall, threshold, ok
}
