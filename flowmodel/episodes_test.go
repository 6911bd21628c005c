package flowmodel

import (
	"testing"
	"time"
)

// TestAlertStormIsOneEpisode: a storm of alerts of one kind to one destination is one episode
// (opened by its first alert, extended by the others); an alert of another kind or to another
// destination is another; after the quiet gap the same alerts open a new one, and a flush
// sweeps an episode that has ended.
func TestAlertStormIsOneEpisode(t *testing.T) {
	m := learnParams(t, Config{}, ModeMonitor)
	storm := func(at time.Duration) *Flow {
		f := paramFlow(at, "GET", "/v1/search?q=blue+hat&page=2&sort=price", "")
		f.Destination.Host, f.Destination.IP = "c2.example.net", f.Destination.IP.Next()
		f.TraceID = [16]byte{15: byte(at / time.Second)}
		return f
	}
	h := 4 * time.Hour
	var first Verdict
	for i := range 200 {
		v := m.Decide(storm(h + time.Duration(i)*time.Second))
		if v.Action != Alert || v.Episode == 0 || v.EpisodeKind != ReasonNewDestination {
			t.Fatalf("alert %d: %s episode %d kind %s", i, v.Action, v.Episode, v.EpisodeKind)
		}
		if i == 0 {
			first = v
		}
		if v.Episode != first.Episode || v.EpisodeNew != (i == 0) {
			t.Fatalf("alert %d: episode %d new %t, want %d new %t", i, v.Episode, v.EpisodeNew, first.Episode, i == 0)
		}
	}
	// An injection on the known destination is an episode of its own.
	inj := m.Decide(searchAt(h-3*time.Hour+5*time.Minute, "2%27%20OR%20%271%27%3D%271"))
	if !inj.EpisodeNew || inj.Episode == first.Episode || inj.EpisodeKind != ReasonParameterValue {
		t.Fatalf("injection: episode %d new %t kind %s", inj.Episode, inj.EpisodeNew, inj.EpisodeKind)
	}
	// Allowed requests are in no episode.
	if v := m.Decide(searchAt(h-3*time.Hour+6*time.Minute, "3")); v.Action != Allow || v.Episode != 0 {
		t.Fatalf("benign: %s episode %d", v.Action, v.Episode)
	}

	open, _ := m.Episodes("shop/search")
	if len(open) != 2 || open[0].ID != first.Episode || open[0].Count != 200 || open[0].Destination != "c2.example.net:443" ||
		open[0].Examples[0] == "" || open[0].Kind != "new_destination" {
		t.Fatalf("open episodes: %+v", open)
	}

	// A flush sweeps with the latest event time it saw: two hours on, both have ended.
	p := &Persister{Model: m, Store: newMemStore()}
	m.Decide(searchAt(3*time.Hour, "4"))
	if err := p.Flush(); err != nil {
		t.Fatal(err)
	}
	if open, closed := m.Episodes("shop/search"); len(open) != 0 || len(closed) != 2 {
		t.Fatalf("after the sweep: %d open, %d closed", len(open), len(closed))
	}
	if v := m.Decide(storm(h + 3*time.Hour)); !v.EpisodeNew || v.Episode == first.Episode {
		t.Fatalf("after the quiet gap: episode %d new %t", v.Episode, v.EpisodeNew)
	}
}

func TestLearningOpensNoEpisode(t *testing.T) {
	m := mustModel(t, Config{})
	if v := m.Decide(paramFlow(0, "GET", "/v1/search?q=x", "")); v.Episode != 0 {
		t.Fatalf("learning: episode %d", v.Episode)
	}
	if open, closed := m.Episodes("shop/search"); len(open)+len(closed) != 0 {
		t.Fatalf("episodes %v %v", open, closed)
	}
}

// TestEpisodeKindIsStable: the kind of an alert is the same while reasons join it.
func TestEpisodeKindIsStable(t *testing.T) {
	for _, c := range []struct {
		name string
		rs   Reasons
		want Reason
	}{
		{"new shape", Reasons(0).With(ReasonNewShape), ReasonNewShape},
		{"new shape, then a rate spike too", Reasons(0).With(ReasonRateSpike).With(ReasonNewShape), ReasonNewShape},
		{"destination first", Reasons(0).With(ReasonParameterValue).With(ReasonNewDestination), ReasonNewDestination},
		{"volume", Reasons(0).With(ReasonVolumeSpike).With(ReasonBurst), ReasonBurst},
	} {
		if got := episodeKind(c.rs); got != c.want {
			t.Errorf("%s: %s, want %s", c.name, got, c.want)
		}
	}
}
