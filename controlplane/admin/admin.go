// Package admin is meshguard's admin HTTP API for people and probes: /healthz, /readyz,
// /metrics, and the service API (list services, change a service's mode). It is meant for
// loopback until authentication lands; the caller decides where it listens.
package admin

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/meshguard/meshguard/flowmodel"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Model is what the admin API needs of the flow model. flowmodel.Model satisfies it.
type Model interface {
	ServiceNames() []string
	Service(name string) (flowmodel.ServiceRecord, bool)
	SetMode(name string, c flowmodel.ModeChange) error
	ModeCounts() map[flowmodel.Mode]int
	Approve(service string, fb flowmodel.Feedback) error
	Reject(service string, fb flowmodel.Feedback) error
}

// Handler serves the admin API.
type Handler struct {
	model  Model
	ready  atomic.Bool
	log    *slog.Logger
	mux    *http.ServeMux
	gather prometheus.Gatherer
	now    func() time.Time

	onChange func()
}

// Options configure a Handler.
type Options struct {
	// Gatherer serves /metrics. Default: no /metrics endpoint.
	Gatherer prometheus.Gatherer
	Logger   *slog.Logger
	// Now is the wall clock used to stamp mode changes. Default: time.Now.
	Now func() time.Time
}

// maxBody bounds request bodies.
const maxBody = 64 << 10

// New returns the admin handler. It reports not ready until SetReady(true).
func New(m Model, o Options) *Handler {
	h := &Handler{model: m, log: o.Logger, gather: o.Gatherer, now: o.Now, mux: http.NewServeMux()}
	if h.log == nil {
		h.log = slog.Default()
	}
	if h.now == nil {
		h.now = time.Now
	}
	h.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	h.mux.HandleFunc("GET /readyz", h.readyz)
	if h.gather != nil {
		h.mux.Handle("GET /metrics", promhttp.HandlerFor(h.gather, promhttp.HandlerOpts{ErrorLog: slogPrinter{h.log}}))
	}
	h.mux.HandleFunc("GET /v1/services", h.listServices)
	h.mux.HandleFunc("GET /v1/services/{service}", h.getService)
	h.mux.HandleFunc("PUT /v1/services/{service}/mode", h.putMode)
	h.mux.HandleFunc("POST /v1/services/{service}/approvals", h.feedback("approve", m.Approve))
	h.mux.HandleFunc("POST /v1/services/{service}/rejections", h.feedback("reject", m.Reject))
	return h
}

// OnChange, when set, is called after every change an operator makes (mode, approval,
// rejection), e.g. to push new Envoy configuration at once.
func (h *Handler) OnChange(fn func()) { h.onChange = fn }

func (h *Handler) changed() {
	if h.onChange != nil {
		h.onChange()
	}
}

// SetReady sets what /readyz reports.
func (h *Handler) SetReady(ready bool) { h.ready.Store(ready) }

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

func (h *Handler) readyz(w http.ResponseWriter, _ *http.Request) {
	if !h.ready.Load() {
		http.Error(w, "not ready", http.StatusServiceUnavailable)
		return
	}
	io.WriteString(w, "ok\n")
}

// ServiceList is the body of GET /v1/services.
type ServiceList struct {
	Services []flowmodel.ServiceRecord `json:"services"`
}

// listServices writes every service, one record at a time: with thousands of services of
// hundreds of destinations, the whole list is never held in memory.
func (h *Handler) listServices(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	bw := bufio.NewWriterSize(w, 32<<10)
	enc := json.NewEncoder(bw)
	bw.WriteString(`{"services":[`)
	first := true
	for _, name := range h.model.ServiceNames() {
		rec, ok := h.model.Service(name)
		if !ok {
			continue // gone meanwhile
		}
		if !first {
			bw.WriteByte(',')
		}
		first = false
		if err := enc.Encode(rec); err != nil {
			return // the client has gone
		}
	}
	bw.WriteString("]}\n")
	_ = bw.Flush() // the client has gone if this fails
}

func (h *Handler) getService(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("service")
	s, ok := h.model.Service(name)
	if !ok {
		writeError(w, http.StatusNotFound, fmt.Sprintf("unknown service %q", name))
		return
	}
	writeJSON(w, http.StatusOK, s)
}

