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
