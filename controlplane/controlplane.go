// Package controlplane configures Envoy and learns from it. It ties together the xDS server
// (package controlplane/xds: listeners, clusters and routes with meshguard's ext_proc filter
// and an RBAC backstop for TCP and TLS, pushed over ADS) and the access-log receiver
// (package controlplane/accesslog: Envoy's gRPC access logs turned into flows), both served
// on one gRPC server, by default on port 18000. The admin API lives in controlplane/admin.
//
// Wiring, in cmd/meshguard:
//
//	cp, err := controlplane.New(controlplane.Config{XDS: xdsCfg}, model, logger)
//	cp.Register(xdsGRPCServer)     // ADS + AccessLogService
//	go cp.Run(ctx)                 // pushes snapshots until ctx ends
//	cp.Notify()                    // after an operator changes a mode: push now
package controlplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/meshguard/meshguard/controlplane/accesslog"
	"github.com/meshguard/meshguard/controlplane/xds"
)

// DefaultListen is the default address of the xDS gRPC server (flag --xds-listen).
const DefaultListen = "127.0.0.1:18000"

// Config configures the control plane.
type Config struct {
	XDS       xds.Config       `json:"xds,omitzero" yaml:"xds,omitempty"`
	AccessLog accesslog.Config `json:"-" yaml:"-"`
}

// Check applies defaults and reports every problem in c.
func (c Config) Check() (Config, error) {
	var errs []error
	var err error
	if c.XDS, err = c.XDS.Check(); err != nil {
		errs = append(errs, fmt.Errorf("xds: %w", err))
	}
	return c, errors.Join(errs...)
}

// Model is what the control plane needs of the model: the baselines it compiles into RBAC
// and a learner for access-log flows. *flowmodel.Model satisfies it.
type Model interface {
	xds.Baselines
	accesslog.Learner
}

// Server is the control plane: the xDS controller and the access-log receiver.
type Server struct {
	ctrl *xds.Controller
	als  *accesslog.Receiver
}

// Stats are the control plane's counters.
type Stats struct {
	XDS       xds.Stats
	AccessLog accesslog.Stats
}

// New checks cfg and returns a control plane over m. log may be nil.
func New(cfg Config, m Model, log *slog.Logger) (*Server, error) {
	cfg, err := cfg.Check()
	if err != nil {
		return nil, err
	}
	if m == nil {
		return nil, errors.New("control plane: nil model")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctrl, err := xds.NewController(cfg.XDS, m, log.With("component", "xds"))
	if err != nil {
		return nil, err
	}
	als, err := accesslog.NewReceiver(m, cfg.AccessLog, log.With("component", "accesslog"))
	if err != nil {
		return nil, err
	}
	return &Server{ctrl: ctrl, als: als}, nil
}

// Register registers the ADS service and the AccessLogService on s.
func (s *Server) Register(g *grpc.Server) {
	s.ctrl.Register(g)
	s.als.Register(g)
}

// Run pushes snapshots until ctx ends, then ends the ADS streams (so that GracefulStop of
// the gRPC server does not wait for them). It returns nil on cancellation.
func (s *Server) Run(ctx context.Context) error { return s.ctrl.Run(ctx) }

// Notify asks for a push now, e.g. after a mode change. It never blocks.
func (s *Server) Notify() { s.ctrl.Notify() }

// Stats returns the counters of the xDS controller and the access-log receiver.
func (s *Server) Stats() Stats { return Stats{XDS: s.ctrl.Stats(), AccessLog: s.als.Stats()} }

// Controller returns the xDS controller.
func (s *Server) Controller() *xds.Controller { return s.ctrl }

// Receiver returns the access-log receiver.
func (s *Server) Receiver() *accesslog.Receiver { return s.als }

// Collector exports the control plane's counters as Prometheus metrics, read at scrape time.
func (s *Server) Collector() prometheus.Collector { return collector{s} }

type collector struct{ s *Server }

var (
	descNodes    = prometheus.NewDesc("meshguard_xds_nodes", "Node keys with a snapshot (sidecar services, gateways).", nil, nil)
	descVersion  = prometheus.NewDesc("meshguard_xds_version", "Version of the last snapshot pushed.", nil, nil)
	descPushes   = prometheus.NewDesc("meshguard_xds_pushes_total", "Snapshots set.", nil, nil)
	descHolds    = prometheus.NewDesc("meshguard_xds_holds_total", "Pushes withheld: an enforce service with no destination would have had an empty allow list.", nil, nil)
	descNacks    = prometheus.NewDesc("meshguard_xds_nacks_total", "Configurations Envoy rejected.", nil, nil)
	descBuildErr = prometheus.NewDesc("meshguard_xds_build_errors_total", "Failed builds of Envoy resources.", nil, nil)
	descSkips    = prometheus.NewDesc("meshguard_xds_skips_total", "Services not enforced at L4 as asked, by reason.", []string{"reason"}, nil)
	descStreams  = prometheus.NewDesc("meshguard_accesslog_streams_total", "Access-log streams received.", nil, nil)
	descEntries  = prometheus.NewDesc("meshguard_accesslog_entries_total", "Access-log entries received, by kind.", []string{"kind"}, nil)
	descFlows    = prometheus.NewDesc("meshguard_accesslog_flows_total", "Flows learned or decided from access logs.", nil, nil)
	descDropped  = prometheus.NewDesc("meshguard_accesslog_dropped_total", "Access-log entries not turned into flows, by reason.", []string{"reason"}, nil)
)

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descNodes, descVersion, descPushes, descHolds, descNacks, descBuildErr, descSkips, descStreams, descEntries, descFlows, descDropped} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	st := c.s.Stats()
	x, a := st.XDS, st.AccessLog
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	gauge(descNodes, float64(x.Nodes))
	gauge(descVersion, float64(x.Version))
	counter(descPushes, float64(x.Pushes))
	counter(descHolds, float64(x.Holds))
	counter(descNacks, float64(x.Nacks))
	counter(descBuildErr, float64(x.BuildErrors))
	for r, n := range x.Skips {
		counter(descSkips, float64(n), r)
	}
	counter(descStreams, float64(a.Streams))
	for k, n := range a.Entries {
		counter(descEntries, float64(n), k.String())
	}
	counter(descFlows, float64(a.Flows))
	for r, n := range a.Dropped {
		counter(descDropped, float64(n), r)
	}
}
