package flowmodel

import (
	"fmt"
	"hash/maphash"
	"strconv"
	"strings"

	"github.com/meshguard/meshguard/flowmodel/param"
	"github.com/meshguard/meshguard/flowmodel/shape"
)

// Parameter values (issue 11): a service's query parameters and body key paths are learned
// per endpoint (param.ScopeOf of the destination's hash and the key of the method and path
// template, see endpointKey) while the service learns, and judged on every request of a
// known shape afterwards. A value that breaks its
// parameter's model raises parameter_value, with the parameter's name in Verdict.Param.
//
// A request of a new shape is not judged here: new_shape already alerts on it. A service that
// never sent parameters while learning has an empty Set: every parameter of a known shape is
// then a name never seen (a body sent once body inspection is turned on after learning
// alerts until the service learns again).

// DefaultMaxBodyBytes is the default of Config.Params.Limits.MaxBodyBytes (max-body-bytes):
// how much of a request body is read for parameter values.
const DefaultMaxBodyBytes = 8192

// paramState is a service's parameter value models. Guarded by the service's mutex.
type paramState struct {
	set   *param.Set // nil until the service's first request with parameters
	dirty bool       // learned since the last save
	last  string     // the parameter named by the latest judgement
	// clean remembers the scores of requests that fit their models, once the service judges.
	clean *[cleanSlots]cleanEntry
}

// cleanEntry is a request that fitted its models: its keyed hash and its score.
type cleanEntry struct {
	hash  uint64
	score float64
}

// cleanSlots is the size of a service's memory of requests that fit their models: a
// direct-mapped table (256 bytes a service that judges).
const cleanSlots = 16

// cleanSeed keys the hashes of the clean table: random per process, so that a workload cannot
// craft a request whose hash is that of a clean one.
var cleanSeed = maphash.MakeSeed()

// requestHash is the keyed hash of what the models read of f in scope: its query, body,
// content type (all of it: a multipart boundary says where the fields are) and truncation.
// Never 0.
func requestHash(scope uint64, f *Flow) uint64 {
	q := f.Path
	if i := strings.IndexByte(q, '?'); i >= 0 {
		q = q[i+1:]
	}
	h := maphash.String(cleanSeed, q)
	if f.Body != "" || f.BodyTruncated {
		h = h*0x9e3779b97f4a7c15 ^ maphash.String(cleanSeed, f.Body)
		h = h*0x9e3779b97f4a7c15 ^ maphash.String(cleanSeed, f.ContentType)
		if f.BodyTruncated {
			h = ^h
		}
	}
	h = (h ^ scope) * 0xbf58476d1ce4e5b9
	return h | 1
}

