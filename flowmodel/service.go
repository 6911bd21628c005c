package flowmodel

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"sync"
	"time"
	"unique"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/meshguard/meshguard/flowmodel/episode"
	"github.com/meshguard/meshguard/flowmodel/param"
	"github.com/meshguard/meshguard/flowmodel/rate"
	"github.com/meshguard/meshguard/flowmodel/shape"
	"github.com/meshguard/meshguard/flowmodel/volume"
)

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

// destEntry is one destination of a baseline.
type destEntry struct {
	key         destKey
	hash        uint64 // of key, for the burst sketches
	count       int64
	first, last int64 // event time, Unix nanoseconds
	source      string
	dirty       bool // queued in service.dirtyDests
	evicted     bool
	edge        *edgeState // detector state; nil until the entry carries a flow's edge
	via         destKey    // for an IP: the host it was learned with, if any
}

// edgeState is what the detectors keep of one service→destination edge. A flow's edge is
// its host entry when the host is known, else its IP entry, so that a host whose IPs rotate
// keeps one history.
type edgeState struct {
	rate     rate.State
	vol      volume.State
	shapes   *shape.Table
	info     []shapeInfo    // display forms of the shapes in shapes (a few, scanned)
	prefixes []netip.Prefix // where a host entry was reached
}

// shapeInfo is the display form and provenance of a shape in a table. The strings are
// interned: many edges share their shapes' text.
type shapeInfo struct {
	key                shape.Key
	text, method, path unique.Handle[string]
	first, last        int64 // event time, Unix nanoseconds
	source             string
}

func newShapeInfo(k shape.Key, sh shape.Shape, first, last time.Time, src string) shapeInfo {
	return shapeInfo{key: k, text: unique.Make(sh.String()), method: unique.Make(sh.Method), path: unique.Make(sh.Path),
		first: nanos(first), last: nanos(last), source: src}
}

// nanos and fromNanos convert event times to and from the compact form entries keep.
func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

// findShape returns the display form of shape k, or nil.
func (es *edgeState) findShape(k shape.Key) *shapeInfo {
	for i := range es.info {
		if es.info[i].key == k {
			return &es.info[i]
		}
	}
	return nil
}

// putShape records the display form of a shape entering the table, forgetting those the
// table has evicted once the list outgrows it.
func (es *edgeState) putShape(in shapeInfo) {
	if es.findShape(in.key) != nil {
		return
	}
	es.info = append(es.info, in)
	if len(es.info) > 2*es.shapes.Len()+8 {
		es.info = slices.DeleteFunc(es.info, func(x shapeInfo) bool { return es.shapes.Count(x.key) == 0 })
	}
}

// dropShape forgets the display form of shape k.
func (es *edgeState) dropShape(k shape.Key) {
	es.info = slices.DeleteFunc(es.info, func(x shapeInfo) bool { return x.key == k })
}

func (e *destEntry) edgeState() *edgeState {
	if e.edge == nil {
		e.edge = &edgeState{}
	}
	return e.edge
}

func (es *edgeState) table(cfg shape.TableConfig) *shape.Table {
	if es.shapes == nil {
		es.shapes, _ = shape.NewTable(cfg) // cfg was checked by Config.Check
	}
	return es.shapes
}

// addShape records the display form of a request's shape entering the table.
func (es *edgeState) addShape(sh *shape.Shaper, k shape.Key, req *shape.Request, f *Flow, src string) {
	if es.findShape(k) == nil {
		es.putShape(newShapeInfo(k, sh.Shape(req), f.Time, f.Time, src))
	}
}

func (es *edgeState) touchShape(k shape.Key, t time.Time) *shapeInfo {
	in := es.findShape(k)
	if in != nil && t.UnixNano() > in.last {
		in.last = t.UnixNano()
	}
	return in
}

// calibration sets a service's alert threshold from the scores of its learning period, so
// that the scored detectors would have raised about AlertBudget alerts a day on it.
type calibration struct {
	bins        [calBins]float64 // scores at or above the alarm level, by bin
	since, till time.Time        // event time the bins cover
	threshold   float64          // 0 until the learning period ends
	ladder      *episode.Ladder  // episodes at each bin edge (calibration.go), while learning
}

const (
	calBins     = 20
	calBinWidth = (1 - alarmLevel) / calBins
)

func (c *calibration) add(score float64, t time.Time) {
	if c.since.IsZero() || t.Before(c.since) {
		c.since = t
	}
	if t.After(c.till) {
		c.till = t
	}
	if c.ladder != nil {
		c.ladder.Add(t, score)
	}
	if score < alarmLevel {
		return
	}
	i := int((score - alarmLevel) / calBinWidth)
	c.bins[min(i, calBins-1)]++
}

