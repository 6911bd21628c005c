package flowmodel

import (
	"errors"
	"slices"
	"testing"
	"time"
)

// memStore is a Store in memory that can be told to fail.
type memStore struct {
	services map[string]ServiceRecord
	dests    map[string]map[string]DestinationRecord
	fail     bool
	saves    int
}

func newMemStore() *memStore {
	return &memStore{services: map[string]ServiceRecord{}, dests: map[string]map[string]DestinationRecord{}}
}

func (s *memStore) Load(fn func(ServiceRecord) error) error {
	for name, r := range s.services {
		for _, d := range s.dests[name] {
			r.Destinations = append(r.Destinations, d)
		}
		if err := fn(r); err != nil {
			return err
		}
	}
	return nil
}

func (s *memStore) Save(rs []ServiceRecord) error {
	if s.fail {
		return errors.New("disk full")
	}
	s.saves++
	for _, r := range rs {
		d := s.dests[r.Name]
		if d == nil {
			d = map[string]DestinationRecord{}
			s.dests[r.Name] = d
		}
		for _, k := range r.Removed {
			delete(d, k)
		}
		for _, x := range r.Destinations {
			d[x.Destination] = x
		}
		r.Destinations, r.Removed = nil, nil
		s.services[r.Name] = r
	}
	return nil
}

func (s *memStore) keys(name string) []string {
	var out []string
	for k := range s.dests[name] {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func TestPersisterKeepsChangesAcrossFailures(t *testing.T) {
	m := mustModel(t, Config{MaxDestinations: 2})
	st := newMemStore()
	p := &Persister{Model: m, Store: st, Interval: time.Hour}

	m.Decide(flow("s", "203.0.113.1", 443, "", 0))
	m.Decide(flow("s", "203.0.113.2", 443, "", time.Second))
	st.fail = true
	if err := p.Flush(); err == nil {
		t.Fatal("want the store's error")
	}
	// While the store is down: .1 is evicted by .3, then .1 comes back and evicts .2.
	m.Decide(flow("s", "203.0.113.3", 443, "", 2*time.Second))
	m.Decide(flow("s", "203.0.113.1", 443, "", 3*time.Second))
	if err := p.Flush(); err == nil {
		t.Fatal("want the store's error")
	}
	st.fail = false
	if err := p.Flush(); err != nil {
		t.Fatal(err)
	}
	if got, want := st.keys("s"), []string{"203.0.113.1:443", "203.0.113.3:443"}; !slices.Equal(got, want) {
		t.Fatalf("stored %v, want %v", got, want)
	}
	if st.services["s"].Requests != 4 {
		t.Fatalf("stored requests %d, want 4", st.services["s"].Requests)
	}
	saves := st.saves
	if err := p.Flush(); err != nil || st.saves != saves {
		t.Fatalf("an idle flush wrote to the store (err %v)", err)
	}

	m2 := mustModel(t, Config{MaxDestinations: 2})
	if n, err := m2.Load(st); err != nil || n != 1 {
		t.Fatalf("load: %d, %v", n, err)
	}
	r, _ := m2.Service("s")
	if len(r.Destinations) != 2 || r.Requests != 4 {
		t.Fatalf("loaded %+v", r)
	}
}
