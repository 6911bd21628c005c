package flowmodel

import (
	"context"
	"fmt"
	"time"
)

// Store keeps baselines between runs. Implementations need not be safe for concurrent use:
// the model calls them from one goroutine.
type Store interface {
	// Load calls fn once for every stored service, with all its destinations.
	Load(fn func(ServiceRecord) error) error
	// Save applies records in one transaction: each record's service fields replace the
	// stored ones, its Removed destinations are deleted and then its Destinations written
	// (a destination forgotten and learned again appears in both).
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

// Persister writes a model's changes to a Store in batches, off the request path.
type Persister struct {
	Model *Model
	Store Store
	// Interval between saves; the store is at most this far behind. Default: 1s.
	Interval time.Duration
	// OnError is told of a failed save (the changes are kept and retried). Optional.
	OnError func(error)
	// OnSave is told how many services a successful save wrote. Optional.
	OnSave func(services int)

	pending map[string]ServiceRecord
	order   []string
}

// Run saves every Interval until ctx ends, then saves once more and returns the error of that
// last save, if any.
func (p *Persister) Run(ctx context.Context) error {
	iv := p.Interval
	if iv <= 0 {
		iv = time.Second
	}
	t := time.NewTicker(iv)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return p.Flush()
		case <-t.C:
			if err := p.Flush(); err != nil && p.OnError != nil {
				p.OnError(err)
			}
		}
	}
}

// Flush saves what changed since the last successful save. On failure the changes are kept
// and merged with later ones, so that nothing is lost while the store recovers.
func (p *Persister) Flush() error {
	changes := p.Model.TakeChanges()
	for _, r := range changes {
		p.add(r)
	}
	p.Model.sweepEpisodes(changes)
	if len(p.order) == 0 {
		return nil
	}
	batch := make([]ServiceRecord, 0, len(p.order))
	for _, name := range p.order {
		batch = append(batch, p.pending[name])
	}
	if err := p.Store.Save(batch); err != nil {
		return fmt.Errorf("save %d services: %w", len(batch), err)
	}
	if p.OnSave != nil {
		p.OnSave(len(batch))
	}
	clear(p.pending)
	p.order = p.order[:0]
	return nil
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
