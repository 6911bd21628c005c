package extproc

import (
	"hash/maphash"
	"math"
	"sync"
	"time"
)

// The per-service table of logLimiter: logSlots places (a power of two), a service looked up
// in the logProbe places after its hash. Bounded memory: about 40 KiB, whatever the number of
// services.
const (
	logSlots = 1024
	logProbe = 8
)

// logLimiter lets about perSecond decision log lines through in each second of wall clock and
// counts the others, so that a scan of a million addresses costs a million counter
// increments, not a million synchronous writes to stderr on the request path.
//
// The cap is shared fairly between services, so that a flood from one service cannot hide
// another's lines:
//   - the first line of a service in a second is always logged, even past the cap (at most
//     logSlots such lines a second: a service that finds its places in the table taken by
//     services that logged in the same second falls under the shared cap alone);
//   - a service's further lines take from the shared cap, up to its share: perSecond divided
//     by the number of services that logged in this second or the previous one.
//
// A zero logLimiter with perSecond set is ready; a negative perSecond logs every line.
type logLimiter struct {
	perSecond int64

	mu         sync.Mutex
	seed       maphash.Seed
	slots      []logSlot // nil until the first line
	window     int64     // the Unix second being counted
	used       int64     // lines logged in window
	active     int64     // services that logged in window
	prevActive int64     // services that logged in the second before window
	dropped    int64     // lines suppressed, not yet reported
}

// logSlot is a service's count in the window it names. A slot whose window is not the current
// one is free.
type logSlot struct {
	service string
	hash    uint64
	window  int64
	lines   int64
}

// allow reports whether a line of service may be logged at now. When a new second starts, it
// returns how many lines the previous windows suppressed, for the caller to report once.
func (l *logLimiter) allow(now time.Time, service string) (ok bool, suppressed int64) {
	if l.perSecond < 0 {
		return true, 0
	}
	sec := now.Unix()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.slots == nil {
		l.seed = maphash.MakeSeed()
		l.slots = make([]logSlot, logSlots)
		for i := range l.slots {
			l.slots[i].window = math.MinInt64 // free
		}
		l.window = math.MinInt64
	}
	// Times from concurrent streams may arrive slightly out of order: a second that has
	// passed counts in the current one.
	if sec > l.window {
		l.prevActive = 0
		if sec == l.window+1 {
			l.prevActive = l.active
		}
		l.window, l.used, l.active = sec, 0, 0
		suppressed, l.dropped = l.dropped, 0
	}
	slot := l.slot(service)
	if slot != nil && slot.window != l.window {
		// The service's first line in this second.
		slot.window, slot.lines = l.window, 1
		l.active++
		l.used++
		return true, suppressed
	}
	share := l.perSecond / max(l.active, l.prevActive, 1)
	if l.used < l.perSecond && (slot == nil || slot.lines < share) {
		if slot != nil {
			slot.lines++
		}
		l.used++
		return true, suppressed
	}
	l.dropped++
	return false, suppressed
}

// slot is service's place in the table: the one it took in this window, else a free one
// among its logProbe places, else nil (they are all taken by services logging in this second).
func (l *logLimiter) slot(service string) *logSlot {
	h := maphash.String(l.seed, service)
	var free *logSlot
	for i := range uint64(logProbe) {
		s := &l.slots[(h+i)&(logSlots-1)]
		if s.window != l.window {
			if free == nil {
				free = s
			}
			continue
		}
		if s.hash == h && s.service == service {
			return s
		}
	}
	if free != nil {
		free.service, free.hash = service, h
	}
	return free
}
