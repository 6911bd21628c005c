package roc

import (
	"math"
	"testing"
)

func TestAUC(t *testing.T) {
	tests := []struct {
		name    string
		samples []Sample
		auc, ap float64
	}{
		{
			name:    "perfect",
			samples: []Sample{{0.9, true}, {0.8, true}, {0.2, false}, {0.1, false}},
			auc:     1, ap: 1,
		},
		{
			name:    "inverted",
			samples: []Sample{{0.1, true}, {0.2, true}, {0.8, false}, {0.9, false}},
			auc:     0, ap: (0.5*1.0/3 + 0.5*2.0/4),
		},
		{
			name:    "all tied",
			samples: []Sample{{1, true}, {1, false}, {1, true}, {1, false}},
			auc:     0.5, ap: 0.5,
		},
		{
			// Positives at ranks 1 and 3 of 4 (descending): one pair of 4 misordered.
			name:    "one swap",
			samples: []Sample{{4, true}, {3, false}, {2, true}, {1, false}},
			auc:     0.75, ap: 0.5*1 + 0.5*2.0/3,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := New(tt.samples)
			if err != nil {
				t.Fatal(err)
			}
			if got := c.AUC(); math.Abs(got-tt.auc) > 1e-12 {
				t.Errorf("AUC = %v, want %v", got, tt.auc)
			}
			if got := c.AveragePrecision(); math.Abs(got-tt.ap) > 1e-12 {
				t.Errorf("AP = %v, want %v", got, tt.ap)
			}
		})
	}
}

func TestRecallAtFalsePositives(t *testing.T) {
	c, err := New([]Sample{{5, true}, {4, false}, {3, true}, {2, true}, {1, false}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		maxFP  float64
		recall float64
		ok     bool
	}{{0, 1.0 / 3, true}, {0.5, 1.0 / 3, true}, {1, 1, true}, {2, 1, true}} {
		r, _, ok := c.RecallAtFalsePositives(tt.maxFP)
		if ok != tt.ok || math.Abs(r-tt.recall) > 1e-12 {
			t.Errorf("maxFP %v: recall %v ok %v, want %v %v", tt.maxFP, r, ok, tt.recall, tt.ok)
		}
	}
	c, _ = New([]Sample{{5, false}, {4, true}})
	if r, _, ok := c.RecallAtFalsePositives(0); ok || r != 0 {
		t.Errorf("top negative: recall %v ok %v, want 0 false", r, ok)
	}
}

func TestOneClass(t *testing.T) {
	if _, err := New([]Sample{{1, true}, {2, true}}); err != ErrOneClass {
		t.Fatalf("err = %v, want ErrOneClass", err)
	}
}
