// Package episode groups alerts into episodes: consecutive alerts of one kind (a reason code)
// for one service and destination, each less than a quiet gap after the one before, are one
// episode, with its first and last time, its number of alerts, its peak score, the reasons
// its alerts gave and the trace ids of a few of them. An episode is what an operator reviews
// and what an alert budget counts: a level shift that alarms for a day is one episode, not
// 1440 alerting minutes.
//
// A Tracker is bounded: it keeps at most MaxOpen open episodes per service (closing the one
// extended least recently to make room), MaxServices services (forgetting the one alerted
// least recently, closing its episodes) and the KeepClosed episodes closed last. Extending an
// open episode, the common case of an alert storm, does not allocate. A Tracker is safe for
// concurrent use.
package episode

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// MaxExamples is the number of trace ids an episode keeps from its first alerts (the trace of
// its peak is kept besides).
const MaxExamples = 3

// Config tunes a Tracker. The zero value of a field means its default.
type Config struct {
	// QuietGap is the time after an episode's last alert after which it is closed: the next
	// alert of its kind opens a new episode. Default: 1 hour.
	QuietGap time.Duration
	// MaxOpen is the number of open episodes kept per service. Default: 64.
	MaxOpen int
	// MaxServices is the number of services whose episodes are tracked. Default: 100,000.
	MaxServices int
	// KeepClosed is the number of closed episodes kept for Closed. Default: 1024.
	KeepClosed int
}

// Defaults for zero Config fields.
const (
	DefaultQuietGap    = time.Hour
	DefaultMaxOpen     = 64
	DefaultMaxServices = 100_000
	DefaultKeepClosed  = 1024
)

// Check applies defaults and reports every problem in c.
func (c Config) Check() (Config, error) {
	if c.QuietGap == 0 {
		c.QuietGap = DefaultQuietGap
	}
	if c.MaxOpen == 0 {
		c.MaxOpen = DefaultMaxOpen
	}
	if c.MaxServices == 0 {
		c.MaxServices = DefaultMaxServices
	}
	if c.KeepClosed == 0 {
		c.KeepClosed = DefaultKeepClosed
	}
	var errs []error
	if c.QuietGap < time.Millisecond {
		errs = append(errs, fmt.Errorf("episode quiet gap must be at least 1ms, got %s", c.QuietGap))
	}
	if c.MaxOpen < 1 {
		errs = append(errs, fmt.Errorf("episode max open per service must be positive, got %d", c.MaxOpen))
	}
	if c.MaxServices < 1 {
		errs = append(errs, fmt.Errorf("episode max services must be positive, got %d", c.MaxServices))
	}
	if c.KeepClosed < 1 {
		errs = append(errs, fmt.Errorf("episode keep closed must be positive, got %d", c.KeepClosed))
	}
	return c, errors.Join(errs...)
}

// Alert is one alerted request or interval, as the caller reports it.
type Alert struct {
	// Service and Destination (empty for a service-wide alert) name what alerted.
	Service, Destination string
	// Kind is the reason code the episode is about, such as "rate_spike".
	Kind string
	// Time is the event time of the alert.
	Time time.Time
	// Score is the alert's score; the episode keeps the highest.
	Score float64
	// Reasons is the caller's set of reasons of this alert (flowmodel.Reasons, as bits);
	// the episode keeps their union.
	Reasons uint64
	// TraceID identifies the trace of the request, "" when there is none.
	TraceID string
}

// Episode is a run of alerts of one kind for one service and destination.
type Episode struct {
	// ID numbers the episodes of a Tracker from 1, in the order they were opened.
	ID                         uint64
	Service, Destination, Kind string
	// First and Last are the event times of the first and the last alert.
	First, Last time.Time
	// Count is the number of alerts.
	Count int64
	// Peak is the highest score and PeakTrace the trace id of the alert that had it.
	Peak      float64
	PeakTrace string
	// Reasons is the union of the alerts' reasons.
	Reasons uint64
	// Examples holds the trace ids of the first alerts that had one; the rest are "".
	Examples [MaxExamples]string
}

// Result says what Observe did with an alert.
type Result struct {
	// ID is the episode the alert belongs to.
	ID uint64
	// New is set when the alert opened the episode.
	New bool
	// Day is the number of episodes the alert's service has opened in the UTC day of the
	// alert's event time, this one included: what an alert budget of episodes per
	// service-day counts. (An alert older than the service's latest day counts in it.)
	Day int
}

type key struct{ dest, kind string }

type service struct {
	open     *simplelru.LRU[key, *Episode]
	day      int64 // UTC day (Unix days) of the latest alert
	dayCount int
}

// Tracker groups alerts into episodes.
type Tracker struct {
	cfg   Config
	gapMS int64

	mu       sync.Mutex
	services *simplelru.LRU[string, *service]
	nextID   uint64
	closed   []Episode // ring of the last KeepClosed closed episodes
	nClosed  uint64    // episodes closed since the start
}

