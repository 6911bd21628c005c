package flowmodel

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// Config tunes a Model. The zero value of a field means its default.
type Config struct {
	// DefaultMode is the mode of a service seen for the first time. Default: learn.
	DefaultMode Mode
	// LearnWindow and LearnMinRequests: a service in learn mode is promoted to AfterLearning
	// once it has been learning for LearnWindow of event time AND has made LearnMinRequests
	// requests. Defaults: 24h and 100. A negative value means zero.
	LearnWindow      time.Duration
	LearnMinRequests int64
	// AfterLearning is the mode a service is promoted to. Default: monitor.
	AfterLearning Mode
	// MaxDestinations caps the destinations remembered per service; the least recently used
	// one is forgotten first. Default: 4096.
	MaxDestinations int
	// MaxServices caps the services tracked. Flows of services beyond the cap are decided as
	// for an empty baseline in DefaultMode and teach nothing. Default: 100,000.
	MaxServices int
}

// Defaults used for zero Config fields.
const (
	DefaultLearnWindow      = 24 * time.Hour
	DefaultLearnMinRequests = 100
	DefaultMaxDestinations  = 4096
	DefaultMaxServices      = 100_000
)

// Check applies defaults and reports every problem in c.
func (c Config) Check() (Config, error) {
	var errs []error
	if c.DefaultMode == 0 {
		c.DefaultMode = ModeLearn
	}
	if c.AfterLearning == 0 {
		c.AfterLearning = ModeMonitor
	}
	switch {
	case c.LearnWindow == 0:
		c.LearnWindow = DefaultLearnWindow
	case c.LearnWindow < 0:
		c.LearnWindow = 0
	}
	switch {
	case c.LearnMinRequests == 0:
		c.LearnMinRequests = DefaultLearnMinRequests
	case c.LearnMinRequests < 0:
		c.LearnMinRequests = 0
	}
	if c.MaxDestinations == 0 {
		c.MaxDestinations = DefaultMaxDestinations
	}
	if c.MaxServices == 0 {
		c.MaxServices = DefaultMaxServices
	}
	if !c.DefaultMode.Valid() {
		errs = append(errs, fmt.Errorf("default mode: invalid mode %d", c.DefaultMode))
	}
	if !c.AfterLearning.Valid() || c.AfterLearning == ModeLearn {
		errs = append(errs, fmt.Errorf("after-learning mode must be monitor, enforce or quarantine, not %s", c.AfterLearning))
	}
	if c.MaxDestinations < 0 {
		errs = append(errs, fmt.Errorf("max destinations per service must be positive, got %d", c.MaxDestinations))
	}
	if c.MaxServices < 0 {
		errs = append(errs, fmt.Errorf("max services must be positive, got %d", c.MaxServices))
	}
	return c, errors.Join(errs...)
}

// Model holds the baselines of all services. It is safe for concurrent use; Decide and
// Observe never block on I/O.
type Model struct {
	cfg Config

	mu       sync.RWMutex
	services map[string]*service

	dirtyMu sync.Mutex
	dirty   []*service // services with unsaved changes, each once
}

// New returns an empty model.
func New(cfg Config) (*Model, error) {
	cfg, err := cfg.Check()
	if err != nil {
		return nil, err
	}
	return &Model{cfg: cfg, services: make(map[string]*service)}, nil
}

// Config returns the model's configuration with defaults applied.
func (m *Model) Config() Config { return m.cfg }

// destKey identifies a destination in a baseline: a host name or an IP, with a port.
type destKey struct {
	host string
	ip   netip.Addr
	port uint16
}

func (k destKey) String() string {
	if k.host != "" {
		return joinHostPort(k.host, k.port)
	}
	return netip.AddrPortFrom(k.ip, k.port).String()
}

func parseDestKey(s string) (destKey, error) {
	d, err := ParseDestination(s)
	if err != nil {
		return destKey{}, err
	}
	if d.IP.IsValid() {
		return destKey{ip: d.IP, port: d.Port}, nil
	}
	return destKey{host: d.Host, port: d.Port}, nil
}

type destEntry struct {
	key         destKey
	count       int64
	first, last time.Time
	source      string
	dirty       bool // queued in service.dirtyDests
	evicted     bool
}