// finish sets the threshold: the lowest bin edge above which learned traffic scored at most
// budget times a day; 1 when even the top bin scored more often than that.
func (c *calibration) finish(budget float64, now time.Time) {
	days := c.till.Sub(c.since).Hours() / 24
	days = max(days, 1.0/24) // an hour at least: a short period must not make every score rare
	if c.ladder != nil {
		c.finishEpisodes(budget * days)
		return
	}
	c.threshold = 1
	above := 0.0
	for i := calBins - 1; i >= 0; i-- {
		above += c.bins[i]
		if above/days > budget {
			return
		}
		c.threshold = alarmLevel + float64(i)*calBinWidth
	}
}

type service struct {
	name string
	hash uint64

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
	now           time.Time // the service's clock for probation and promotion (see tick)
	srvAt         time.Time // the server clock at the last tick
	dests         *simplelru.LRU[destKey, *destEntry]
	shapeCount    int          // shapes in the tables of dests
	allow         []allowEntry // quarantine allow list
	rate          rate.State   // the service's total request rate
	season        seasonState  // its hour-of-day profile (seasonal.go)
	calib         calibration
	probation     *simplelru.LRU[probeKey, *probe]
	rejected      map[probeKey]struct{}
	feedback      []FeedbackRecord
	par           paramState // parameter value models (params.go)
	ep            episodeDest
	rs            rateSave // when the detectors' states were last saved (ratestate.go)
	near          nearby   // what the baseline says of destinations it lacks (novelty.go)
	nearStale     bool     // a destination left the baseline: rebuild near before use
	fan           fanout   // recent new destinations (novelty.go)

	queued     bool // in Model.dirty
	dirtyDests []*destEntry
	removed    []destKey
}

// tick advances the service's clock with a flow at t, the server clock being now. The clock
// never goes back, never runs ahead of now (future-dated flows do not move it past the
// server clock), and, unless paced is false, advances no faster than now has since the last
// tick (past-dated flows, a day ago then an hour ago, do not compress intervals). Call with
// s.mu held.
func (s *service) tick(t, now time.Time, paced bool) {
	c := t
	if c.After(now) {
		c = now
	}
	if paced && !s.now.IsZero() {
		if lim := s.now.Add(max(now.Sub(s.srvAt), 0)); c.After(lim) {
			c = lim
		}
	}
	if c.After(s.now) {
		s.now = c
	}
	s.srvAt = now
}

// observeShape observes shape k in table t (of one of s's destinations) at time at, keeping
// s.shapeCount. Call with s.mu held.
func (s *service) observeShape(t *shape.Table, k shape.Key, at time.Time) shape.Score {
	n := t.Len()
	r := t.Observe(k, at)
	s.shapeCount += t.Len() - n
	return r
}

// count counts a request at t. Call with s.mu held.
func (s *service) count(t time.Time) {
	s.requests++
	if s.first.IsZero() || t.Before(s.first) {
		s.first = t
	}
	if t.After(s.last) {
		s.last = t
	}
}

func (m *Model) newService(name string) *service {
	s := &service{name: name, mode: m.cfg.DefaultMode, hash: m.hashKey(destKey{host: name})}
	// NewLRU fails only for a non-positive size, which Check rules out.
	s.dests, _ = simplelru.NewLRU(m.cfg.MaxDestinations, func(k destKey, e *destEntry) {
		e.evicted = true
		s.removed = append(s.removed, k)
		s.nearStale = true // rejected or forgotten: it no longer vouches for its neighbours
		if e.edge != nil && e.edge.shapes != nil {
			s.shapeCount -= e.edge.shapes.Len()
		}
	})
	return s
}

