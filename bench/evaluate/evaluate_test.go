package evaluate

import (
	"bytes"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/meshguard/meshguard/flowmodel"
)

// scripted is a fake model: services in learnUntil are in learn mode before that time, and a
// flow whose destination host is in known scores 0, any other 1 (an alert).
type scripted struct {
	learnUntil map[string]time.Time
	known      map[string]bool
}

func (s scripted) Decide(f *flowmodel.Flow) flowmodel.Verdict {
	if until, ok := s.learnUntil[f.Service]; ok && f.Time.Before(until) {
		return flowmodel.Verdict{Mode: flowmodel.ModeLearn}
	}
	if s.known[f.Destination.Host] {
		return flowmodel.Verdict{Mode: flowmodel.ModeMonitor}
	}
	return flowmodel.Verdict{Mode: flowmodel.ModeMonitor, Action: flowmodel.Alert, Score: 1,
		Reasons: flowmodel.Reasons(0).With(flowmodel.ReasonNewDestination)}
}

var t0 = time.Date(2026, 1, 5, 0, 0, 0, 0, time.UTC)

func ev(h float64, svc, host, label, attack string) string {
	ts := t0.Add(time.Duration(h * float64(time.Hour))).Format(time.RFC3339Nano)
	return `{"time":"` + ts + `","service":"` + svc + `","destination":{"host":"` + host + `","port":443},"label":"` + label + `","attack":"` + attack + `"}`
}

