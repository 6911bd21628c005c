package flowmodel

import (
	"context"
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

// auditMem is a memStore that keeps an audit log and fails the services in bad.
type auditMem struct {
	*memStore
	bad   map[string]bool
	audit []AuditRecord
}

func (s *auditMem) SaveAudited(rs []ServiceRecord, audit []AuditRecord) error {
	if s.fail {
		return errors.New("disk full")
	}
	se := SaveErrors{}
	var good []ServiceRecord
	for _, r := range rs {
		if s.bad[r.Name] {
			se[r.Name] = errors.New("key too large")
			continue
		}
		good = append(good, r)
	}
	for i := range audit {
		audit[i].Seq = uint64(len(s.audit) + 1)
		s.audit = append(s.audit, audit[i])
	}
	if err := s.memStore.Save(good); err != nil {
		return err
	}
	if len(se) > 0 {
		return se
	}
	return nil
}

func (s *auditMem) Save(rs []ServiceRecord) error { return s.SaveAudited(rs, nil) }

// TestPersisterIsolatesFailingServices covers issue 10 case 5 at the persister: a service
// the store cannot save keeps failing alone; the others are saved and forgotten; Status
// names the failing one until it saves.
func TestPersisterIsolatesFailingServices(t *testing.T) {
	m := mustModel(t, Config{})
	st := &auditMem{memStore: newMemStore(), bad: map[string]bool{"evil": true}}
	saved := 0
	p := &Persister{Model: m, Store: st, OnSave: func(n int) { saved += n }}
	m.Decide(flow("evil", "203.0.113.1", 443, "", 0))
	m.Decide(flow("good", "203.0.113.2", 443, "", 0))
	var se SaveErrors
	if err := p.Flush(); !errors.As(err, &se) || len(se) != 1 || se["evil"] == nil {
		t.Fatalf("flush: %v", err)
	}
	if _, ok := st.services["good"]; !ok || saved != 1 {
		t.Fatalf("good service not saved (saved %d)", saved)
	}
	s := p.Status()
	if !s.Degraded || len(s.Failing) != 1 || s.Failing[0].Service != "evil" || s.Failing[0].Attempts != 1 || s.Pending != 1 {
		t.Fatalf("status %+v", s)
	}
	// The next flush retries only the failing service.
	m.Decide(flow("good", "203.0.113.3", 443, "", time.Second))
	if err := p.Flush(); err == nil {
		t.Fatal("want the failing service's error again")
	}
	if s := p.Status(); s.Failing[0].Attempts != 2 || s.FailuresInRow != 2 {
		t.Fatalf("status %+v", s)
	}
	if got := st.keys("good"); len(got) != 2 {
		t.Fatalf("good keys %v", got)
	}
	st.bad = nil
	if err := p.Flush(); err != nil {
		t.Fatal(err)
	}
	if s := p.Status(); s.Degraded || len(s.Failing) != 0 || s.Pending != 0 || s.LastSuccess.IsZero() {
		t.Fatalf("status after recovery %+v", s)
	}
	if _, ok := st.services["evil"]; !ok {
		t.Fatal("evil never saved after recovery")
	}
}

// TestPersisterCommit: a committed change is saved with its audit record before Commit
// returns; a change that fails saves nothing; a change the store cannot save stays pending
// with its audit record and is saved with the next flush.
func TestPersisterCommit(t *testing.T) {
	m := mustModel(t, Config{})
	st := &auditMem{memStore: newMemStore()}
	p := &Persister{Model: m, Store: st, Interval: time.Hour}
	m.Decide(flow("svc", "203.0.113.1", 443, "", 0))
	a := &AuditRecord{Action: "mode", Service: "svc"}
	if err := p.Commit("svc", a, func() error { return m.SetMode("svc", ModeChange{Mode: ModeEnforce}) }); err != nil {
		t.Fatal(err)
	}
	if st.services["svc"].Mode != ModeEnforce || len(st.audit) != 1 || a.Seq != 1 {
		t.Fatalf("after commit: mode %s, audit %d, seq %d", st.services["svc"].Mode, len(st.audit), a.Seq)
	}
	boom := errors.New("no")
	if err := p.Commit("svc", &AuditRecord{}, func() error { return boom }); !errors.Is(err, boom) || len(st.audit) != 1 {
		t.Fatalf("failed change: %v, audit %d", err, len(st.audit))
	}
	st.fail = true
	if err := p.Commit("svc", &AuditRecord{Action: "mode"}, func() error { return m.SetMode("svc", ModeChange{Mode: ModeQuarantine}) }); err == nil {
		t.Fatal("want the store's error")
	}
	if s := p.Status(); !s.Degraded || s.PendingAudit != 1 {
		t.Fatalf("status %+v", s)
	}
	st.fail = false
	if err := p.Flush(); err != nil {
		t.Fatal(err)
	}
	if st.services["svc"].Mode != ModeQuarantine || len(st.audit) != 2 {
		t.Fatalf("after recovery: mode %s, audit %d", st.services["svc"].Mode, len(st.audit))
	}
	// A store without an audit log refuses commits.
	p2 := &Persister{Model: m, Store: newMemStore()}
	if err := p2.Commit("svc", &AuditRecord{}, func() error { return nil }); !errors.Is(err, ErrNoAudit) {
		t.Fatalf("commit without audit log: %v", err)
	}
}

// countingStore fails every save and signals each attempt.
type countingStore struct {
	*memStore
	attempts chan time.Time
}

func (s *countingStore) Save([]ServiceRecord) error {
	s.attempts <- time.Now()
	return errors.New("disk full")
}

// TestPersisterBacksOff: failed saves are retried, each after a longer wait (up to
// MaxBackoff), and reported through OnError.
func TestPersisterBacksOff(t *testing.T) {
	m := mustModel(t, Config{})
	st := &countingStore{memStore: newMemStore(), attempts: make(chan time.Time, 16)}
	errs := make(chan error, 16)
	p := &Persister{Model: m, Store: st, Interval: 5 * time.Millisecond, MaxBackoff: 40 * time.Millisecond,
		OnError: func(err error) { errs <- err }}
	m.Decide(flow("svc", "203.0.113.1", 443, "", 0))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	var at []time.Time
	for len(at) < 6 {
		select {
		case a := <-st.attempts:
			at = append(at, a)
		case <-time.After(10 * time.Second):
			t.Fatalf("only %d attempts", len(at))
		}
	}
	cancel()
	<-st.attempts // the last save at shutdown
	if err := <-done; err == nil {
		t.Fatal("Run returned no error for a failing last save")
	}
	// The waits after each failure double from the interval up to MaxBackoff. A loaded
	// machine only stretches them, so check lower bounds.
	for i, min := range []time.Duration{10, 20, 40, 40, 40} {
		if gap := at[i+1].Sub(at[i]); gap < min*time.Millisecond {
			t.Errorf("wait %d: %v, want at least %v", i, gap, min*time.Millisecond)
		}
	}
	if len(errs) < 5 {
		t.Errorf("OnError told %d times", len(errs))
	}
}