// Services returns the state of every service, sorted by name, with their destinations
// and shapes sorted.
func (m *Model) Services() []ServiceRecord {
	all := m.all()
	out := make([]ServiceRecord, 0, len(all))
	for _, s := range all {
		out = append(out, s.record(true))
	}
	slices.SortFunc(out, func(a, b ServiceRecord) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

// ServiceNames returns the names of every service, sorted.
func (m *Model) ServiceNames() []string {
	m.mu.RLock()
	out := make([]string, 0, len(m.services))
	for name := range m.services {
		out = append(out, name)
	}
	m.mu.RUnlock()
	slices.Sort(out)
	return out
}

// Service returns the state of one service.
func (m *Model) Service(name string) (ServiceRecord, bool) {
	s := m.lookup(name, false)
	if s == nil {
		return ServiceRecord{}, false
	}
	r := s.record(true)
	r.Episodes = m.episodeReport(name)
	return r, true
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
		Feedback:      slices.Clone(s.feedback),
		Calibration: &Calibration{
			Threshold: s.calib.threshold, Since: s.calib.since, Until: s.calib.till,
			Histogram: slices.Clone(s.calib.bins[:]),
		},
	}
	r.Params = s.par.record(all)
	if !all {
		r.Rates = s.rateRecord()
	}
	for _, e := range s.allow {
		r.QuarantineAllow = append(r.QuarantineAllow, e.String())
	}
	slices.Sort(r.QuarantineAllow)
	if all {
		r.Destinations = make([]DestinationRecord, 0, s.dests.Len())
		for _, e := range s.dests.Values() {
			r.Destinations = append(r.Destinations, e.record())
			r.Shapes = e.appendShapes(r.Shapes)
		}
		slices.SortFunc(r.Destinations, func(a, b DestinationRecord) int { return cmp.Compare(a.Destination, b.Destination) })
		slices.SortFunc(r.Shapes, func(a, b ShapeRecord) int {
			return cmp.Or(cmp.Compare(a.Destination, b.Destination), cmp.Compare(a.Shape, b.Shape))
		})
		return r
	}
	for _, k := range s.removed {
		r.Removed = append(r.Removed, k.String())
	}
	for _, e := range s.dirtyDests {
		e.dirty = false
		if !e.evicted {
			r.Destinations = append(r.Destinations, e.record())
			r.Shapes = e.appendShapes(r.Shapes)
		}
	}
	clear(s.dirtyDests)
	s.dirtyDests = s.dirtyDests[:0]
	s.removed = s.removed[:0]
	s.queued = false
	return r
}

func (e *destEntry) record() DestinationRecord {
	d := DestinationRecord{Destination: e.key.String(), Count: e.count, FirstSeen: fromNanos(e.first), LastSeen: fromNanos(e.last), Source: e.source}
	if e.via.host != "" {
		d.Host = e.via.String()
	}
	if e.edge != nil {
		for _, p := range e.edge.prefixes {
			d.Prefixes = append(d.Prefixes, p.String())
		}
	}
	return d
}

func (e *destEntry) appendShapes(out []ShapeRecord) []ShapeRecord {
	if e.edge == nil || e.edge.shapes == nil {
		return out
	}
	dest := e.key.String()
	for _, in := range e.edge.info {
		c := e.edge.shapes.Count(in.key)
		if c == 0 {
			continue // evicted from the table
		}
		out = append(out, ShapeRecord{
			Destination: dest, Shape: in.text.Value(), Method: in.method.Value(), Path: in.path.Value(),
			Count: int64(math.Round(c)), Weight: c, FirstSeen: fromNanos(in.first), LastSeen: fromNanos(in.last), Source: in.source,
		})
	}
	return out
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
	// Shapes are the request shapes learned per destination (for a save: of the
	// destinations in Destinations).
	Shapes []ShapeRecord `json:"shapes,omitempty"`
	// Calibration is the service's alert threshold and the learning-period scores it came
	// from.
	Calibration *Calibration `json:"calibration,omitempty"`
	// Feedback lists the latest approvals and rejections.
	Feedback []FeedbackRecord `json:"feedback,omitempty"`
	// Params are the service's parameter value models, in a save only, and nil there when
	// they did not change since the last one (a Store then keeps what it has).
	Params *param.Snapshot `json:"params,omitempty"`
	// Rates are the states of the service's rate, seasonal and volume detectors, in a save
	// only, and nil there when not due (see RateSnapshot).
	Rates *RateSnapshot `json:"rates,omitempty"`
	// Episodes are the service's open and latest closed alert episodes (Model.Service only).
	Episodes *EpisodeReport `json:"episodes,omitempty"`
	// Removed lists destinations forgotten since the last save (a Store deletes them, and
	// their shapes). It is empty in a full snapshot.
	Removed []string `json:"-"`
}

// DestinationRecord is one destination of a service's baseline. Records are mergeable: the
// union of two baselines sums counts and widens first/last seen.
type DestinationRecord struct {
	Destination string    `json:"destination"`
	Count       int64     `json:"count"`
	FirstSeen   time.Time `json:"first_seen"`
	LastSeen    time.Time `json:"last_seen"`
	// Source is the provenance of the first sighting ("ext_proc", "replay", "pcap",
	// "probation", "approval", ...).
	Source string `json:"source,omitempty"`
	// Prefixes are the IP prefixes a host was reached at (host destinations only).
	Prefixes []string `json:"prefixes,omitempty"`
	// Host is, for an IP destination, the "host:port" destination it was learned with.
	Host string `json:"host,omitempty"`
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
	Method string `json:"method"`
	Path   string `json:"path"`
	// Count is Weight rounded: the shape's count, decayed with the shape half-life.
	Count     int64     `json:"count"`
	Weight    float64   `json:"weight"`
	FirstSeen time.Time `json:"first_seen"`
	LastSeen  time.Time `json:"last_seen"`
	Source    string    `json:"source,omitempty"`
}

// Calibration is how a service's alert threshold was set.
type Calibration struct {
	// Threshold is the score the scored detectors must reach to raise an alert (0 while
	// learning: the alarm level of 0.5 applies).
	Threshold float64 `json:"threshold"`
	// Histogram counts the learning period's scores at or above 0.5, in 20 bins of 0.025.
	Histogram []float64 `json:"histogram"`
	Since     time.Time `json:"since,omitzero"`
	Until     time.Time `json:"until,omitzero"`
}

// FeedbackRecord is an operator's approval or rejection.
type FeedbackRecord struct {
	Action      string    `json:"action"` // "approve" or "reject"
	Destination string    `json:"destination"`
	Shape       string    `json:"shape,omitempty"`
	By          string    `json:"by"`
	At          time.Time `json:"at"`
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
// before the model serves flows. Shape tables are rebuilt from the shape records; the rate,
// seasonal and volume detectors take their saved states (Rates), or start afresh.
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
	s.feedback = slices.Clone(r.Feedback)
	m.replayRejections(s)
	if c := r.Calibration; c != nil {
		s.calib.threshold, s.calib.since, s.calib.till = c.Threshold, c.Since, c.Until
		copy(s.calib.bins[:], c.Histogram)
	}
	var errs []error
	for _, a := range r.QuarantineAllow {
		e, err := parseAllowEntry(a)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !slices.Contains(s.allow, e) {
			s.allow = append(s.allow, e)
		}
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
		e := &destEntry{key: k, count: d.Count, first: nanos(d.FirstSeen), last: nanos(d.LastSeen), source: d.Source, hash: m.hashKey(k)}
		if d.Host != "" {
			if e.via, err = parseDestKey(d.Host); err != nil {
				errs = append(errs, fmt.Errorf("destination %s: host: %w", d.Destination, err))
			}
		}
		for _, ps := range d.Prefixes {
			p, err := netip.ParsePrefix(ps)
			if err != nil {
				errs = append(errs, fmt.Errorf("destination %s: %w", d.Destination, err))
				continue
			}
			e.edgeState().prefixes = append(e.edgeState().prefixes, p)
		}
		s.dests.Add(k, e)
		if e.source != sourceProbation {
			s.near.note(m, k)
		}
	}
	if err := m.restoreShapes(s, r.Shapes); err != nil {
		errs = append(errs, err)
	}
	if err := m.restoreParams(s, r.Params); err != nil {
		errs = append(errs, err)
	}
	s.restoreRates(r.Rates) // a state that does not decode warms up again
	s.rs = rateSave{at: s.now, requests: s.requests}
	// Entries evicted while restoring more than MaxDestinations are deleted at the next save.
	if len(s.removed) > 0 {
		m.markDirty(s)
	}
	m.mu.Lock()
	m.services[r.Name] = s
	m.mu.Unlock()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("restore %q: %w", r.Name, err)
	}
	return nil
}

