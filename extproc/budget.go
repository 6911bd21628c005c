package extproc

import (
	"sync"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/meshguard/meshguard/extproc/contract"
	"github.com/meshguard/meshguard/flowmodel"
)

// A decision budget bounds the time between a deciding message's arrival at the decider and
// its answer. The decider never does I/O, but it takes a per-service lock that other work
// (the admin API listing services, the persister taking changes) may hold for a while; Envoy
// waits on every request meanwhile, up to its message_timeout (200 ms by default), and then
// fails the request or lets it through by its own failure_mode_allow. With a budget, meshguard
// answers first, with the answer it was configured for, and says so in the span, the log
// line and the metrics.
//
// The fast path stays synchronous: the stream's goroutine asks the decider itself while a
// pooled timer (a watchdog) runs. When the decider answers in time, the timer is stopped and
// goes back to the pool: no goroutine, no channel and no allocation per decision. When the
// timer fires first, the watchdog's goroutine takes the stream over: it answers the deciding
// message with the budget's answer and serves the rest of the stream, while the stream's own
// goroutine waits for the decider and then for the watchdog. Whoever wins a compare-and-swap
// on the stream answers, so the deciding message is answered exactly once.
//
// Cost, measured on a shared 2-CPU machine (go test -bench 'DecideWithin|Process' ./extproc):
// arming and stopping the pooled watchdog adds about 120 ns and no allocation to a decision,
// below the noise of the whole handling of a stream (about 7 µs, BenchmarkProcess). A fresh
// time.AfterFunc per decision cost about 420 ns and 3 allocations, and running the decider in
// a goroutine per decision (select on its result and a timer) about 1.9 µs and 7 allocations,
// which is why neither is used.

// Budget answers: what to do with a request whose decision overran the budget.
const (
	OnBudgetAllow = "allow" // CONTINUE; the decision is recorded as alert
	OnBudgetBlock = "block" // ImmediateResponse 403
)

// Who answers the deciding message of a stream with a budget.
const (
	answerPending  int32 = iota // the decider is still deciding
	answerDecider               // the decider answered in time
	answerWatchdog              // the budget ran out first
)

// BudgetDetails is the ImmediateResponse details string of a 403 sent because the decision
// overran its budget.
const BudgetDetails = contract.BudgetDetails

// watchdog is a timer armed for one decision at a time. It is reused only when it was stopped
// before it fired, so a firing watchdog always sees the stream it was armed for.
type watchdog struct {
	srv   *Server
	timer *time.Timer
	st    *stream // written before the timer is armed, read when it fires
	mu    sync.Mutex
}

// decideWithin asks the decider, within the budget when one is set. inc says whether the
// flow is complete (see ask).
func (s *Server) decideWithin(st *stream, inc incomplete) (flowmodel.Verdict, bool) {
	budget := s.cfg.DecisionBudget
	if budget <= 0 {
		return s.ask(&st.flow, inc), true
	}
	if st.budgetExceeded {
		// A later request_headers on a stream the watchdog serves: the decider is stuck on
		// this service, and only one watchdog may own a stream. The budget's answer, at once.
		return flowmodel.Verdict{Action: s.onBudget}, true
	}
	// The decider reads a copy: if the watchdog takes over, the stream's flow is its own. A
	// stream may be decided more than once (one decision per request_headers).
	st.decideFlow = st.flow
	st.answeredBy.Store(answerPending)
	w, _ := s.watchdogs.Get().(*watchdog)
	if w == nil {
		w = &watchdog{srv: s}
	}
	w.mu.Lock()
	w.st = st
	w.mu.Unlock()
	if w.timer == nil {
		w.timer = time.AfterFunc(budget, w.fire)
	} else {
		w.timer.Reset(budget)
	}
	v := s.ask(&st.decideFlow, inc)
	if w.timer.Stop() {
		// It did not fire and never will for this decision: reusable.
		w.mu.Lock()
		w.st = nil // let the stream go
		w.mu.Unlock()
		s.watchdogs.Put(w)
		return v, true
	}
	if st.answeredBy.CompareAndSwap(answerPending, answerDecider) {
		return v, true // it fired, but just too late to take over
	}
	s.metrics.budgetLate(v)
	return v, false
}

// fire runs in its own goroutine when a decision overruns the budget.
func (w *watchdog) fire() {
	w.mu.Lock()
	st := w.st
	w.mu.Unlock()
	if st == nil {
		return
	}
	// The channel is made before the compare-and-swap, so that the stream's goroutine, which
	// sees the swap when its own fails, sees the channel too.
	st.handedOver = make(chan error, 1)
	if !st.answeredBy.CompareAndSwap(answerPending, answerWatchdog) {
		return
	}
	w.srv.rescue(st)
}

// rescue answers the deciding message of st with the budget's answer and serves the rest of
// the stream, then hands the result back to the stream's goroutine.
func (s *Server) rescue(st *stream) {
	s.metrics.budgetExceeded()
	st.budgetExceeded = true
	v := flowmodel.Verdict{Action: s.onBudget}
	var (
		resp  *extprocv3.ProcessingResponse
		final bool
		err   error
	)
	if ir := s.settle(st, v); ir != nil {
		resp, final, err = s.reply(st, ir, true)
	} else {
		resp, final, err = s.answer(st, st.current)
	}
	if err == nil {
		var done bool
		if done, err = s.send(st, resp, final); !done {
			err = s.serve(st, nil)
		}
	}
	st.handedOver <- err
}
