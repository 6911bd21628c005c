package flowmodel

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
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
	season *rate.Seasonal // each service's hour-of-day profile (seasonal.go)
	volume *volume.Detector
	bursts [burstShards]burstShard
	// episodes groups the alerts of every service into episodes (episodes.go).
	episodes episodes

	mu       sync.RWMutex
	services map[string]*service

	dirtyMu sync.Mutex
	dirty   []*service // services with unsaved changes, each once

	clamped atomic.Uint64 // event times replaced by the server clock
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
	if m.season, err = rate.NewSeasonal(cfg.Seasonal); err != nil {
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

// ClampedTimes returns how many event times were outside the sane window (more than
// Config.MaxClockSkew ahead of the server clock, or at or before the Unix epoch) and were
// replaced by the server clock. It only grows; publish it as a counter.
func (m *Model) ClampedTimes() uint64 { return m.clamped.Load() }

// unixEpoch is the earliest event time the model takes as it comes.
var unixEpoch = time.Unix(0, 0)

// clamp returns t, or now when t is not within (Unix epoch, now+MaxClockSkew].
func (m *Model) clamp(t, now time.Time) time.Time {
	if t.After(unixEpoch) && !t.After(now.Add(m.cfg.MaxClockSkew)) {
		return t
	}
	m.clamped.Add(1)
	return now
}

// lookup returns the named service, creating it when create is set. It returns nil when the
// service is unknown and not created, or when MaxServices is reached.
func (m *Model) lookup(name string, create bool) *service {
	return m.lookupCap(name, create, false)
}

// lookupCap is lookup; with force set it creates the service beyond MaxServices.
func (m *Model) lookupCap(name string, create, force bool) *service {
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
	if len(m.services) >= m.cfg.MaxServices && !force {
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
// every mode it keeps the detectors of known destinations current. It replaces an event time
// outside the sane window by the server clock (see Config.Now), in f.Time.
//
// A flow without a service is blocked (invalid_request). A flow whose destination cannot be
// established (no IP and no host, or a host without IP
// whose fresh DNS answers the Resolver does not have) is unknown_destination: blocked in
// enforce and quarantine, alerted otherwise, never learned. A flow that arrives once its
// service's learning is due to end is decided in the promoted mode, not learned.
func (m *Model) Decide(f *Flow) Verdict {
	if f.Service == "" {
		// No service, no mode to judge it in: fail closed. (extproc never asks: a request no
		// identity names is its on-missing decision.)
		return Verdict{Action: Block, Score: 1, Reasons: Reasons(0).With(ReasonInvalidRequest)}
	}
	now := m.cfg.Now()
	f.Time = m.clamp(f.Time, now)
	normalize(&f.Destination)
	// A flow without any destination creates no service.
	s := m.lookup(f.Service, f.Destination.Valid())
	if s == nil {
		if !f.Destination.Valid() {
			return unknownDestination(m.cfg.DefaultMode)
		}
		return m.decideUntracked()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.count(f.Time)
	s.tick(f.Time, now, !m.cfg.EventClock)
	m.markDirty(s)
	if s.mode == ModeLearn {
		m.maybePromote(s)
	}

	v := Verdict{Mode: s.mode}
	req := shapeReq{f: f}
	if !m.established(f.Destination) {
		v = unknownDestination(s.mode)
	} else {
		switch s.mode {
		case ModeLearn:
			m.learn(s, f, &req)
			m.maybePromote(s)
			if req.over {
				v.Action, v.Score, v.Reasons = Alert, 1, v.Reasons.With(ReasonOversizedShape)
			}
		case ModeMonitor, ModeEnforce:
			v.Score, v.Reasons = m.judge(s, f, &req)
			if req.over {
				v.Score, v.Reasons = 1, v.Reasons.With(ReasonOversizedShape)
			}
			if !v.Reasons.Empty() {
				v.Action = Alert
				if s.mode == ModeEnforce && (v.Reasons&m.cfg.BlockReasons != 0 ||
					v.Reasons.Has(ReasonOversizedShape) && v.Reasons.Has(ReasonNewShape)) {
					v.Action = Block
				}
			}
		case ModeQuarantine:
			if !m.allowed(s, f.Destination) {
				v.Action, v.Score, v.Reasons = Block, 1, v.Reasons.With(ReasonQuarantined)
			}
		}
	}
	m.decideSeasonal(s, f.Time, &v)
	m.annotate(s, f, &v)
	switch v.Action {
	case Alert:
		s.alerted++
	case Block:
		s.blocked++
	}
	return v
}

// normalize puts d's IP and host in the form baselines and allow lists keep (an IP-literal
// host as the IP, IPv4-mapped IPv6 unmapped, host lower case without trailing dot), in case
// the caller did not. It
// allocates only for a host with upper-case letters.
func normalize(d *Destination) {
	if !d.IP.IsValid() && d.Host != "" {
		// A host that is an IP literal names the address the request goes to.
		if ip, err := netip.ParseAddr(d.Host); err == nil {
			d.IP, d.Host = ip, ""
		}
	}
	if d.IP.IsValid() && (d.IP.Is4In6() || d.IP.Zone() != "") {
		d.IP = NormalizeIP(d.IP)
	}
	if d.Host != "" {
		d.Host = NormalizeHost(d.Host)
	}
}

// unknownDestination is the verdict for a flow whose destination cannot be established, in
// mode: blocked in enforce and quarantine, alerted otherwise.
func unknownDestination(mode Mode) Verdict {
	v := Verdict{Action: Alert, Mode: mode, Score: 1, Reasons: Reasons(0).With(ReasonUnknownDestination)}
	switch mode {
	case ModeEnforce:
		v.Action = Block
	case ModeQuarantine:
		v.Action, v.Reasons = Block, v.Reasons.With(ReasonQuarantined)
	}
	return v
}

// shapeReq is the shape request of a flow, made when a detector first needs it (a flow to an
// unknown destination needs none): cut to Config.ShapeLimits, over set when it was cut.
type shapeReq struct {
	f           *Flow
	req         shape.Request
	over, ready bool
}

// get returns the flow's shape request.
func (r *shapeReq) get(m *Model) *shape.Request {
	if !r.ready {
		r.ready = true
		f := r.f
		r.req = shape.Request{Method: f.Method, Path: f.Path, HeaderKeys: f.HeaderKeys, ContentType: f.ContentType, BodyBytes: f.RequestBytes}
		if !m.cfg.ShapeLimits.Within(&r.req) {
			r.req, r.over = m.cfg.ShapeLimits.Cut(&r.req)
		}
	}
	return &r.req
}

// established reports whether d names where the flow goes: an IP, or a host whose fresh DNS
// answers the Resolver has (the address an egress gateway will connect to). A Host header
// without them names nothing the model can check.
func (m *Model) established(d Destination) bool {
	if d.IP.IsValid() {
		return true
	}
	if d.Host == "" {
		return false
	}
	_, ok := m.answers(d.Host)
	return ok || m.cfg.TrustHostNames
}

// answers returns the fresh DNS answers for host; false without a Resolver, without a fresh
// answer or without addresses.
func (m *Model) answers(host string) ([]netip.Addr, bool) {
	if m.cfg.Resolver == nil || host == "" {
		return nil, false
	}
	a, ok := m.cfg.Resolver.Lookup(host)
	return a, ok && len(a) > 0
}

// decideUntracked decides a flow of a service beyond MaxServices: it is not tracked, so it
// has no baseline, and gets Config.AtMaxServices; never less than an empty baseline gets in
// DefaultMode (enforce and quarantine block).
func (m *Model) decideUntracked() Verdict {
	v := Verdict{Action: m.cfg.AtMaxServices, Mode: m.cfg.DefaultMode, Score: 1, Reasons: Reasons(0).With(ReasonNewDestination)}
	switch m.cfg.DefaultMode {
	case ModeEnforce:
		v.Action = Block
	case ModeQuarantine:
		v.Action, v.Reasons = Block, Reasons(0).With(ReasonQuarantined)
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
	now := m.cfg.Now()
	f.Time = m.clamp(f.Time, now)
	normalize(&f.Destination)
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
		if ip, ok := hostIP(d.Host); ok { // an IP literal is keyed as the IP, never twice
			if !hasIP {
				ipKey, hasIP = destKey{ip: ip, port: d.Port}, true
			}
			return
		}
		hostKey, hasHost = destKey{host: d.Host, port: d.Port}, true
	}
	return
}

// learn records both the IP and the host of f's destination and trains the detectors.
// Call with s.mu held.
func (m *Model) learn(s *service, f *Flow, req *shapeReq) {
	edge := m.recordDest(s, f, sourceOr(f.Source, "flow"))
	if s.learnStart.IsZero() {
		s.learnStart = f.Time
	}
	s.learnRequests++
	score, _ := m.score(s, edge, f, req, true)
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
		if src != sourceProbation { // probation tolerates; it does not vouch for neighbours
			s.near.note(m, k)
		}
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

// judge scores a flow of a service out of learning: the destination checks, then the
// detectors of the destination if it is known. Call with s.mu held.
func (m *Model) judge(s *service, f *Flow, req *shapeReq) (float64, Reasons) {
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
	var via *destEntry // the entry that makes the destination known
	switch {
	case ipE != nil:
		known, via = true, ipE
		// A known IP with a host name it was never used with (or learned at other IPs): the
		// name must not resolve elsewhere.
		if hasHost && (hostE == nil || ipE.via != hostKey) && m.mismatch(f.Destination) {
			hard = hard.With(ReasonHostIPMismatch)
		}
	case hasIP && hostE != nil:
		// A known host at an IP not in the baseline: known only where the host's fresh DNS
		// answers say it lives. The prefixes it was learned at vouch for nothing on their
		// own: the workload names the host, and its own server may sit in the same /24.
		switch answered, at := m.lookupHost(f.Destination); {
		case at:
			known, via = true, hostE
		case answered && !m.cfg.Disabled.Has(ReasonHostIPMismatch):
			hard = hard.With(ReasonHostIPMismatch)
		}
	case !hasIP && hostE != nil:
		// A known host without IP: Decide established that it has fresh DNS answers, the
		// addresses an egress gateway connects to.
		known, via = true, hostE
	default:
		if hasIP && hasHost && m.mismatch(f.Destination) {
			hard = hard.With(ReasonHostIPMismatch)
		}
	}
	if !known {
		hard = hard.With(ReasonNewDestination)
		score := m.newDestScore(s, f, newDest{ipKey: ipKey, hostKey: hostKey, hasIP: hasIP, hasHost: hasHost, hostKnown: hostE != nil, hard: hard})
		if s.mode == ModeMonitor {
			m.probeDestination(s, f, ipKey, hostKey, hasIP)
		}
		return score, hard
	}
	if ipE != nil {
		touch(s, ipE, f.Time)
		// An IP used without a name it was learned with shares that name's history.
		if hostE == nil && ipE.via.host != "" {
			if h, ok := s.dests.Peek(ipE.via); ok {
				return m.scoreKnown(s, h, f, req, hard, via)
			}
		}
	}
	edge := ipE
	if hostE != nil {
		touch(s, hostE, f.Time)
		edge = hostE
	}
	return m.scoreKnown(s, edge, f, req, hard, via)
}

// scoreKnown runs the detectors of a known destination's edge and returns the verdict score
// and reasons; via is the baseline entry that makes the destination known. The score orders
// flows by how much the model doubts them: 1 with a hard reason (a host at an IP it does not
// resolve to), as for a new destination; else the detectors' highest score, at most
// maxSoftScore, and at least probationScore on a destination that entered the baseline by
// probation alone (neither learned nor approved).
func (m *Model) scoreKnown(s *service, edge *destEntry, f *Flow, req *shapeReq, hard Reasons, via *destEntry) (float64, Reasons) {
	score, soft := m.score(s, edge, f, req, false)
	if !hard.Empty() {
		score = 1
	} else {
		score = min(score, maxSoftScore)
	}
	if via != nil && via.source == sourceProbation {
		score = max(score, probationScore)
	}
	return score, hard | soft
}

const (
	// maxSoftScore caps the verdict score of a known destination's detectors (shapes,
	// rates, bursts, volume): a soft anomaly on a destination the service uses ranks below
	// every flow the model has no doubt about (score 1: a new destination), so that a
	// detector saturating on benign traffic never ties with them.
	maxSoftScore = 0.99
	// probationScore is the least score of a flow to a destination that entered the
	// baseline by probation: it no longer alerts, but it ranks with the strongest soft
	// anomalies, above every flow to a destination the service learned or an operator
	// approved, and below new destinations. A beacon that kept calling for the probation
	// period is tolerated, not trusted: nothing but its persistence vouches for it, and a
	// detector's noise on the service's own learned traffic must not outrank it.
	probationScore = maxSoftScore
	// sourceProbation is the source of baseline entries admitted by probation.
	sourceProbation = "probation"
)

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
func (m *Model) score(s *service, e *destEntry, f *Flow, req *shapeReq, learning bool) (float64, Reasons) {
	var sc scores
	es := e.edgeState()
	if f.Method != "" && !m.cfg.Disabled.Has(ReasonNewShape) {
		m.scoreShape(s, e, f, req, learning, &sc)
	}
	if !m.cfg.Disabled.Has(ReasonRateSpike) {
		edgeRate := m.rate.Observe(&es.rate, f.Time)
		svcRate := m.rate.Observe(&s.rate, f.Time)
		hot := edgeHot(edgeRate)
		s.season.edge, s.season.edgeHot = e.hash, hot // for decideSeasonal
		sc.add(ReasonRateSpike, quiet(edgeRate.Score))
		// The service's total rate is the sum of its edges': its alarm is this request's
		// only if this edge is running well above its own baseline, so that a flood to
		// one destination does not flag the service's ordinary calls elsewhere.
		if hot {
			sc.add(ReasonRateSpike, quiet(svcRate.Score))
		}
	}
	if f.RequestBytes >= 0 && !m.cfg.Disabled.Has(ReasonVolumeSpike) {
		sc.add(ReasonVolumeSpike, quiet(m.volume.Observe(&es.vol, f.Time, f.RequestBytes).Score))
	}
	if !m.cfg.Disabled.Has(ReasonBurst) {
		tick := f.Time.UnixNano() / int64(m.cfg.BurstTick)
		sh := &m.bursts[s.hash%burstShards]
		sh.mu.Lock()
		b := sh.d.Observe(s.hash, e.hash, tick)
		sh.mu.Unlock()
		sc.add(ReasonBurst, quiet(b.Norm))
	}
	if learning {
		return sc.max, 0
	}
	return sc.max, sc.over(max(alarmLevel, s.calib.threshold))
}

// quiet is a rate, burst or volume score as the verdict ranks it: 0 below noiseLevel. These
// detectors score every request, and far below their alarm what they measure is the noise
// of arrival times and sizes (a CUSUM a nat or so above zero, a tick one call above its
// mean): ranked, it would put a benign flow that came a little early above a beacon that
// keeps perfect time. The content detectors (shapes, parameter values) keep their graded
// scores: how far a value lies from its parameter's model is evidence at any level.
func quiet(v float64) float64 {
	if v < noiseLevel {
		return 0
	}
	return v
}

// noiseLevel is a fifth of the alarm level: a rate CUSUM of 1.6 nats (a likelihood ratio of
// about 5 for a higher rate), a burst deviance of 11. It was chosen by comparing a half, a
// fifth and a tenth on bench/stratosphere and bench/synth: a tenth still ranks the benign
// host's noise above the Kovter host's learned beacons (4h learning: ROC-AUC 0.303 against
// first-seen's 0.309), a half drops early evidence of real rises (synth rate_change 0.977,
// slow_exfil 0.967; a fifth 0.989 and 0.984).
const noiseLevel = alarmLevel / 5

// edgeHot reports whether an edge runs well above its own baseline: twice its expected
// count in the current interval (and more than one request), and its own CUSUM at least half
// way to its alarm. Both are needed: on an edge called a few times an hour, two calls in one
// interval are twice the expected count by chance alone, and must not make each ordinary
// call of a busy service carry the service's rate alarm.
func edgeHot(r rate.Result) bool {
	return r.Count > max(1, 2*r.Expected) && r.Score >= alarmLevel/2
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
func (m *Model) scoreShape(s *service, e *destEntry, f *Flow, req *shapeReq, learning bool, sc *scores) {
	rq := req.get(m)
	k := m.shaper.Key(rq)
	es := e.edgeState()
	t := es.table(m.cfg.Shapes)
	known := t.Count(k) > 0
	if !known && s.shapeCount >= m.cfg.MaxShapesPerService {
		// The service keeps all the shapes it may: a new one scores as new, and is not kept.
		sc.add(ReasonNewShape, newShapeScore(t.Score(k)))
		m.scoreNewShapeParams(s, e, k, f, sc)
		return
	}
	if learning || known {
		m.scoreParams(s, e, k, f, learning, sc)
		r := s.observeShape(t, k, f.Time)
		if r.New {
			// While learning, a new shape scores as it would after: calibration sees it.
			sc.add(ReasonNewShape, newShapeScore(r))
			es.addShape(m.shaper, k, rq, f, sourceOr(f.Source, "flow"))
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
	m.scoreNewShapeParams(s, e, k, f, sc)
	if m.probe(s, probeKey{dest: e.key, shape: k}) {
		s.observeShape(t, k, f.Time)
		es.addShape(m.shaper, k, rq, f, sourceProbation)
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
	if m.probe(s, probeKey{dest: k}) {
		m.recordDest(s, f, sourceProbation)
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

// probe counts a sighting of k now, on the service's clock (s.now: never ahead of the
// server clock, never behind the service's latest flow, so that a client moves it with
// neither future nor past event times) and reports whether k has now been seen in
// Config.Probation distinct intervals. Rejected keys never pass. Call with s.mu held.
func (m *Model) probe(s *service, k probeKey) bool {
	t := s.now
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

// allowEntry is one entry of a quarantine allow list: an IP; a host, at the IPs of its fresh
// DNS answers; or a host pinned to one IP ("host@ip"). Port 0 allows every port.
type allowEntry struct {
	host string
	ip   netip.Addr
	port uint16
}

// parseAllowEntry parses "ip[:port]", "host[:port]" or "host[:port]@ip".
func parseAllowEntry(s string) (allowEntry, error) {
	dest, at, pinned := strings.Cut(strings.TrimSpace(s), "@")
	k, err := parseDestKey(dest)
	if err != nil {
		return allowEntry{}, err
	}
	e := allowEntry{host: k.host, ip: k.ip, port: k.port}
	if pinned {
		if k.host == "" {
			return allowEntry{}, &destinationError{s: s, why: "host@ip needs a host name before @"}
		}
		ip, err := netip.ParseAddr(strings.Trim(strings.TrimSpace(at), "[]"))
		if err != nil {
			return allowEntry{}, &destinationError{s: s, why: "bad IP after @"}
		}
		e.ip = NormalizeIP(ip)
	}
	return e, nil
}

// String returns the entry as parseAllowEntry reads it.
func (e allowEntry) String() string {
	if e.host == "" {
		return destKey{ip: e.ip, port: e.port}.String()
	}
	s := destKey{host: e.host, port: e.port}.String()
	if e.ip.IsValid() {
		s += "@" + e.ip.String()
	}
	return s
}

// allowed reports whether a quarantined service may reach d: an IP entry matches d's IP; a
// host entry matches d's host only at an IP among the host's fresh DNS answers (or, without
// an IP, when the host has fresh answers: an egress gateway connects there); a pinned entry
// matches the host at its IP. A Host header alone never matches.
func (m *Model) allowed(s *service, d Destination) bool {
	for _, e := range s.allow {
		if e.port != 0 && e.port != d.Port {
			continue
		}
		switch {
		case e.host == "":
			if d.IP.IsValid() && d.IP == e.ip {
				return true
			}
		case e.host != d.Host:
		case e.ip.IsValid() && d.IP.IsValid():
			if d.IP == e.ip {
				return true
			}
		case e.ip.IsValid():
			if a, ok := m.answers(d.Host); ok && containsAddr(a, e.ip) {
				return true
			}
		default:
			a, ok := m.answers(d.Host)
			if ok && (!d.IP.IsValid() || containsAddr(a, d.IP)) || !ok && !d.IP.IsValid() && m.cfg.TrustHostNames {
				return true
			}
		}
	}
	return false
}

// maybePromote ends s's learning when it is due on the service's clock (s.now): LearnWindow
// after its first learned flow, with LearnMinRequests learned. Call with s.mu held.
func (m *Model) maybePromote(s *service) {
	now := s.now
	if !s.learnStart.IsZero() && now.Sub(s.learnStart) >= m.cfg.LearnWindow && s.learnRequests >= m.cfg.LearnMinRequests {
		s.mode = m.cfg.AfterLearning
		s.modeSetBy = "auto"
		s.modeChanged = now
		s.calib.finish(m.cfg.AlertBudget, now)
	}
}

// ModeChange is an operator's change of a service's mode.
type ModeChange struct {
	Mode Mode
	// Allow lists the destinations a quarantined service may still reach: "ip:port";
	// "host:port", the host at the IPs of its fresh DNS answers (so only with a Resolver);
	// "host:port@ip", the host pinned to one IP; each without ":port" for any port. Ignored
	// for other modes.
	Allow []string
	// By says who made the change; At when (wall clock: operators act in real time).
	By string
	At time.Time
}

// SetMode changes a service's mode, creating the service if it is unknown. Setting learn
// starts a new learning period; leaving learn sets the alert threshold from it. Quarantine
// always takes effect: a service quarantined beyond MaxServices is tracked anyway.
func (m *Model) SetMode(name string, c ModeChange) error {
	if name == "" {
		return errors.New("empty service name")
	}
	if !c.Mode.Valid() {
		return fmt.Errorf("invalid mode %d", c.Mode)
	}
	var allow []allowEntry
	if c.Mode == ModeQuarantine && len(c.Allow) > 0 {
		var errs []error
		for _, a := range c.Allow {
			e, err := parseAllowEntry(a)
			if err != nil {
				errs = append(errs, fmt.Errorf("allow: %w", err))
				continue
			}
			if !slices.Contains(allow, e) {
				allow = append(allow, e)
			}
		}
		if err := errors.Join(errs...); err != nil {
			return err
		}
	}
	s := m.lookupCap(name, true, c.Mode == ModeQuarantine)
	if s == nil {
		return fmt.Errorf("cannot track service %q: %d services already tracked", name, m.cfg.MaxServices)
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