// restoreShapes rebuilds each destination's shape table from its records.
func (m *Model) restoreShapes(s *service, recs []ShapeRecord) error {
	byDest := map[string][]ShapeRecord{}
	for _, r := range recs {
		byDest[r.Destination] = append(byDest[r.Destination], r)
	}
	var errs []error
	for dest, rs := range byDest {
		k, err := parseDestKey(dest)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		e, ok := s.dests.Peek(k)
		if !ok {
			continue // the destination was evicted
		}
		es := e.edgeState()
		t := es.table(m.cfg.Shapes)
		st := shape.TableState{Fresh: float64(len(rs))}
		for _, r := range rs {
			sh, err := shape.Parse(r.Shape)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			key := m.shaper.KeyOf(sh)
			w := r.Weight
			if w <= 0 {
				w = float64(r.Count)
			}
			st.Shapes = append(st.Shapes, shape.ShapeCount{Key: key, Count: w})
			st.Total += w
			if r.LastSeen.After(st.Clock) {
				st.Clock = r.LastSeen
			}
			es.putShape(newShapeInfo(key, sh, r.FirstSeen, r.LastSeen, r.Source))
		}
		slices.SortFunc(st.Shapes, func(a, b shape.ShapeCount) int { return cmp.Compare(a.Key, b.Key) })
		n := t.Len()
		if err := t.Restore(st); err != nil {
			errs = append(errs, err)
		}
		s.shapeCount += t.Len() - n
	}
	return errors.Join(errs...)
}
