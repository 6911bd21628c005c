package flowmodel

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/meshguard/meshguard/flowmodel/burst"
	"github.com/meshguard/meshguard/flowmodel/rate"
	"github.com/meshguard/meshguard/flowmodel/shape"
	"github.com/meshguard/meshguard/flowmodel/volume"
)

// burstShards spread the burst detector's sketches over several locks, by service, so that
// decisions of different services rarely wait for one another.
const burstShards = 8

// Model holds the baselines of all services and the detectors that score flows against
// them. It is safe for concurrent use; Decide and Observe never block on I/O and take one
// lock per service (and one of burstShards locks for the burst sketches).
type Model struct {
	cfg    Config
	shaper *shape.Shaper
	rate   *rate.Detector
	volume *volume.Detector
	bursts [burstShards]burstShard
	// episodes groups the alerts of every service into episodes (episodes.go).
	episodes episodes

	mu       sync.RWMutex
	services map[string]*service

	dirtyMu sync.Mutex
	dirty   []*service // services with unsaved changes, each once
}

type burstShard struct {
	mu sync.Mutex
	d  *burst.Detector
	_  [40]byte // keep shards on separate cache lines
}

// New returns an empty model.
func New(cfg Config) (*Model, error) {
	cfg, err := cfg.Check()
	if err != nil {
		return nil, err
	}
	m := &Model{cfg: cfg, services: make(map[string]*service)}
	m.shaper = shape.New(shape.Config{Seed: cfg.ShapeSeed})
	if m.rate, err = rate.New(cfg.Rate); err != nil {
		return nil, err
	}
	if m.volume, err = volume.New(cfg.Volume); err != nil {
		return nil, err
	}
	if err = m.episodes.init(cfg.Episodes); err != nil {
		return nil, err
	}
	for i := range m.bursts {
		bc := cfg.Burst
		bc.Seed += uint64(i)
		if m.bursts[i].d, err = burst.New(bc); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Config returns the model's configuration with defaults applied.
func (m *Model) Config() Config { return m.cfg }

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

// track returns the named service, creating it if it is unknown. It fails when MaxServices
// are tracked already.
func (m *Model) track(name string) (*service, error) {
	if s := m.lookup(name, true); s != nil {
		return s, nil
	}
	return nil, fmt.Errorf("cannot track service %q: %d services already tracked", name, m.cfg.MaxServices)
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

// Decide returns the verdict for f. In learn mode it records f in its service's baseline; in
// every mode it keeps the detectors of known destinations current.
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
	s.count(f.Time)
	m.markDirty(s)

	v := Verdict{Mode: s.mode}
	switch s.mode {
	case ModeLearn:
		m.learn(s, f)
		m.maybePromote(s, f.Time)
	case ModeMonitor, ModeEnforce:
		v.Score, v.Reasons = m.judge(s, f)
		if !v.Reasons.Empty() {
			v.Action = Alert
			if s.mode == ModeEnforce && v.Reasons&m.cfg.BlockReasons != 0 {
				v.Action = Block
			}
		}
	case ModeQuarantine:
		if !s.allowed(f.Destination) {
			v.Action, v.Score, v.Reasons = Block, 1, v.Reasons.With(ReasonQuarantined)
		}
	}
	m.annotate(s, f, &v)
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
	ip := NormalizeIP(f.Upstream.Addr())
	m.record(s, destKey{ip: ip, port: f.Upstream.Port()}, f.Time, sourceOr(f.Source, "upstream"))
	if f.Destination.Host != "" {
		if h, ok := s.dests.Peek(destKey{host: f.Destination.Host, port: f.Destination.Port}); ok {
			m.addPrefix(h, ip)
		}
	}
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

// learn records both the IP and the host of f's destination and trains the detectors.
// Call with s.mu held.
func (m *Model) learn(s *service, f *Flow) {
	edge := m.recordDest(s, f, sourceOr(f.Source, "flow"))
	if s.learnStart.IsZero() {
		s.learnStart = f.Time
	}
	s.learnRequests++
	score, _ := m.score(s, edge, f, true)
	if f.Time.Sub(s.learnStart) >= min(m.cfg.LearnWindow/2, calibrationWarmup) {
		m.startLadder(&s.calib)
		s.calib.add(score, f.Time)
	}
}

// calibrationWarmup is how long a service learns before its scores count towards its alert
// threshold (or half the learn window, if shorter): at first every shape is new and the rate
// and volume detectors are warming up.
const calibrationWarmup = time.Hour

// recordDest records both the IP and the host of f's destination, the IP as reached under
// the host, and returns the entry of f's edge: the host's if f has one, else the IP's. Call
// with s.mu held.
func (m *Model) recordDest(s *service, f *Flow, src string) (edge *destEntry) {
	ipKey, hostKey, hasIP, hasHost := keys(f.Destination)
	var ipE *destEntry
	if hasIP {
		ipE = m.record(s, ipKey, f.Time, src)
		edge = ipE
	}
	if hasHost {
		edge = m.record(s, hostKey, f.Time, src)
		if hasIP {
			m.addPrefix(edge, f.Destination.IP)
			ipE.via = hostKey
		}
	}
	return edge
}

// record counts a use of k, adding it to the baseline if new. Call with s.mu held.
func (m *Model) record(s *service, k destKey, t time.Time, src string) *destEntry {
	e, ok := s.dests.Get(k)
	if !ok {
		e = &destEntry{key: k, first: nanos(t), last: nanos(t), source: src, hash: m.hashKey(k)}
		s.dests.Add(k, e)
	}
	touch(s, e, t)
	return e
}

// hashKey hashes a destination (or, with only host set, a service name) for the burst
// sketches: FNV-1a, fixed, so that a replay in another process gives the same scores. The
// sketches mix the hash again with their seed.
func (m *Model) hashKey(k destKey) uint64 {
	const prime = 1099511628211
	h := uint64(14695981039346656037)
	for i := 0; i < len(k.host); i++ {
		h = (h ^ uint64(k.host[i])) * prime
	}
	b := k.ip.As16()
	for _, c := range b {
		h = (h ^ uint64(c)) * prime
	}
	h = (h ^ uint64(k.port&0xff)) * prime
	return (h ^ uint64(k.port>>8)) * prime
}

func touch(s *service, e *destEntry, t time.Time) {
	e.count++
	n := nanos(t)
	if n > e.last {
		e.last = n
	}
	if n < e.first {
		e.first = n
	}
	markEntry(s, e)
}

func markEntry(s *service, e *destEntry) {
	if !e.dirty {
		e.dirty = true
		s.dirtyDests = append(s.dirtyDests, e)
	}
}

// maxPrefixes bounds the IP prefixes remembered per host.
const maxPrefixes = 16

// addPrefix remembers that host entry e was reached at ip.
func (m *Model) addPrefix(e *destEntry, ip netip.Addr) {
	p := m.prefixOf(ip)
	es := e.edgeState()
	for _, q := range es.prefixes {
		if q == p {
			return
		}
	}
	if len(es.prefixes) >= maxPrefixes {
		copy(es.prefixes, es.prefixes[1:])
		es.prefixes = es.prefixes[:maxPrefixes-1]
	}
	es.prefixes = append(es.prefixes, p)
}

func (m *Model) prefixOf(ip netip.Addr) netip.Prefix {
	bits := m.cfg.PrefixBits6
	if ip.Is4() {
		bits = m.cfg.PrefixBits4
	}
	p, _ := ip.Prefix(bits) // bits is in range for the address family
	return p
}

func (m *Model) inPrefixes(e *destEntry, ip netip.Addr) bool {
	if e.edge == nil {
		return false
	}
	for _, p := range e.edge.prefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// judge scores a flow of a service out of learning: the destination checks, then the
// detectors of the destination if it is known. Call with s.mu held.
func (m *Model) judge(s *service, f *Flow) (float64, Reasons) {
	ipKey, hostKey, hasIP, hasHost := keys(f.Destination)
	var ipE, hostE *destEntry
	if hasIP {
		ipE, _ = s.dests.Get(ipKey)
	}
	if hasHost {
		hostE, _ = s.dests.Get(hostKey)
	}
	var hard Reasons
	known := false
	switch {
	case ipE != nil:
		known = true
		// A known IP with a host name it was never used with: the name must resolve there.
		if hasHost && hostE == nil && m.mismatch(f.Destination) {
			hard = hard.With(ReasonHostIPMismatch)
		}
	case hasIP && hostE != nil:
		// A known host at an IP not in the baseline: fine inside the prefixes it was learned
		// at, or where DNS says the name lives; a name sent elsewhere is a mismatch.
		if m.inPrefixes(hostE, f.Destination.IP) {
			known = true
			break
		}
		switch answered, at := m.lookupHost(f.Destination); {
		case at:
			known = true
		case answered && !m.cfg.Disabled.Has(ReasonHostIPMismatch):
			hard = hard.With(ReasonHostIPMismatch)
		}
	case !hasIP && hostE != nil:
		known = true
	default:
		if hasIP && hasHost && m.mismatch(f.Destination) {
			hard = hard.With(ReasonHostIPMismatch)
		}
	}
	if !known {
		hard = hard.With(ReasonNewDestination)
		if s.mode == ModeMonitor {
			m.probeDestination(s, f, ipKey, hostKey, hasIP)
		}
		return 1, hard
	}
	if ipE != nil {
		touch(s, ipE, f.Time)
		// An IP used without a name it was learned with shares that name's history.
		if hostE == nil && ipE.via.host != "" {
			if h, ok := s.dests.Peek(ipE.via); ok {
				return m.scoreKnown(s, h, f, hard)
			}
		}
	}
	edge := ipE
	if hostE != nil {
		touch(s, hostE, f.Time)
		edge = hostE
	}
	return m.scoreKnown(s, edge, f, hard)
}

func (m *Model) scoreKnown(s *service, edge *destEntry, f *Flow, hard Reasons) (float64, Reasons) {
	score, soft := m.score(s, edge, f, false)
	if !hard.Empty() {
		score = 1
	}
	return score, hard | soft
}

// mismatch reports whether the resolver knows that d's host does not resolve to d's IP.
func (m *Model) mismatch(d Destination) bool {
	if m.cfg.Disabled.Has(ReasonHostIPMismatch) {
		return false
	}
	answered, at := m.lookupHost(d)
	return answered && !at
}

// lookupHost asks the resolver about d's host: answered is set when it has an answer, at
// when d's IP is among its addresses. Both are false without a resolver, an IP or a host.
func (m *Model) lookupHost(d Destination) (answered, at bool) {
	if m.cfg.Resolver == nil || !d.IP.IsValid() || d.Host == "" {
		return false, false
	}
	addrs, ok := m.cfg.Resolver.Lookup(d.Host)
	return ok, ok && containsAddr(addrs, d.IP)
}

func containsAddr(addrs []netip.Addr, ip netip.Addr) bool {
	for _, a := range addrs {
		if NormalizeIP(a) == ip {
			return true
		}
	}
	return false
}

// score runs the detectors of a known destination's edge and returns the highest score and
// the reasons whose score reaches the service's alert threshold (none while learning).
func (m *Model) score(s *service, e *destEntry, f *Flow, learning bool) (float64, Reasons) {
	var sc scores
	es := e.edgeState()
	if f.Method != "" && !m.cfg.Disabled.Has(ReasonNewShape) {
		m.scoreShape(s, e, f, learning, &sc)
	}
	if !m.cfg.Disabled.Has(ReasonRateSpike) {
		edgeRate := m.rate.Observe(&es.rate, f.Time)
		svcRate := m.rate.Observe(&s.rate, f.Time)
		sc.add(ReasonRateSpike, edgeRate.Score)
		// The service's total rate is the sum of its edges': its alarm is this request's
		// only if this edge is running well above its own baseline, so that a flood to
		// one destination does not flag the service's ordinary calls elsewhere.
		if edgeRate.Count > max(1, 2*edgeRate.Expected) {
			sc.add(ReasonRateSpike, svcRate.Score)
		}
	}
	if f.RequestBytes >= 0 && !m.cfg.Disabled.Has(ReasonVolumeSpike) {
		sc.add(ReasonVolumeSpike, m.volume.Observe(&es.vol, f.Time, f.RequestBytes).Score)
	}
	if !m.cfg.Disabled.Has(ReasonBurst) {
		tick := f.Time.UnixNano() / int64(m.cfg.BurstTick)
		sh := &m.bursts[s.hash%burstShards]
		sh.mu.Lock()
		b := sh.d.Observe(s.hash, e.hash, tick)
		sh.mu.Unlock()
		sc.add(ReasonBurst, b.Norm)
	}
	if learning {
		return sc.max, 0
	}
	return sc.max, sc.over(max(alarmLevel, s.calib.threshold))
}

// alarmLevel is the score at which every detector raises its own alarm.
const alarmLevel = 0.5

// scores collects the detectors' scores of one flow.
type scores struct {
	by  [numReasons]float64
	max float64
}

func (sc *scores) add(r Reason, v float64) {
	if v > sc.by[r] {
		sc.by[r] = v
	}
	if v > sc.max {
		sc.max = v
	}
}

func (sc *scores) over(threshold float64) Reasons {
	var rs Reasons
	for r := Reason(0); r < numReasons; r++ {
		if sc.by[r] >= threshold && sc.by[r] > 0 {
			rs = rs.With(r)
		}
	}
	return rs
}

// scoreShape scores f's request shape on its destination: a shape never seen is new_shape
// (and enters the baseline after probation, or at once while learning), a known but rare
// one rare_shape.
func (m *Model) scoreShape(s *service, e *destEntry, f *Flow, learning bool, sc *scores) {
	req := shape.Request{Method: f.Method, Path: f.Path, HeaderKeys: f.HeaderKeys, ContentType: f.ContentType, BodyBytes: f.RequestBytes}
	k := m.shaper.Key(&req)
	es := e.edgeState()
	t := es.table(m.cfg.Shapes)
	if learning || t.Count(k) > 0 {
		m.scoreParams(s, e, k, f, learning, sc)
		r := t.Observe(k, f.Time)
		if r.New {
			// While learning, a new shape scores as it would after: calibration sees it.
			sc.add(ReasonNewShape, newShapeScore(r))
			es.addShape(m.shaper, k, &req, f, sourceOr(f.Source, "flow"))
		} else {
			in := es.touchShape(k, f.Time)
			// An approved shape is expected however rarely it is used.
			if r.Rare && !m.cfg.Disabled.Has(ReasonRareShape) && (in == nil || in.source != "approval") {
				sc.add(ReasonRareShape, r.Rarity)
			}
		}
		markEntry(s, e)
		return
	}
	sc.add(ReasonNewShape, newShapeScore(t.Score(k)))
	if m.probe(s, probeKey{dest: e.key, shape: k}, f.Time) {
		t.Observe(k, f.Time)
		es.addShape(m.shaper, k, &req, f, "probation")
		markEntry(s, e)
	}
}

// newShapeScore puts a new shape at the alarm level at least, higher the more surprising it
// is in its table.
func newShapeScore(r shape.Score) float64 { return alarmLevel + alarmLevel*r.Novelty }

// probeDestination counts a new destination's probation (monitor mode) and adds it to the
// baseline when it has served its time.
func (m *Model) probeDestination(s *service, f *Flow, ipKey, hostKey destKey, hasIP bool) {
	k := hostKey
	if hasIP {
		k = ipKey
	}
	if m.probe(s, probeKey{dest: k}, f.Time) {
		m.recordDest(s, f, "probation")
	}
}

// probeKey names what is on probation: a destination, or a shape on a destination.
type probeKey struct {
	dest  destKey
	shape shape.Key
}

type probe struct {
	last      int64 // latest interval seen
	intervals int   // distinct intervals seen
}

// maxProbation bounds what is on probation per service.
const maxProbation = 1024

// probe counts a sighting of k at t and reports whether k has now been seen in
// Config.Probation distinct intervals. Rejected keys never pass. Call with s.mu held.
func (m *Model) probe(s *service, k probeKey, t time.Time) bool {
	if _, no := s.rejected[k]; no {
		return false
	}
	if s.probation == nil {
		s.probation, _ = simplelru.NewLRU[probeKey, *probe](maxProbation, nil)
	}
	iv := t.UnixNano() / int64(m.cfg.ProbationInterval)
	p, ok := s.probation.Get(k)
	if !ok {
		p = &probe{last: iv, intervals: 1}
		s.probation.Add(k, p)
	} else if iv > p.last {
		p.last = iv
		p.intervals++
	}
	if p.intervals < m.cfg.Probation {
		return false
	}
	s.probation.Remove(k)
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
		s.calib.finish(m.cfg.AlertBudget, now)
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
// starts a new learning period; leaving learn sets the alert threshold from it.
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
	s, err := m.track(name)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mode == ModeLearn && c.Mode != ModeLearn {
		s.calib.finish(m.cfg.AlertBudget, s.last)
	}
	s.mode = c.Mode
	s.modeSetBy = c.By
	s.modeChanged = c.At
	s.allow = allow
	if c.Mode == ModeLearn {
		s.learnStart = time.Time{}
		s.learnRequests = 0
		s.calib = calibration{}
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
