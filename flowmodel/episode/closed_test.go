package episode

import (
	"testing"
	"time"
)

func TestClosedFor(t *testing.T) {
	tr, err := New(Config{QuietGap: time.Minute, KeepClosed: 4})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC)
	// Seven alerts alternate between two services an hour apart: each opens an episode and
	// closes the one before of its service.
	for i := range 7 {
		svc := []string{"a", "b"}[i%2]
		tr.Observe(Alert{Service: svc, Kind: "burst", Time: t0.Add(time.Duration(i) * time.Hour)})
	}
	// Closed, oldest first: a1 b2 a3 b4 a5 (ring of 4 keeps b2 a3 b4 a5).
	got := tr.ClosedFor("a", 0)
	if len(got) != 2 || got[0].ID != 5 || got[1].ID != 3 {
		t.Fatalf("closed of a: %+v", got)
	}
	if got := tr.ClosedFor("b", 1); len(got) != 1 || got[0].ID != 4 {
		t.Fatalf("latest closed of b: %+v", got)
	}
	if got := tr.ClosedFor("c", 0); len(got) != 0 {
		t.Fatalf("closed of c: %+v", got)
	}
}