// checkParamsEpisodes applies the defaults of the Params and Episodes settings and appends
// their problems to errs.
func (c *Config) checkParamsEpisodes(errs []error) []error {
	if c.Params.Limits.MaxBodyBytes == 0 {
		c.Params.Limits.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if c.Episodes.MaxServices == 0 && c.MaxServices > 0 {
		c.Episodes.MaxServices = c.MaxServices
	}
	var err error
	if c.Params, err = c.Params.Check(); err != nil {
		errs = append(errs, fmt.Errorf("parameter values: %w", err))
	}
	if c.Episodes, err = c.Episodes.Check(); err != nil {
		errs = append(errs, fmt.Errorf("alert episodes: %w", err))
	}
	return errs
}

// hasParams reports whether f carries anything the parameter models read.
func hasParams(f *Flow) bool {
	return f.Body != "" || f.BodyTruncated || strings.IndexByte(f.Path, '?') >= 0
}

// scoreParams learns (while learning) or judges the parameter values of f, a request of
// shape k on destination e. Call with s.mu held.
func (m *Model) scoreParams(s *service, e *destEntry, k shape.Key, f *Flow, learning bool, sc *scores) {
	if m.cfg.Disabled.Has(ReasonParameterValue) || !hasParams(f) {
		return
	}
	if s.par.set == nil {
		// Check has validated the configuration: New cannot fail.
		s.par.set, _ = param.New(m.cfg.Params)
	}
	req := param.Request{Query: f.Path, Body: f.Body, ContentType: f.ContentType, BodyTruncated: f.BodyTruncated}
	if learning {
		if s.par.set.Learn(param.ScopeOf(e.hash, uint64(m.endpointKey(f))), &req) {
			s.par.dirty = true
			s.par.clean = nil // the models changed: forget what fitted them
		}
		return
	}
	// The models do not change out of learning: a request judged below the alarm scores the
	// same again. Repeated requests (the same enum values, the same query) skip the parsing;
	// a request at or above the alarm is judged every time (and names its parameter).
	// The shape key names the endpoint (its method and path template are part of it), so
	// it keys the memory of clean requests without templating the path a second time.
	h := requestHash(param.ScopeOf(e.hash, uint64(k)), f)
	if s.par.clean == nil {
		s.par.clean = new([cleanSlots]cleanEntry)
	}
	slot := &s.par.clean[h%cleanSlots]
	if slot.hash == h {
		sc.add(ReasonParameterValue, slot.score)
		return
	}
	r := s.par.set.Judge(param.ScopeOf(e.hash, uint64(m.endpointKey(f))), &req)
	sc.add(ReasonParameterValue, r.Score)
	if r.Score >= alarmLevel {
		s.par.last = r.Param
		return
	}
	*slot = cleanEntry{hash: h, score: r.Score}
}

// record returns the models for a save (all false): only when they changed since the last
// one (and then forgets that they did). A full record (the admin API's) leaves them out: they
// can take most of a megabyte per service.
func (p *paramState) record(all bool) *param.Snapshot {
	if all || p.set == nil || !p.dirty {
		return nil
	}
	p.dirty = false
	snap := p.set.Snapshot()
	return &snap
}

// restoreParams loads stored parameter models into s.
func (m *Model) restoreParams(s *service, snap *param.Snapshot) error {
	if snap == nil {
		return nil
	}
	if snap.Version == 1 {
		migrated := m.migrateParamsV1(s, *snap)
		snap = &migrated
		s.par.dirty = true // saved as version 2 at the next flush
	}
	set, err := param.Restore(m.cfg.Params, *snap)
	if err != nil {
		return fmt.Errorf("parameter models: %w", err)
	}
	s.par.set, s.par.clean = set, nil
	return nil
}

// migrateParamsV1 rekeys a version 1 snapshot, whose scopes were request shapes (a
// destination and a shape key), to version 2's endpoints (the destination, and the method and
// path template of the shape), from the service's restored shapes: the models of one
// endpoint's shapes merge. A scope whose shape the service no longer has is dropped. Without
// this a store written before version 2 would stop meshguard at start, or leave every
// parameter of every service a name never seen. Call with the service's destinations and
// shapes restored.
func (m *Model) migrateParamsV1(s *service, snap param.Snapshot) param.Snapshot {
	rekey := map[uint64]uint64{}
	for _, e := range s.dests.Values() {
		if e.edge == nil {
			continue
		}
		for _, in := range e.edge.info {
			f := Flow{Method: in.method.Value(), Path: in.path.Value()}
			rekey[param.ScopeOf(e.hash, uint64(in.key))] = param.ScopeOf(e.hash, uint64(m.endpointKey(&f)))
		}
	}
	out := snap
	out.Version, out.Scopes = param.SnapshotVersion, nil
	for _, sc := range snap.Scopes {
		k, err := strconv.ParseUint(sc.Key, 16, 64)
		nk, ok := rekey[k]
		if err != nil || !ok {
			continue
		}
		sc.Key = fmt.Sprintf("%016x", nk)
		out.Scopes = append(out.Scopes, sc)
	}
	return out
}

// endpointKey is the key of f's endpoint: its method and path template, without what else
// its shape holds (query keys, header names, media type, body size class). Parameters are
// named already, and a body is read as what it is, so one endpoint's parameters are learned
// in one scope however its requests vary in those: a longer comment, an extra header, a
// form sent as multipart do not split its models into scopes that each learned less.
func (m *Model) endpointKey(f *Flow) shape.Key {
	path := f.Path
	if i := strings.IndexByte(path, '?'); i >= 0 {
		path = path[:i]
	}
	return m.shaper.Key(&shape.Request{Method: f.Method, Path: path, BodyBytes: -1})
}

// scoreNewShapeParams judges the parameter values of f, a request of a shape its destination
// never had, when its endpoint (method and path template) has learned models: a new shape
// there (a body grown into another size class, a header added) must not carry an injection
// past the models of the endpoint's parameters, where parameter_value may block. A request
// to an endpoint without models is new_shape's alone. Call with s.mu held.
func (m *Model) scoreNewShapeParams(s *service, e *destEntry, k shape.Key, f *Flow, sc *scores) {
	if s.par.set == nil || m.cfg.Disabled.Has(ReasonParameterValue) || !hasParams(f) {
		return
	}
	if s.par.set.Has(param.ScopeOf(e.hash, uint64(m.endpointKey(f)))) {
		m.scoreParams(s, e, k, f, false, sc)
	}
}