func scenario(t *testing.T) []Event {
	t.Helper()
	lines := []string{
		ev(0, "a", "x", "", ""),
		ev(1, "a", "y", "k1", ""), // learning: missed
		ev(2, "a", "x", "benign", ""),
		ev(3, "a", "z", "", ""), // false alert
		ev(4, "a", "y", "k1", ""),
		ev(5, "a", "x", "k1", ""), // attack the model cannot see
		ev(6, "a", "q", "bg", ""), // unknown truth
		ev(0, "b", "x", "", ""),
		ev(24, "b", "w", "k2", "k2-1"),
		ev(30, "b", "w", "k2", "k2-1"),
	}
	events, err := Read(strings.NewReader(strings.Join(lines, "\n") + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	return events
}

func model() scripted {
	return scripted{learnUntil: map[string]time.Time{"a": t0.Add(2 * time.Hour)}, known: map[string]bool{"x": true}}
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

func TestMeasure(t *testing.T) {
	events := scenario(t)
	if events[8].Attack != "k2-1" || events[1].Label != "k1" || events[9].Line != 10 {
		t.Fatalf("labels not read: %+v", events[8])
	}
	rep, err := Measure(events, Run(events, model()), Options{Unknown: []string{"bg"}, Budgets: []float64{1, 0.1, 10}})
	if err != nil {
		t.Fatal(err)
	}
	// Service a is scored from 2h to 6h, b from 0h to 30h.
	if want := 34.0 / 24; !near(rep.ServiceDays, want) {
		t.Errorf("service-days = %v, want %v", rep.ServiceDays, want)
	}
	if rep.Events != 10 || rep.Learning != 2 || rep.Negatives != 3 || rep.Unknown != 1 || rep.FalseAlerts != 1 {
		t.Errorf("counts: events %d learning %d negatives %d unknown %d false alerts %d; want 10 2 3 1 1",
			rep.Events, rep.Learning, rep.Negatives, rep.Unknown, rep.FalseAlerts)
	}
	tests := []struct {
		kind                string
		positives, inLearn  int
		auc, ap             float64
		recall              []float64
		ok                  []bool
		alertRecall         float64
		instances, detected int
		ttd                 []time.Duration
	}{
		{
			// Negatives score {0, 1, 0}; k1 scores {missed, 1, 0}.
			kind: "k1", positives: 3, inLearn: 1,
			auc: 3.5 / 9, ap: 1.0/6 + 2.0/15 + 1.0/6,
			// Budget 1 allows 1.42 false alerts: the score-1 group (one benign) passes.
			// Budget 10 allows every benign event, but not the missed ones.
			recall: []float64{1.0 / 3, 0, 2.0 / 3}, ok: []bool{true, false, true},
			alertRecall: 1.0 / 3, instances: 1, detected: 1, ttd: []time.Duration{3 * time.Hour},
		},
		{
			kind: "k2", positives: 2, auc: 5.0 / 6, ap: 2.0 / 3,
			recall: []float64{1, 0, 1}, ok: []bool{true, false, true},
			alertRecall: 1, instances: 1, detected: 1, ttd: []time.Duration{0},
		},
	}
	if len(rep.Kinds) != len(tests) {
		t.Fatalf("kinds = %+v, want k1 and k2", rep.Kinds)
	}
	for _, tt := range tests {
		t.Run(tt.kind, func(t *testing.T) {
			k, ok := rep.Kind(tt.kind)
			if !ok {
				t.Fatalf("kind %s missing", tt.kind)
			}
			if k.Positives != tt.positives || k.InLearning != tt.inLearn {
				t.Errorf("positives %d (in learning %d), want %d (%d)", k.Positives, k.InLearning, tt.positives, tt.inLearn)
			}
			if !near(k.AUC, tt.auc) || !near(k.AP, tt.ap) {
				t.Errorf("AUC %v AP %v, want %v %v", k.AUC, k.AP, tt.auc, tt.ap)
			}
			for i, br := range k.Recall {
				if !near(br.Recall, tt.recall[i]) || br.OK != tt.ok[i] {
					t.Errorf("recall at %v/service-day = %v (ok %v), want %v (%v)", br.PerServiceDay, br.Recall, br.OK, tt.recall[i], tt.ok[i])
				}
			}
			if !near(k.AlertRecall, tt.alertRecall) || k.Instances != tt.instances || k.Detected != tt.detected {
				t.Errorf("alert recall %v instances %d detected %d, want %v %d %d", k.AlertRecall, k.Instances, k.Detected, tt.alertRecall, tt.instances, tt.detected)
			}
			if len(k.TimeToDetect) != len(tt.ttd) || (len(tt.ttd) > 0 && k.TimeToDetect[0] != tt.ttd[0]) {
				t.Errorf("time to detect %v, want %v", k.TimeToDetect, tt.ttd)
			}
		})
	}
	table := Table([]Row{{Name: "k1", Report: rep, Kind: rep.Kinds[0]}})
	if !strings.Contains(table, "| k1 | 3 (1) | 3 | 1.42 | 0.389 | 0.467 | 0.333 | 0.000 | 0.667 | 0.333 | 0.71 (1) | 1 / 1 | 3.0 h (3.0 h) |") {
		t.Errorf("table row not as expected:\n%s", table)
	}
}

func TestMeasureNoNegatives(t *testing.T) {
	events, err := Read(strings.NewReader(ev(1, "a", "y", "k", "") + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	rep, err := Measure(events, Run(events, scripted{}), Options{})
	if err != nil {
		t.Fatal(err)
	}
	k := rep.Kinds[0]
	if !math.IsNaN(k.AUC) || !math.IsNaN(k.Recall[0].Recall) || k.AlertRecall != 1 {
		t.Errorf("without benign events AUC and recall at a budget must be undefined: %+v", k)
	}
}

func TestMeasureLengthMismatch(t *testing.T) {
	events := scenario(t)
	if _, err := Measure(events, nil, Options{}); err == nil {
		t.Fatal("Measure accepted fewer verdicts than events")
	}
}

func TestReadRejectsBadLine(t *testing.T) {
	in := ev(0, "a", "x", "", "") + "\n" + `{"time":"2026-01-05T00:00:00Z","destination":{"ip":"10.0.0.1"}}` + "\n"
	_, err := Read(strings.NewReader(in))
	if err == nil || !strings.Contains(err.Error(), "line 2") || !strings.Contains(err.Error(), "service is required") {
		t.Fatalf("err = %v, want line 2: service is required", err)
	}
}

func TestVerdictsRoundTrip(t *testing.T) {
	events := scenario(t)
	verdicts := Run(events, model())
	var buf bytes.Buffer
	if err := WriteVerdicts(&buf, verdicts); err != nil {
		t.Fatal(err)
	}
	if first, _, _ := strings.Cut(buf.String(), "\n"); first != `{"verdict":"allow","mode":"learn","score":0,"reasons":[]}` {
		t.Errorf("first verdict line = %s", first)
	}
	back, err := ReadVerdicts(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if len(back) != len(verdicts) {
		t.Fatalf("read %d verdicts, wrote %d", len(back), len(verdicts))
	}
	for i := range back {
		if back[i] != verdicts[i] {
			t.Errorf("verdict %d = %+v, want %+v", i, back[i], verdicts[i])
		}
	}
}

func TestReadVerdictsErrors(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"bad verdict", `{"verdict":"deny","mode":"monitor","score":1}`, `verdict "deny"`},
		{"no score", `{"verdict":"allow","mode":"monitor"}`, "score is required"},
		{"bad reason", `{"verdict":"alert","mode":"monitor","score":1,"reasons":["odd"]}`, "unknown reason code odd"},
		{"bad mode", `{"verdict":"alert","mode":"watch","score":1}`, `unknown mode "watch"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ReadVerdicts(strings.NewReader("\n" + tt.in + "\n"))
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "line 2") {
				t.Fatalf("err = %v, want line 2 and %q", err, tt.want)
			}
		})
	}
}

func TestDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		12 * time.Second:  "12 s",
		90 * time.Second:  "1.5 min",
		150 * time.Minute: "2.5 h",
	} {
		if got := Duration(d); got != want {
			t.Errorf("Duration(%v) = %q, want %q", d, got, want)
		}
	}
}

func TestShortDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		8 * time.Hour:  "8h",
		72 * time.Hour: "72h",
		// Trailing zeros only go with a zero unit: these lost digits once.
		30 * time.Minute:                "30m",
		90 * time.Minute:                "1h30m",
		10 * time.Second:                "10s",
		20*time.Minute + 10*time.Second: "20m10s",
	} {
		if got := ShortDuration(d); got != want {
			t.Errorf("ShortDuration(%v) = %q, want %q", d, got, want)
		}
	}
}
