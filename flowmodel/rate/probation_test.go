package rate

import (
	"math"
	"testing"
	"time"
)

// counts feeds a key one interval at a time from start, count(i) requests in interval i,
// for n intervals, and returns the indexes of the intervals that ended in alarm.
func counts(d *Detector, s *State, start time.Time, n int, count func(i int) float64) []int {
	var alarmed []int
	iv := d.Config().Interval
	for i := range n {
		if r := d.Add(s, start.Add(time.Duration(i)*iv), count(i)); r.Alarm {
			alarmed = append(alarmed, i)
		}
	}
	return alarmed
}

const day = 24 * 60 // one-minute intervals in a day

// TestProbationAdoptsShift: a key at 10 requests a minute for two days steps to 40 for three.
// The step alarms at once and keeps alarming for the probation (a day), then is the
// baseline: no alarm after it, and Expected is the new level.
func TestProbationAdoptsShift(t *testing.T) {
	d := newDetector(t, Config{})
	var s State
	if a := counts(d, &s, t0, 2*day, func(int) float64 { return 10 }); len(a) > 0 {
		t.Fatalf("%d alarms before the shift", len(a))
	}
	shift := t0.Add(2 * day * time.Minute)
	a := counts(d, &s, shift, 3*day, func(int) float64 { return 40 })
	if len(a) == 0 || a[0] > 5 {
		t.Fatalf("shift ×4: alarms %v, want from the first minutes", head(a))
	}
	// An alarm held for a day, then adopted: the alarm ends at the end of probation.
	last := a[len(a)-1]
	if last < day-10 || last > day+1 || len(a) < day-10 {
		t.Errorf("alarmed %d intervals, the last %d; want about the first %d (the probation)", len(a), last, day)
	}
	if r := d.Peek(&s); math.Abs(r.Expected-40) > 1 || r.Alarm {
		t.Errorf("after probation: %+v, want a baseline of 40 and no alarm", r)
	}
	if held, rejected := d.Shift(&s); held != 0 || rejected {
		t.Errorf("Shift after adoption: %s %v", held, rejected)
	}
}

// TestProbationRejected: the same shift, rejected by an operator an hour in, alarms for the
// whole three days, and its level is not learned. A probation without alarm lifts the
// rejection: the next shift is adopted after its own probation.
func TestProbationRejected(t *testing.T) {
	d := newDetector(t, Config{})
	var s State
	counts(d, &s, t0, 2*day, func(int) float64 { return 10 })
	shift := t0.Add(2 * day * time.Minute)
	a := counts(d, &s, shift, 60, func(int) float64 { return 40 })
	if held, _ := d.Shift(&s); len(a) == 0 || held < 50*time.Minute {
		t.Fatalf("an hour into the shift: %d alarms, held %s", len(a), held)
	}
	d.Reject(&s)
	if _, rejected := d.Shift(&s); !rejected {
		t.Fatal("Shift does not report the rejection")
	}
	later := shift.Add(time.Hour)
	if a := counts(d, &s, later, 3*day, func(int) float64 { return 40 }); len(a) != 3*day {
		t.Errorf("rejected shift: %d of %d intervals alarmed, want all", len(a), 3*day)
	}
	if r := d.Peek(&s); r.Expected > 11 {
		t.Errorf("rejected shift learned: baseline %.2f, want 10", r.Expected)
	}
	// Back to normal for a day and a half: the alarm ends, the rejection is lifted.
	back := later.Add(3 * day * time.Minute)
	if a := counts(d, &s, back, 3*day/2, func(int) float64 { return 10 }); len(a) > 10 {
		t.Errorf("back to normal: %d alarms", len(a))
	}
	if _, rejected := d.Shift(&s); rejected {
		t.Error("rejection not lifted after a quiet probation")
	}
	again := back.Add(3 * day / 2 * time.Minute)
	a = counts(d, &s, again, 2*day, func(int) float64 { return 40 })
	if len(a) == 0 || a[len(a)-1] > day+1 {
		t.Errorf("a later shift: alarms %d, the last %v; want adopted after a day", len(a), a[len(a)-1:])
	}
}

// TestRequireApproval: with RequireApproval a shift alarms until Accept.
func TestRequireApproval(t *testing.T) {
	d := newDetector(t, Config{RequireApproval: true})
	var s State
	counts(d, &s, t0, 2*day, func(int) float64 { return 10 })
	shift := t0.Add(2 * day * time.Minute)
	if a := counts(d, &s, shift, 3*day, func(int) float64 { return 40 }); len(a) < 3*day-5 {
		t.Errorf("%d of %d intervals alarmed, want all but the first few", len(a), 3*day)
	}
	d.Accept(&s)
	after := shift.Add(3 * day * time.Minute)
	if a := counts(d, &s, after, day, func(int) float64 { return 40 }); len(a) > 0 {
		t.Errorf("after Accept: %d alarms", len(a))
	}
}

