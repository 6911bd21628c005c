package flowmodel

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
)

// Store keeps baselines between runs. Implementations need not be safe for concurrent use:
// the model's Persister calls them under its own lock.
type Store interface {
	// Load calls fn once for every stored service, with all its destinations.
	Load(fn func(ServiceRecord) error) error
	// Save applies records: each record's service fields replace the stored ones, its
	// Removed destinations are deleted and then its Destinations written (a destination
	// forgotten and learned again appears in both). One record that cannot be saved must
	// not keep the others from being saved: the store then returns SaveErrors naming the
	// services not saved; any other error means nothing was saved.
	Save(records []ServiceRecord) error
}

// Load restores every service in st into m. Call it before m serves flows.
func (m *Model) Load(st Store) (int, error) {
	n := 0
	err := st.Load(func(r ServiceRecord) error {
		n++
		return m.Restore(r)
	})
	if err != nil {
		return n, fmt.Errorf("load baselines: %w", err)
	}
	return n, nil
}

// Persister writes a model's changes to a Store in batches, off the request path, and
// operators' changes at once (Commit). Its methods are safe for concurrent use.
type Persister struct {
	Model *Model
	Store Store
	// Interval between saves; the store is at most this far behind while saves succeed.
	// Default: 1s.
	Interval time.Duration
	// MaxBackoff bounds the wait between retries after failed saves: the wait doubles from
	// Interval with every failure in a row, up to MaxBackoff. Default: 30s.
	MaxBackoff time.Duration
	// OnError is told of every failed save (the changes are kept and retried). Optional.
	OnError func(error)
	// OnSave is told how many services a save wrote. Optional.
	OnSave func(services int)
	// Now is the wall clock of Status. Default: time.Now.
	Now func() time.Time

	mu      sync.Mutex
	pending map[string]ServiceRecord
	order   []string
	audits  []*AuditRecord // audit records not saved yet
	status  status
}

type status struct {
	failing     map[string]ServiceFailure
	lastErr     error
	lastErrAt   time.Time
	lastSuccess time.Time
	failures    int // failed saves in a row
}

// ServiceFailure is a service whose changes could not be saved.
type ServiceFailure struct {
	Service  string    `json:"service"`
	Error    string    `json:"error"`
	Since    time.Time `json:"since"`
	Attempts int       `json:"attempts"`
}

// PersistStatus is the persister's state, for a readiness probe.
type PersistStatus struct {
	// Degraded is set while some changes are not saved.
	Degraded bool `json:"degraded"`
	// Failing lists the services whose last save failed, sorted by name.
	Failing []ServiceFailure `json:"failing,omitempty"`
	// Pending counts the services with unsaved changes, PendingAudit the audit records.
	Pending      int `json:"pending"`
	PendingAudit int `json:"pending_audit,omitempty"`
	// FailuresInRow counts failed saves since the last one that succeeded in full.
	FailuresInRow int       `json:"failures_in_row,omitempty"`
	LastError     string    `json:"last_error,omitempty"`
	LastErrorAt   time.Time `json:"last_error_at,omitzero"`
	LastSuccess   time.Time `json:"last_success,omitzero"`
}

// Status reports what is saved and what is not.
func (p *Persister) Status() PersistStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := PersistStatus{
		Pending: len(p.order), PendingAudit: len(p.audits), FailuresInRow: p.status.failures,
		LastErrorAt: p.status.lastErrAt, LastSuccess: p.status.lastSuccess,
	}
	if p.status.lastErr != nil {
		st.LastError = p.status.lastErr.Error()
	}
	for _, f := range p.status.failing {
		st.Failing = append(st.Failing, f)
	}
	slices.SortFunc(st.Failing, func(a, b ServiceFailure) int {
		switch {
		case a.Service < b.Service:
			return -1
		case a.Service > b.Service:
			return 1
		}
		return 0
	})
	st.Degraded = len(st.Failing) > 0 || p.status.failures > 0 || len(p.audits) > 0
	return st
}

// Run saves every Interval until ctx ends, then saves once more and returns the error of that
// last save, if any. After a failed save it waits longer before the next (see MaxBackoff).
func (p *Persister) Run(ctx context.Context) error {
	iv := p.Interval
	if iv <= 0 {
		iv = time.Second
	}
	maxWait := p.MaxBackoff
	if maxWait <= 0 {
		maxWait = 30 * time.Second
	}
	wait := iv
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return p.Flush()
		case <-t.C:
			if err := p.Flush(); err != nil {
				if p.OnError != nil {
					p.OnError(err)
				}
				wait = min(2*wait, maxWait)
			} else {
				wait = iv
			}
			t.Reset(wait)
		}
	}
}

// Flush saves what changed since the last successful save. On failure the changes are kept
// and merged with later ones, so that nothing is lost while the store recovers; when the
// store saved some services and not others (SaveErrors), only the others are kept.
func (p *Persister) Flush() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.flush()
}

// ErrNoAudit is returned by Commit when the Store cannot keep an audit log.
var ErrNoAudit = errors.New("the store keeps no audit log")