// New returns a Tracker for cfg.
func New(cfg Config) (*Tracker, error) {
	cfg, err := cfg.Check()
	if err != nil {
		return nil, err
	}
	t := &Tracker{cfg: cfg, gapMS: cfg.QuietGap.Milliseconds(), closed: make([]Episode, 0, min(cfg.KeepClosed, 64))}
	// NewLRU fails only for a non-positive size, which Check rules out.
	t.services, _ = simplelru.NewLRU(cfg.MaxServices, func(_ string, s *service) {
		for _, e := range s.open.Values() {
			t.close(e)
		}
	})
	return t, nil
}

// Config returns the tracker's configuration with defaults applied.
func (t *Tracker) Config() Config { return t.cfg }

const msPerDay = 24 * 60 * 60 * 1000

// Observe adds an alert to its open episode, or opens one when there is none or the alert is
// more than QuietGap after its last alert (or before its first), closing the old one.
func (t *Tracker) Observe(a Alert) Result {
	ms := a.Time.UnixMilli()
	day := ms / msPerDay
	if ms < 0 && ms%msPerDay != 0 {
		day--
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	s, ok := t.services.Get(a.Service)
	if !ok {
		s = t.newService()
		t.services.Add(a.Service, s)
	}
	if day > s.day || s.dayCount == 0 {
		s.day, s.dayCount = day, 0
	}
	k := key{a.Destination, a.Kind}
	if e, ok := s.open.Get(k); ok {
		if ms-e.Last.UnixMilli() <= t.gapMS && e.First.UnixMilli()-ms <= t.gapMS {
			extend(e, &a)
			return Result{ID: e.ID, Day: s.dayCount}
		}
		s.open.Remove(k) // closes it
	}
	t.nextID++
	e := &Episode{
		ID: t.nextID, Service: a.Service, Destination: a.Destination, Kind: a.Kind,
		First: a.Time, Last: a.Time, Peak: a.Score, PeakTrace: a.TraceID,
	}
	extend(e, &a)
	s.open.Add(k, e)
	s.dayCount++
	return Result{ID: e.ID, New: true, Day: s.dayCount}
}

// extend adds a to e.
func extend(e *Episode, a *Alert) {
	e.Count++
	if a.Time.Before(e.First) {
		e.First = a.Time
	}
	if a.Time.After(e.Last) {
		e.Last = a.Time
	}
	if a.Score > e.Peak {
		e.Peak, e.PeakTrace = a.Score, a.TraceID
	}
	e.Reasons |= a.Reasons
	if a.TraceID != "" && e.Examples[MaxExamples-1] == "" {
		for i := range e.Examples {
			if e.Examples[i] == "" {
				e.Examples[i] = a.TraceID
				break
			}
		}
	}
}

func (t *Tracker) newService() *service {
	s := &service{}
	s.open, _ = simplelru.NewLRU(t.cfg.MaxOpen, func(_ key, e *Episode) { t.close(e) })
	return s
}

// close records e as closed. Call with t.mu held.
func (t *Tracker) close(e *Episode) {
	if len(t.closed) < t.cfg.KeepClosed {
		t.closed = append(t.closed, *e)
	} else {
		t.closed[t.nClosed%uint64(t.cfg.KeepClosed)] = *e
	}
	t.nClosed++
}

// Sweep closes every open episode whose last alert is more than QuietGap before now (event
// time), and returns how many it closed. Call it now and then (each flush, say) so that an
// episode that has ended is reported as closed without waiting for its next alert.
func (t *Tracker) Sweep(now time.Time) int {
	ms := now.UnixMilli()
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, name := range t.services.Keys() {
		s, _ := t.services.Peek(name)
		for _, k := range s.open.Keys() {
			if e, _ := s.open.Peek(k); ms-e.Last.UnixMilli() > t.gapMS {
				s.open.Remove(k)
				n++
			}
		}
	}
	return n
}

// Open returns copies of the service's open episodes, oldest first ("" lists every
// service's).
func (t *Tracker) Open(name string) []Episode {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []Episode
	add := func(s *service) {
		for _, e := range s.open.Values() {
			out = append(out, *e)
		}
	}
	if name != "" {
		if s, ok := t.services.Peek(name); ok {
			add(s)
		}
	} else {
		for _, s := range t.services.Values() {
			add(s)
		}
	}
	slices.SortFunc(out, func(a, b Episode) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// Closed returns copies of the last KeepClosed closed episodes, in the order they closed,
// and the number of episodes closed since the Tracker was made.
func (t *Tracker) Closed() ([]Episode, uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := len(t.closed)
	out := make([]Episode, 0, n)
	if t.nClosed > uint64(n) {
		start := int(t.nClosed % uint64(n))
		out = append(out, t.closed[start:]...)
		out = append(out, t.closed[:start]...)
	} else {
		out = append(out, t.closed...)
	}
	return out, t.nClosed
}