// ramp returns count(i) of a rate that starts at base and grows by factor perDay a day from
// interval from on.
func ramp(base, perDay float64, from int) func(int) float64 {
	return func(i int) float64 {
		return base * math.Pow(perDay, float64(max(i-from, 0))/day)
	}
}

// TestAdversarySlowRamp: the attacker's ramp is bounded by the ceiling. A careful attacker
// (issue 10, "careful attacker": walk the baseline up slowly instead of stepping) raises the
// rate 20% a day for twelve days: it stays under the ceiling's 25% a day and is absorbed,
// but no faster: the baseline ends within the ceiling's bound of 1.25 a day. A ramp of ×2 a
// day, which the baseline's half-life of 6 hours alone would follow unnoticed (it lags a
// rate growing ×2 a day by a factor 2^0.36 = 1.28), alarms about the 2.1 days that
// ln 2.73/ln(2/1.25) predicts into it (2.6 allowed), and ×1.5 a day after about 5.5 (6.5).
func TestAdversarySlowRamp(t *testing.T) {
	d := newDetector(t, Config{})
	const learn = 2 * day
	t.Run("20% a day absorbed", func(t *testing.T) {
		var s State
		a := counts(d, &s, t0, learn+12*day, ramp(10, 1.2, learn))
		if len(a) > 0 {
			t.Errorf("%d alarms, the first %.1f days into the ramp", len(a), float64(a[0]-learn)/day)
		}
		if r, bound := d.Peek(&s), 10*math.Pow(1.25, 12); r.Expected > bound {
			t.Errorf("baseline %.1f after 12 days, above the ceiling's bound %.1f", r.Expected, bound)
		}
	})
	for _, tc := range []struct {
		name   string
		perDay float64
		within float64 // days
	}{
		{"×2 a day", 2, 2.6},
		{"×1.5 a day", 1.5, 6.5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var s State
			a := counts(d, &s, t0, learn+int(tc.within*day), ramp(10, tc.perDay, learn))
			if len(a) == 0 {
				t.Fatalf("no alarm within %.1f days", tc.within)
			}
			t.Logf("alarmed %.2f days into the ramp", float64(a[0]-learn)/day)
		})
	}
	t.Run("×2 a day unnoticed without the ceiling", func(t *testing.T) {
		loose := newDetector(t, Config{MaxGrowth: 1e9})
		var s State
		if a := counts(loose, &s, t0, learn+4*day, ramp(10, 2, learn)); len(a) > 0 {
			t.Errorf("alarmed %.2f days in: the test does not show the ceiling's effect", float64(a[0]-learn)/day)
		}
	})
}

// TestAdversaryStepAfterRejection: an attacker whose shift was rejected pauses long enough
// to clear the alarm, then resumes (issue 10, "careful attacker"): the rejection holds until a
// whole probation passes without an alarm, so the resumed shift alarms from its start and
// is not adopted a day later.
func TestAdversaryStepAfterRejection(t *testing.T) {
	d := newDetector(t, Config{})
	var s State
	counts(d, &s, t0, 2*day, func(int) float64 { return 10 })
	at := t0.Add(2 * day * time.Minute)
	counts(d, &s, at, 60, func(int) float64 { return 40 })
	d.Reject(&s)
	at = at.Add(time.Hour)
	// A pause of three hours at the old rate, then the shift again for two days.
	if a := counts(d, &s, at, 180, func(int) float64 { return 10 }); len(a) == 180 {
		t.Fatal("the alarm did not clear during the pause")
	}
	at = at.Add(3 * time.Hour)
	a := counts(d, &s, at, 2*day, func(int) float64 { return 40 })
	if len(a) < 2*day-10 {
		t.Errorf("resumed shift: %d of %d intervals alarmed, want (nearly) all", len(a), 2*day)
	}
}

func head(a []int) []int { return a[:min(len(a), 5)] }

// TestProbationSparseKey: a worker that makes a request every 12 minutes starts making one
// every 72 seconds, so some minutes have none: the probation runs on elapsed intervals, not on
// intervals with requests, and the new rate is the baseline a day after it began.
func TestProbationSparseKey(t *testing.T) {
	d := newDetector(t, Config{})
	change := t0.Add(48 * time.Hour)
	alarms, _ := run(d, concat(every(t0, change, 12*time.Minute), every(change, change.Add(72*time.Hour), 72*time.Second)))
	if len(alarms) == 0 {
		t.Fatal("no alarm")
	}
	if last := alarms[len(alarms)-1].Sub(change); last > 25*time.Hour || last < 23*time.Hour {
		t.Errorf("last alarm %s after the change, want about a day (the probation)", last)
	}
}