type service struct {
	name string

	mu            sync.Mutex
	mode          Mode
	modeSetBy     string
	modeChanged   time.Time
	learnStart    time.Time
	learnRequests int64
	requests      int64
	alerted       int64
	blocked       int64
	first, last   time.Time
	dests         *simplelru.LRU[destKey, *destEntry]
	allow         map[destKey]struct{} // quarantine allow list

	queued     bool // in Model.dirty
	dirtyDests []*destEntry
	removed    []destKey
}

func (m *Model) newService(name string) *service {
	s := &service{name: name, mode: m.cfg.DefaultMode}
	// NewLRU fails only for a non-positive size, which Check rules out.
	s.dests, _ = simplelru.NewLRU(m.cfg.MaxDestinations, func(k destKey, e *destEntry) {
		e.evicted = true
		s.removed = append(s.removed, k)
	})
	return s
}

// lookup returns the named service, creating it when create is set. It returns nil when the
// service is unknown and not created, or when MaxServices is reached.
func (m *Model) lookup(name string, create bool) *service {
	m.mu.RLock()
	s := m.services[name]
	m.mu.RUnlock()
	if s != nil || !create {
		return s
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if s = m.services[name]; s != nil {
		return s
	}
	if len(m.services) >= m.cfg.MaxServices {
		return nil
	}
	s = m.newService(name)
	m.services[name] = s
	return s
}

// markDirty queues s for the next save. Call with s.mu held.
func (m *Model) markDirty(s *service) {
	if s.queued {
		return
	}
	s.queued = true
	m.dirtyMu.Lock()
	m.dirty = append(m.dirty, s)
	m.dirtyMu.Unlock()
}

// Decide returns the verdict for f and, in learn mode, records f in its service's baseline.
func (m *Model) Decide(f *Flow) Verdict {
	if f.Service == "" || !f.Destination.Valid() {
		return Verdict{Action: Alert, Score: 1, Reasons: Reasons(0).With(ReasonInvalidRequest)}
	}
	s := m.lookup(f.Service, true)
	if s == nil {
		return m.decideUntracked()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests++
	if s.first.IsZero() || f.Time.Before(s.first) {
		s.first = f.Time
	}
	if f.Time.After(s.last) {
		s.last = f.Time
	}
	m.markDirty(s)

	v := Verdict{Mode: s.mode}
	switch s.mode {
	case ModeLearn:
		m.learn(s, f)
		m.maybePromote(s, f.Time)
	case ModeMonitor, ModeEnforce:
		if !m.seen(s, f) {
			v.Score = 1
			v.Reasons = v.Reasons.With(ReasonNewDestination)
			v.Action = Alert
			if s.mode == ModeEnforce {
				v.Action = Block
			}
		}
	case ModeQuarantine:
		if !s.allowed(f.Destination) {
			v.Action, v.Score, v.Reasons = Block, 1, v.Reasons.With(ReasonQuarantined)
		}
	}
	switch v.Action {
	case Alert:
		s.alerted++
	case Block:
		s.blocked++
	}
	return v
}

func (m *Model) decideUntracked() Verdict {
	v := Verdict{Mode: m.cfg.DefaultMode}
	switch m.cfg.DefaultMode {
	case ModeMonitor:
		v.Action, v.Score, v.Reasons = Alert, 1, v.Reasons.With(ReasonNewDestination)
	case ModeEnforce:
		v.Action, v.Score, v.Reasons = Block, 1, v.Reasons.With(ReasonNewDestination)
	case ModeQuarantine:
		v.Action, v.Score, v.Reasons = Block, 1, v.Reasons.With(ReasonQuarantined)
	}
	return v
}

// Observe records what is known of f once its response arrives: in learn mode, the upstream
// address Envoy connected to. It never changes a verdict.
func (m *Model) Observe(f *Flow) {
	if f.Service == "" || !f.Upstream.IsValid() {
		return
	}
	s := m.lookup(f.Service, false)
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mode != ModeLearn {
		return
	}
	k := destKey{ip: NormalizeIP(f.Upstream.Addr()), port: f.Upstream.Port()}
	m.record(s, k, f.Time, sourceOr(f.Source, "upstream"))
	m.markDirty(s)
}

func sourceOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// keys returns the baseline keys for d: the IP key, the host key, or both.
func keys(d Destination) (ipKey, hostKey destKey, hasIP, hasHost bool) {
	if d.IP.IsValid() {
		ipKey, hasIP = destKey{ip: d.IP, port: d.Port}, true
	}
	if d.Host != "" {
		hostKey, hasHost = destKey{host: d.Host, port: d.Port}, true
	}
	return
}

// learn records both the IP and the host of f's destination. Call with s.mu held.
func (m *Model) learn(s *service, f *Flow) {
	ipKey, hostKey, hasIP, hasHost := keys(f.Destination)
	src := sourceOr(f.Source, "flow")
	if hasIP {
		m.record(s, ipKey, f.Time, src)
	}
	if hasHost {
		m.record(s, hostKey, f.Time, src)
	}
	if s.learnStart.IsZero() {
		s.learnStart = f.Time
	}
	s.learnRequests++
}

func (m *Model) record(s *service, k destKey, t time.Time, src string) {
	e, ok := s.dests.Get(k)
	if !ok {
		e = &destEntry{key: k, first: t, last: t, source: src}
		s.dests.Add(k, e)
	}
	touch(s, e, t)
}

func touch(s *service, e *destEntry, t time.Time) {
	e.count++
	if t.After(e.last) {
		e.last = t
	}
	if t.Before(e.first) {
		e.first = t
	}
	if !e.dirty {
		e.dirty = true
		s.dirtyDests = append(s.dirtyDests, e)
	}
}

// seen reports whether f's destination is in the baseline, counting the use if so. When the
// flow names an IP, the IP decides: a known host name sent to an unknown IP is not known.
// Call with s.mu held.
func (m *Model) seen(s *service, f *Flow) bool {
	ipKey, hostKey, hasIP, hasHost := keys(f.Destination)
	var e *destEntry
	var ok bool
	if hasIP {
		e, ok = s.dests.Get(ipKey)
	} else if hasHost {
		e, ok = s.dests.Get(hostKey)
	}
	if !ok {
		return false
	}
	touch(s, e, f.Time)
	if hasIP && hasHost {
		if h, ok := s.dests.Get(hostKey); ok {
			touch(s, h, f.Time)
		}
	}
	return true
}

func (s *service) allowed(d Destination) bool {
	if len(s.allow) == 0 {
		return false
	}
	ipKey, hostKey, hasIP, hasHost := keys(d)
	for _, k := range [2]struct {
		k  destKey
		ok bool
	}{{ipKey, hasIP}, {hostKey, hasHost}} {
		if !k.ok {
			continue
		}
		if _, ok := s.allow[k.k]; ok {
			return true
		}
		// An allow entry without a port allows every port.
		k.k.port = 0
		if _, ok := s.allow[k.k]; ok {
			return true
		}
	}
	return false
}

func (m *Model) maybePromote(s *service, now time.Time) {
	if now.Sub(s.learnStart) >= m.cfg.LearnWindow && s.learnRequests >= m.cfg.LearnMinRequests {
		s.mode = m.cfg.AfterLearning
		s.modeSetBy = "auto"
		s.modeChanged = now
	}
}

// ModeChange is an operator's change of a service's mode.
type ModeChange struct {
	Mode Mode
	// Allow lists the destinations a quarantined service may still reach ("host:port",
	// "ip:port", or without port for any port). Ignored for other modes.
	Allow []string
	// By says who made the change; At when (wall clock: operators act in real time).
	By string
	At time.Time
}

// SetMode changes a service's mode, creating the service if it is unknown. Setting learn
// starts a new learning period.
func (m *Model) SetMode(name string, c ModeChange) error {
	if name == "" {
		return errors.New("empty service name")
	}
	if !c.Mode.Valid() {
		return fmt.Errorf("invalid mode %d", c.Mode)
	}
	var allow map[destKey]struct{}
	if c.Mode == ModeQuarantine && len(c.Allow) > 0 {
		allow = make(map[destKey]struct{}, len(c.Allow))
		var errs []error
		for _, a := range c.Allow {
			k, err := parseDestKey(a)
			if err != nil {
				errs = append(errs, fmt.Errorf("allow: %w", err))
				continue
			}
			allow[k] = struct{}{}
		}
		if err := errors.Join(errs...); err != nil {
			return err
		}
	}
	s := m.lookup(name, true)
	if s == nil {
		return fmt.Errorf("cannot track service %q: %d services already tracked", name, m.cfg.MaxServices)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mode = c.Mode
	s.modeSetBy = c.By
	s.modeChanged = c.At
	s.allow = allow
	if c.Mode == ModeLearn {
		s.learnStart = time.Time{}
		s.learnRequests = 0
	}
	m.markDirty(s)
	return nil
}

// Mode returns the mode of a service and whether the service is known.
func (m *Model) Mode(name string) (Mode, bool) {
	s := m.lookup(name, false)
	if s == nil {
		return 0, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mode, true
}

// ModeCounts returns how many services are in each mode.
func (m *Model) ModeCounts() map[Mode]int {
	out := make(map[Mode]int, 4)
	for _, s := range m.all() {
		s.mu.Lock()
		out[s.mode]++
		s.mu.Unlock()
	}
	return out
}

func (m *Model) all() []*service {
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := make([]*service, 0, len(m.services))
	for _, s := range m.services {
		out = append(out, s)
	}
	return out
}

// Services returns the state of every service, sorted by name, with their destinations
// sorted by key.
func (m *Model) Services() []ServiceRecord {
	all := m.all()
	out := make([]ServiceRecord, 0, len(all))
	for _, s := range all {
		out = append(out, s.record(true))
	}
	slices.SortFunc(out, func(a, b ServiceRecord) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

// Service returns the state of one service.
func (m *Model) Service(name string) (ServiceRecord, bool) {
	s := m.lookup(name, false)
	if s == nil {
		return ServiceRecord{}, false
	}
	return s.record(true), true
}

// record snapshots s; with all set every destination, else only those changed since the last
// snapshot (which it resets). It takes s.mu.
func (s *service) record(all bool) ServiceRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := ServiceRecord{
		Name:          s.name,
		Mode:          s.mode,
		ModeSetBy:     s.modeSetBy,
		ModeChanged:   s.modeChanged,
		LearnStart:    s.learnStart,
		LearnRequests: s.learnRequests,
		Requests:      s.requests,
		Alerted:       s.alerted,
		Blocked:       s.blocked,
		FirstSeen:     s.first,
		LastSeen:      s.last,
	}
	for k := range s.allow {
		r.QuarantineAllow = append(r.QuarantineAllow, k.String())
	}
	slices.Sort(r.QuarantineAllow)
	if all {
		r.Destinations = make([]DestinationRecord, 0, s.dests.Len())
		for _, e := range s.dests.Values() {
			r.Destinations = append(r.Destinations, e.record())
		}
		slices.SortFunc(r.Destinations, func(a, b DestinationRecord) int { return cmp.Compare(a.Destination, b.Destination) })
		return r
	}
	for _, k := range s.removed {
		r.Removed = append(r.Removed, k.String())
	}
	for _, e := range s.dirtyDests {
		e.dirty = false
		if !e.evicted {
			r.Destinations = append(r.Destinations, e.record())
		}
	}
	clear(s.dirtyDests)
	s.dirtyDests = s.dirtyDests[:0]
	s.removed = s.removed[:0]
	s.queued = false
	return r
}

func (e *destEntry) record() DestinationRecord {
	return DestinationRecord{Destination: e.key.String(), Count: e.count, FirstSeen: e.first, LastSeen: e.last, Source: e.source}
}

// ServiceRecord is the state of one service: what the admin API shows and what a Store
// keeps.
type ServiceRecord struct {
	Name            string              `json:"name"`
	Mode            Mode                `json:"mode"`
	ModeSetBy       string              `json:"mode_set_by,omitempty"`
	ModeChanged     time.Time           `json:"mode_changed,omitzero"`
	LearnStart      time.Time           `json:"learn_start,omitzero"`
	LearnRequests   int64               `json:"learn_requests"`
	Requests        int64               `json:"requests"`
	Alerted         int64               `json:"alerted"`
	Blocked         int64               `json:"blocked"`
	FirstSeen       time.Time           `json:"first_seen,omitzero"`
	LastSeen        time.Time           `json:"last_seen,omitzero"`
	QuarantineAllow []string            `json:"quarantine_allow,omitempty"`
	Destinations    []DestinationRecord `json:"destinations"`
	// Shapes are the request shapes learned per destination host.
	Shapes []ShapeRecord `json:"shapes,omitempty"`
	// Removed lists destinations forgotten since the last save (a Store deletes them). It is
	// empty in a full snapshot.
	Removed []string `json:"-"`
}

// DestinationRecord is one destination of a service's baseline. Records are mergeable: the
// union of two baselines sums counts and widens first/last seen.
type DestinationRecord struct {
	Destination string    `json:"destination"`
	Count       int64     `json:"count"`
	FirstSeen   time.Time `json:"first_seen"`
	LastSeen    time.Time `json:"last_seen"`
	// Source is the provenance of the first sighting ("ext_proc", "replay", "pcap", ...).
	Source string `json:"source,omitempty"`
}

// ShapeRecord is one request shape a service sends to one destination.
type ShapeRecord struct {
	// Destination is "host:port", or "ip:port" for a destination without a host name.
	Destination string `json:"destination"`
	// Shape is the shape's text form (method, path template, query keys, header keys,
	// content type, body-size class), e.g.
	// "POST /v1/charges/{id} q:[expand] h:[content-type] ct:application/json b:1k".
	Shape string `json:"shape"`
	// Method and Path (the path template, placeholders such as {id} for variable segments)
	// repeat the shape's first two fields for consumers that need no more.
	Method    string    `json:"method"`
	Path      string    `json:"path"`
	Count     int64     `json:"count"`
	FirstSeen time.Time `json:"first_seen"`
	LastSeen  time.Time `json:"last_seen"`
	Source    string    `json:"source,omitempty"`
}

// TakeChanges returns the state of every service changed since the last call: its fields,
// the destinations that changed and those forgotten. The model forgets that they changed.
func (m *Model) TakeChanges() []ServiceRecord {
	m.dirtyMu.Lock()
	dirty := m.dirty
	m.dirty = nil
	m.dirtyMu.Unlock()
	out := make([]ServiceRecord, 0, len(dirty))
	for _, s := range dirty {
		out = append(out, s.record(false))
	}
	return out
}

// Restore loads a stored service into the model, replacing any state of that name. Call it
// before the model serves flows.
func (m *Model) Restore(r ServiceRecord) error {
	if r.Name == "" {
		return errors.New("restore: empty service name")
	}
	if !r.Mode.Valid() {
		return fmt.Errorf("restore %q: invalid mode %d", r.Name, r.Mode)
	}
	s := m.newService(r.Name)
	s.mode, s.modeSetBy, s.modeChanged = r.Mode, r.ModeSetBy, r.ModeChanged
	s.learnStart, s.learnRequests = r.LearnStart, r.LearnRequests
	s.requests, s.alerted, s.blocked = r.Requests, r.Alerted, r.Blocked
	s.first, s.last = r.FirstSeen, r.LastSeen
	var errs []error
	for _, a := range r.QuarantineAllow {
		k, err := parseDestKey(a)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if s.allow == nil {
			s.allow = make(map[destKey]struct{})
		}
		s.allow[k] = struct{}{}
	}
	dests := slices.Clone(r.Destinations)
	// Oldest first, so that the LRU's recency order matches the last sightings.
	slices.SortStableFunc(dests, func(a, b DestinationRecord) int { return a.LastSeen.Compare(b.LastSeen) })
	for _, d := range dests {
		k, err := parseDestKey(d.Destination)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		s.dests.Add(k, &destEntry{key: k, count: d.Count, first: d.FirstSeen, last: d.LastSeen, source: d.Source})
	}
	// Entries evicted while restoring more than MaxDestinations are deleted at the next save.
	if len(s.removed) > 0 {
		s.queued = true
		m.dirtyMu.Lock()
		m.dirty = append(m.dirty, s)
		m.dirtyMu.Unlock()
	}
	m.mu.Lock()
	m.services[r.Name] = s
	m.mu.Unlock()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("restore %q: %w", r.Name, err)
	}
	return nil
}