// Commit applies an operator's change and makes it durable before it returns: change runs
// (and may fail, then nothing is saved), then every pending change, the changed service's
// among them, is saved with the audit record a in one transaction synced to disk. A nil
// error means the change and its audit record survive a crash. An error after change
// succeeded means the change is in the model but not yet on disk: it and its audit record
// stay pending and are retried with the next save. Store must be an AuditStore.
//
// Commit holds the persister's lock while change runs, so that no batch taken before the
// change is saved after it.
func (p *Persister) Commit(service string, a *AuditRecord, change func() error) error {
	if _, ok := p.Store.(AuditStore); !ok {
		return ErrNoAudit
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := change(); err != nil {
		return err
	}
	p.audits = append(p.audits, a)
	err := p.flush()
	var se SaveErrors
	if errors.As(err, &se) {
		if e, bad := se[service]; bad {
			return fmt.Errorf("service %q: %w", service, e)
		}
		return nil // saved, with the audit record; others failed
	}
	return err
}

// flush saves with p.mu held.
func (p *Persister) flush() error {
	changes := p.Model.TakeChanges()
	for _, r := range changes {
		p.add(r)
	}
	p.Model.sweepEpisodes(changes)
	if len(p.order) == 0 && len(p.audits) == 0 {
		return nil
	}
	batch := make([]ServiceRecord, 0, len(p.order))
	for _, name := range p.order {
		batch = append(batch, p.pending[name])
	}
	var err error
	if len(p.audits) > 0 {
		as, ok := p.Store.(AuditStore)
		if !ok {
			return ErrNoAudit
		}
		recs := make([]AuditRecord, len(p.audits))
		for i, a := range p.audits {
			recs[i] = *a
		}
		if err = as.SaveAudited(batch, recs); err == nil || isSaveErrors(err) {
			for i, a := range p.audits {
				a.Seq = recs[i].Seq
			}
			p.audits = p.audits[:0]
		}
	} else {
		err = p.Store.Save(batch)
	}
	now := p.now()
	if err == nil {
		p.saved(batch, nil)
		p.status.failures = 0
		p.status.lastSuccess = now
		clear(p.status.failing)
		return nil
	}
	p.status.failures++
	p.status.lastErr, p.status.lastErrAt = err, now
	var se SaveErrors
	if !errors.As(err, &se) {
		// Nothing was saved: every pending service is failing.
		se = make(SaveErrors, len(p.order))
		for _, name := range p.order {
			se[name] = err
		}
		p.fail(se, now)
		return fmt.Errorf("save %d services: %w", len(batch), err)
	}
	p.saved(batch, se)
	p.fail(se, now)
	return fmt.Errorf("save %d services: %w", len(batch), err)
}

func isSaveErrors(err error) bool {
	var se SaveErrors
	return errors.As(err, &se)
}

func (p *Persister) now() time.Time {
	if p.Now != nil {
		return p.Now()
	}
	return time.Now()
}

// saved forgets the pending changes of the services in batch that are not in failed.
func (p *Persister) saved(batch []ServiceRecord, failed SaveErrors) {
	n := 0
	kept := p.order[:0]
	for _, name := range p.order {
		if _, bad := failed[name]; bad {
			kept = append(kept, name)
			continue
		}
		delete(p.pending, name)
		if p.status.failing != nil {
			delete(p.status.failing, name)
		}
		n++
	}
	p.order = kept
	if p.OnSave != nil && n > 0 {
		p.OnSave(n)
	}
}

func (p *Persister) fail(se SaveErrors, now time.Time) {
	if p.status.failing == nil {
		p.status.failing = make(map[string]ServiceFailure)
	}
	for name, err := range se {
		f, ok := p.status.failing[name]
		if !ok {
			f = ServiceFailure{Service: name, Since: now}
		}
		f.Error = err.Error()
		f.Attempts++
		p.status.failing[name] = f
	}
}

// add merges a change into the pending batch: later fields win; a destination removed and
// then re-learned is written, one learned and then removed is deleted; a destination's
// shapes are those of its latest record.
func (p *Persister) add(r ServiceRecord) {
	if p.pending == nil {
		p.pending = make(map[string]ServiceRecord)
	}
	old, ok := p.pending[r.Name]
	if !ok {
		p.pending[r.Name] = r
		p.order = append(p.order, r.Name)
		return
	}
	if r.Params == nil {
		r.Params = old.Params // unchanged since the pending record's models
	}
	if r.Rates == nil {
		r.Rates = old.Rates // not due since the pending record's states
	}
	dests := make(map[string]DestinationRecord, len(old.Destinations)+len(r.Destinations))
	shapes := make(map[string][]ShapeRecord)
	removed := make(map[string]bool, len(old.Removed)+len(r.Removed))
	for _, d := range old.Destinations {
		dests[d.Destination] = d
	}
	for _, sh := range old.Shapes {
		shapes[sh.Destination] = append(shapes[sh.Destination], sh)
	}
	for _, k := range old.Removed {
		removed[k] = true
	}
	for _, k := range r.Removed {
		delete(dests, k)
		delete(shapes, k)
		removed[k] = true
	}
	for _, d := range r.Destinations {
		delete(removed, d.Destination)
		dests[d.Destination] = d
		delete(shapes, d.Destination)
	}
	for _, sh := range r.Shapes {
		shapes[sh.Destination] = append(shapes[sh.Destination], sh)
	}
	r.Destinations = r.Destinations[:0]
	for _, d := range dests {
		r.Destinations = append(r.Destinations, d)
	}
	r.Shapes = nil
	for _, list := range shapes {
		r.Shapes = append(r.Shapes, list...)
	}
	r.Removed = r.Removed[:0]
	for k := range removed {
		r.Removed = append(r.Removed, k)
	}
	p.pending[r.Name] = r
}