// ModeRequest is the body of PUT /v1/services/{service}/mode.
type ModeRequest struct {
	Mode string `json:"mode"`
	// Allow lists destinations a quarantined service may still reach.
	Allow []string `json:"allow,omitempty"`
}

func (h *Handler) putMode(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("service")
	if name == "" || len(name) > 253 || strings.ContainsAny(name, "\x00\n\r") {
		writeError(w, http.StatusBadRequest, "bad service name")
		return
	}
	var req ModeRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusRequestEntityTooLarge, "body too large")
			return
		}
		writeError(w, http.StatusBadRequest, "bad JSON body: "+err.Error()+`; want {"mode":"learn|monitor|enforce|quarantine"}`)
		return
	}
	mode, err := flowmodel.ParseMode(req.Mode)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if len(req.Allow) > 0 && mode != flowmodel.ModeQuarantine {
		writeError(w, http.StatusBadRequest, "allow is only valid with mode quarantine")
		return
	}
	by := "admin-api " + r.RemoteAddr
	if err := h.model.SetMode(name, flowmodel.ModeChange{Mode: mode, Allow: req.Allow, By: by, At: h.now()}); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	h.log.Info("mode changed", slog.String("service", name), slog.String("mode", mode.String()), slog.String("by", by))
	h.changed()
	s, _ := h.model.Service(name)
	writeJSON(w, http.StatusOK, s)
}

// FeedbackRequest is the body of POST /v1/services/{service}/approvals and /rejections.
type FeedbackRequest struct {
	// Destination is "host:port", "ip:port" or "[v6]:port".
	Destination string `json:"destination"`
	// Shape, when set, is a request shape on Destination, in the text form alerts show.
	Shape string `json:"shape,omitempty"`
	// By names who decided; the API adds where the request came from.
	By string `json:"by"`
}

func (h *Handler) feedback(action string, apply func(string, flowmodel.Feedback) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("service")
		var req FeedbackRequest
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			writeError(w, http.StatusBadRequest, "bad JSON body: "+err.Error()+`; want {"destination":"host:port","shape":"...","by":"name"}`)
			return
		}
		if strings.TrimSpace(req.By) == "" {
			writeError(w, http.StatusBadRequest, `"by" is required: say who decides`)
			return
		}
		by := req.By + " (admin-api " + r.RemoteAddr + ")"
		if err := apply(name, flowmodel.Feedback{Destination: req.Destination, Shape: req.Shape, By: by, At: h.now()}); err != nil {
			code := http.StatusBadRequest
			if _, ok := h.model.Service(name); !ok {
				code = http.StatusNotFound
			}
			writeError(w, code, err.Error())
			return
		}
		h.log.Info("feedback", slog.String("action", action), slog.String("service", name),
			slog.String("destination", req.Destination), slog.String("shape", req.Shape), slog.String("by", by))
		h.changed()
		s, _ := h.model.Service(name)
		writeJSON(w, http.StatusOK, s)
	}
}

// ErrorBody is the body of every error response.
type ErrorBody struct {
	Error string `json:"error"`
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, ErrorBody{Error: msg})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v) // the client has gone if this fails
}

type slogPrinter struct{ l *slog.Logger }

func (p slogPrinter) Println(v ...any) { p.l.Error(fmt.Sprint(v...)) }

// ModeCollector exports meshguard_services{mode}: the number of services in each mode,
// computed at scrape time.
func ModeCollector(m Model) prometheus.Collector { return modeCollector{m} }

type modeCollector struct{ m Model }

var servicesDesc = prometheus.NewDesc("meshguard_services", "Services by mode.", []string{"mode"}, nil)

func (c modeCollector) Describe(ch chan<- *prometheus.Desc) { ch <- servicesDesc }

func (c modeCollector) Collect(ch chan<- prometheus.Metric) {
	counts := c.m.ModeCounts()
	for _, name := range flowmodel.ModeNames {
		mode, _ := flowmodel.ParseMode(name)
		ch <- prometheus.MustNewConstMetric(servicesDesc, prometheus.GaugeValue, float64(counts[mode]), name)
	}
}
