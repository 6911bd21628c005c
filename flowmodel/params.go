package flowmodel

import (
	"fmt"
	"strings"

	"github.com/meshguard/meshguard/flowmodel/param"
	"github.com/meshguard/meshguard/flowmodel/shape"
)

// Parameter values (issue 11): a service's query parameters and body key paths are learned
// per endpoint (param.ScopeOf of the destination's hash and the shape key) while the service
// learns, and judged on every request of a known shape afterwards. A value that breaks its
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
	scope := param.ScopeOf(e.hash, uint64(k))
	if learning {
		if s.par.set.Learn(scope, &req) {
			s.par.dirty = true
		}
		return
	}
	r := s.par.set.Judge(scope, &req)
	if r.Score > 0 {
		sc.add(ReasonParameterValue, r.Score)
		s.par.last = r.Param
	}
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
	set, err := param.Restore(m.cfg.Params, *snap)
	if err != nil {
		return fmt.Errorf("parameter models: %w", err)
	}
	s.par.set = set
	return nil
}
