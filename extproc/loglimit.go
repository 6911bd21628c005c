package extproc

import (
	"sync/atomic"
	"time"
)

// logLimiter lets at most perSecond decision log lines through in each second of wall
// clock and counts the others, so that a scan of a million addresses costs a million
// counter increments, not a million synchronous writes to stderr on the request path.
type logLimiter struct {
	perSecond int64
	window    atomic.Int64 // the Unix second being counted
	used      atomic.Int64
	dropped   atomic.Int64 // lines suppressed in earlier windows, not yet reported
}

// allow reports whether a line may be logged at now. When a new second starts, it returns
// how many lines the previous windows suppressed, for the caller to report once.
func (l *logLimiter) allow(now time.Time) (ok bool, suppressed int64) {
	if l.perSecond < 0 {
		return true, 0
	}
	sec := now.Unix()
	if w := l.window.Load(); w != sec && l.window.CompareAndSwap(w, sec) {
		l.used.Store(0)
		suppressed = l.dropped.Swap(0)
	}
	if l.used.Add(1) <= l.perSecond {
		return true, suppressed
	}
	l.dropped.Add(1)
	return false, suppressed
}
