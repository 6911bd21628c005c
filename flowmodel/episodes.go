package flowmodel

import (
	"encoding/hex"
	"slices"
	"sync/atomic"
	"time"

	"github.com/meshguard/meshguard/flowmodel/episode"
)

// Alert episodes (issue 11): every alert and block of a service out of learning joins an
// episode of its kind (see episodeKind) for its service and destination; an alert
// storm is one episode. Verdict.Episode and Verdict.EpisodeNew say which, so that spans and
// metrics can count episodes rather than requests.

// DefaultEpisodeGap is the default of Config.Episodes.QuietGap (alert-episode-gap).
const DefaultEpisodeGap = episode.DefaultQuietGap

// episodes is a Model's episode tracker and the event clock its sweeps use.
type episodes struct {
	t     *episode.Tracker
	clock atomic.Int64 // latest event time (Unix ns) a Persister saw
}

func (e *episodes) init(cfg episode.Config) error {
	t, err := episode.New(cfg)
	e.t = t
	return err
}

// episodeDest caches the text of the destination of a service's latest alert, so that an
// alert storm to one destination does not format it again for every request.
type episodeDest struct {
	d    Destination
	text string
}

func (c *episodeDest) of(d Destination) string {
	if c.text == "" || c.d != d {
		c.d, c.text = d, d.String()
	}
	return c.text
}

// kindOrder is the order in which an alert's reasons name its episode: the reasons that say
// what is new (a destination, a shape, a value) before those that say how much. The order is
// fixed, not by score, so that a storm keeps its kind while the scores of its reasons move
// (a beacon to a new shape is new_shape from its first request, when its rate_spike comes to
// outscore it too).
var kindOrder = [...]Reason{ReasonQuarantined, ReasonNewDestination, ReasonHostIPMismatch,
	ReasonUnknownDestination, ReasonIdentityMismatch, ReasonInvalidRequest,
	ReasonNewShape, ReasonParameterValue, ReasonOversizedShape, ReasonRareShape,
	ReasonRateSpike, ReasonBurst, ReasonVolumeSpike}

// episodeKind is the reason an alert's episode is about: the first of its reasons in
// kindOrder.
func episodeKind(rs Reasons) Reason {
	for _, r := range kindOrder {
		if rs.Has(r) {
			return r
		}
	}
	for r := Reason(0); r < numReasons; r++ { // a reason added to verdict.go but not above
		if rs.Has(r) {
			return r
		}
	}
	return 0
}

// annotate completes a verdict: the parameter that raised parameter_value, and the episode of
// an alert or block of a service out of learning. Call with s.mu held.
func (m *Model) annotate(s *service, f *Flow, v *Verdict) {
	if v.Reasons.Has(ReasonParameterValue) {
		v.Param = s.par.last
	}
	if v.Action == Allow || v.Mode == ModeLearn || v.Reasons.Empty() {
		return
	}
	var trace string
	if f.TraceID != ([16]byte{}) {
		trace = hex.EncodeToString(f.TraceID[:])
	}
	kind := episodeKind(v.Reasons)
	r := m.episodes.t.Observe(episode.Alert{
		Service: s.name, Destination: s.ep.of(f.Destination), Kind: kind.String(),
		Time: f.Time, Score: v.Score, Reasons: uint64(v.Reasons), TraceID: trace,
	})
	v.Episode, v.EpisodeNew, v.EpisodeKind = r.ID, r.New, kind
}

// Episodes returns the open alert episodes of a service, oldest first, and its episodes
// among the last Config.Episodes.KeepClosed closed, most recent first. An Episode's Reasons
// are a Reasons set.
func (m *Model) Episodes(service string) (open, closed []episode.Episode) {
	return m.episodes.t.Open(service), m.episodes.t.ClosedFor(service, 0)
}

// maxReportedClosed bounds the closed episodes a ServiceRecord reports.
const maxReportedClosed = 16

// EpisodeReport is what a ServiceRecord says of a service's alert episodes.
type EpisodeReport struct {
	// Open lists the open episodes, oldest first; Recent the latest closed ones (at most 16),
	// most recent first.
	Open   []EpisodeRecord `json:"open"`
	Recent []EpisodeRecord `json:"recent"`
}

// EpisodeRecord is one alert episode: alerts of one kind for one service and destination,
// each within the quiet gap (alert-episode-gap) of the one before.
type EpisodeRecord struct {
	ID          uint64    `json:"id"`
	Destination string    `json:"destination,omitempty"`
	Kind        string    `json:"kind"`
	FirstSeen   time.Time `json:"first_seen"`
	LastSeen    time.Time `json:"last_seen"`
	Count       int64     `json:"count"`
	PeakScore   float64   `json:"peak_score"`
	Reasons     []string  `json:"reasons"`
	// TraceIDs are the trace of the peak and of the first alerts, without repeats.
	TraceIDs []string `json:"trace_ids,omitempty"`
}

func episodeRecord(e *episode.Episode) EpisodeRecord {
	r := EpisodeRecord{ID: e.ID, Destination: e.Destination, Kind: e.Kind, FirstSeen: e.First, LastSeen: e.Last,
		Count: e.Count, PeakScore: e.Peak, Reasons: Reasons(e.Reasons).Strings()}
	for _, id := range append([]string{e.PeakTrace}, e.Examples[:]...) {
		if id != "" && !slices.Contains(r.TraceIDs, id) {
			r.TraceIDs = append(r.TraceIDs, id)
		}
	}
	return r
}

// episodeReport returns the episodes of a service, nil when it has none.
func (m *Model) episodeReport(service string) *EpisodeReport {
	open, closed := m.episodes.t.Open(service), m.episodes.t.ClosedFor(service, maxReportedClosed)
	if len(open)+len(closed) == 0 {
		return nil
	}
	r := &EpisodeReport{Open: make([]EpisodeRecord, 0, len(open)), Recent: make([]EpisodeRecord, 0, len(closed))}
	for i := range open {
		r.Open = append(r.Open, episodeRecord(&open[i]))
	}
	for i := range closed {
		r.Recent = append(r.Recent, episodeRecord(&closed[i]))
	}
	return r
}

// SweepEpisodes closes the episodes whose last alert is more than the quiet gap before now
// (event time), and returns how many it closed. A Persister calls it at every flush with the
// latest event time it has seen.
func (m *Model) SweepEpisodes(now time.Time) int { return m.episodes.t.Sweep(now) }

// sweepEpisodes advances the episodes' clock to the latest LastSeen of rs and sweeps.
func (m *Model) sweepEpisodes(rs []ServiceRecord) {
	clock := m.episodes.clock.Load()
	for i := range rs {
		if n := rs[i].LastSeen.UnixNano(); !rs[i].LastSeen.IsZero() && n > clock {
			clock = n
		}
	}
	if clock == 0 {
		return
	}
	m.episodes.clock.Store(clock)
	m.SweepEpisodes(time.Unix(0, clock))
}
