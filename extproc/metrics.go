package extproc

import (
	"time"

	"github.com/meshguard/meshguard/flowmodel"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
)

// Metrics are the Prometheus metrics of the ext_proc server. A nil *Metrics counts nothing.
//
//	meshguard_decisions_total{verdict}                 decisions by verdict
//	meshguard_decision_reasons_total{verdict,reason}   reason codes by verdict (a decision
//	                                                   with two reasons counts in both)
//	meshguard_decision_duration_seconds                from the deciding message's arrival
//	                                                   to its response being sent
//	meshguard_extproc_streams_active                   open ext_proc streams
//	meshguard_extproc_stream_errors_total{code}        streams ended by an error
//	meshguard_decision_logs_suppressed_total           decision log lines over the rate cap
//	meshguard_decision_budget_exceeded_total           decisions cut by the decision budget
//	                                                   (also counted in decisions_total under
//	                                                   the budget's answer, alert or block)
//	meshguard_decision_budget_late_total{verdict}      verdicts the decider gave after the
//	                                                   budget's answer had been sent
//	meshguard_extproc_streams_rejected_total           streams refused (RESOURCE_EXHAUSTED)
//	                                                   because MaxStreams were being served
//	meshguard_extproc_streams_awaiting_first_message   streams opened that have not sent
//	                                                   their first message yet (closed after
//	                                                   FirstMessageTimeout, counted in
//	                                                   stream_errors_total{code="DeadlineExceeded"})
//	meshguard_alert_episodes_total{reason}             alert episodes opened, by the reason
//	                                                   they are about (an alert storm is one)
type Metrics struct {
	decisions [3]prometheus.Counter // by flowmodel.Action
	reasons   [3][]prometheus.Counter
	latency   prometheus.Observer
	active    prometheus.Gauge
	errors    *prometheus.CounterVec
	logsDrop  prometheus.Counter
	budgetCut prometheus.Counter
	late      [3]prometheus.Counter // by flowmodel.Action
	rejected  prometheus.Counter
	awaiting  prometheus.Gauge
	episodes  []prometheus.Counter // new alert episodes, by flowmodel.Reason (episodes.go)
}

// NewMetrics registers the metrics with reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	decisions := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshguard_decisions_total", Help: "Decisions by verdict.",
	}, []string{"verdict"})
	reasons := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshguard_decision_reasons_total", Help: "Reason codes of decisions, by verdict and reason.",
	}, []string{"verdict", "reason"})
	latency := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "meshguard_decision_duration_seconds",
		Help:    "Time from the arrival of the deciding ext_proc message to the response being sent.",
		Buckets: []float64{5e-6, 10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 50e-3, 200e-3},
	})
	active := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "meshguard_extproc_streams_active", Help: "Open ext_proc streams.",
	})
	errs := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshguard_extproc_stream_errors_total", Help: "ext_proc streams ended by an error, by gRPC code.",
	}, []string{"code"})
	logsDrop := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "meshguard_decision_logs_suppressed_total", Help: "Decision log lines not written because of the rate cap.",
	})
	budgetCut := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "meshguard_decision_budget_exceeded_total", Help: "Decisions cut by the decision budget and answered with the budget's answer.",
	})
	late := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshguard_decision_budget_late_total", Help: "Verdicts given after the decision budget's answer had been sent, by the verdict they would have been.",
	}, []string{"verdict"})
	rejected := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "meshguard_extproc_streams_rejected_total", Help: "ext_proc streams refused with RESOURCE_EXHAUSTED because the stream limit was reached.",
	})
	awaiting := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "meshguard_extproc_streams_awaiting_first_message", Help: "ext_proc streams opened that have not sent their first message yet.",
	})
	for _, c := range []prometheus.Collector{decisions, reasons, latency, active, errs, logsDrop, budgetCut, late, rejected, awaiting} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	m := &Metrics{latency: latency, active: active, errors: errs, logsDrop: logsDrop, budgetCut: budgetCut, rejected: rejected, awaiting: awaiting}
	if err := m.registerEpisodes(reg); err != nil {
		return nil, err
	}
	all := flowmodel.AllReasons()
	for a := flowmodel.Allow; a <= flowmodel.Block; a++ {
		m.late[a] = late.WithLabelValues(a.String())
		m.decisions[a] = decisions.WithLabelValues(a.String())
		m.reasons[a] = make([]prometheus.Counter, len(all))
		for i, r := range all {
			m.reasons[a][i] = reasons.WithLabelValues(a.String(), r.String())
		}
	}
	return m, nil
}

func (m *Metrics) decided(v flowmodel.Verdict) {
	if m == nil || v.Action > flowmodel.Block {
		return
	}
	m.decisions[v.Action].Inc()
	m.episodeOpened(v)
	if v.Reasons.Empty() {
		return
	}
	for i, c := range m.reasons[v.Action] {
		if v.Reasons.Has(flowmodel.Reason(i)) {
			c.Inc()
		}
	}
}

func (m *Metrics) observeLatency(d time.Duration) {
	if m != nil {
		m.latency.Observe(d.Seconds())
	}
}

func (m *Metrics) streamStarted() {
	if m != nil {
		m.active.Inc()
	}
}

func (m *Metrics) streamEnded() {
	if m != nil {
		m.active.Dec()
	}
}

func (m *Metrics) streamError(c codes.Code) {
	if m != nil {
		m.errors.WithLabelValues(c.String()).Inc()
	}
}

func (m *Metrics) logSuppressed() {
	if m != nil {
		m.logsDrop.Inc()
	}
}

func (m *Metrics) budgetExceeded() {
	if m != nil {
		m.budgetCut.Inc()
	}
}

func (m *Metrics) budgetLate(v flowmodel.Verdict) {
	if m != nil && v.Action <= flowmodel.Block {
		m.late[v.Action].Inc()
	}
}

func (m *Metrics) streamRejected() {
	if m != nil {
		m.rejected.Inc()
	}
}

func (m *Metrics) awaitFirst(d float64) {
	if m != nil {
		m.awaiting.Add(d)
	}
}
