package store

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/meshguard/meshguard/flowmodel"
)

// TestParamsSurviveRestart learns a service's query parameters, saves it through a Persister
// into a real bbolt file, and loads it into a new model: the parameter models come back (an
// injection in a learned parameter still alerts, benign values still pass), and a later save
// that did not change them keeps them.
func TestParamsSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	search := func(at time.Duration, page string) *flowmodel.Flow {
		return &flowmodel.Flow{Time: t0.Add(at), Service: "shop/search", Method: "GET", RequestBytes: -1,
			Path:        "/v1/search?q=blue+hat&page=" + page + "&sort=price",
			Destination: flowmodel.Destination{IP: netip.MustParseAddr("203.0.113.7"), Host: "api.example.com", Port: 443}}
	}
	st, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	m, err := flowmodel.New(flowmodel.Config{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 180 {
		m.Decide(search(time.Duration(i)*time.Minute, fmt.Sprint(1+i%9)))
	}
	p := &flowmodel.Persister{Model: m, Store: st}
	if err := p.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := m.SetMode("shop/search", flowmodel.ModeChange{Mode: flowmodel.ModeMonitor}); err != nil {
		t.Fatal(err)
	}
	m.Decide(search(3*time.Hour, "5")) // a save without new models
	m2 := restart(t, dir, st, m, flowmodel.Config{}, 1)
	// Without its models, the service would find every parameter new: benign values pass
	// only if they came back.
	if v := m2.Decide(search(3*time.Hour+time.Minute, "7")); v.Action != flowmodel.Allow {
		t.Fatalf("benign after restart: %s %v", v.Action, v.Reasons.Strings())
	}
	if v := m2.Decide(search(3*time.Hour+2*time.Minute, "7%27%20OR%20%271%27%3D%271")); !v.Reasons.Has(flowmodel.ReasonParameterValue) || v.Param != "page" {
		t.Fatalf("injection after restart: %s %v param %q", v.Action, v.Reasons.Strings(), v.Param)
	}
}
