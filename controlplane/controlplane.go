// Package controlplane configures Envoy and learns from it. It ties together the xDS server
// (package controlplane/xds: listeners, clusters and routes with meshguard's ext_proc filter
// and an RBAC backstop for TCP and TLS, pushed over ADS) and the access-log receiver
// (package controlplane/accesslog: Envoy's gRPC access logs turned into flows), both served
// on one gRPC server, by default on 127.0.0.1:18000. The admin API lives in
// controlplane/admin.
//
// # Who may connect
//
// With Config.TLS the server speaks only TLS on every listener (no plaintext fallback: the
// handlers also refuse a connection without TLS, should the server be wired without
// NewGRPCServer's credentials); with a client CA, each node's identity comes from its client
// certificate's SPIFFE ID and must back what the node claims (package nodeauth): a node
// that claims another identity is refused on ADS and on the AccessLogService, ADS serves a
// node only its own service's policy, and a sidecar's access logs only update its own
// service. A listener beyond loopback or a unix socket needs mutual TLS, unless
// Config.InsecureListen says otherwise (and a warning is logged): without mutual TLS every
// process that reaches the listener can claim any node.
//
// Wiring, in cmd/meshguard:
//
//	cp, err := controlplane.New(cfg, model, logger) // cfg.Check()ed; loads the TLS files
//	lis, err := listen(ctx, cfg.Listen)
//	g := cp.NewGRPCServer(opts...)                  // TLS credentials; ADS + AccessLogService
//	healthpb.RegisterHealthServer(g, hs)
//	go cp.Run(ctx)                                  // pushes snapshots, reloads TLS files
//	go cp.Serve(g, lis)                             // refuses an unprotected non-local listener
//	cp.Notify()                                     // after an operator changes a mode: push now
package controlplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/meshguard/meshguard/controlplane/accesslog"
	"github.com/meshguard/meshguard/controlplane/nodeauth"
	"github.com/meshguard/meshguard/controlplane/xds"
	"github.com/meshguard/meshguard/extproc/certs"
)

// DefaultListen is the default address of the xDS gRPC server (flag --xds-listen).
const DefaultListen = "127.0.0.1:18000"

// Config configures the control plane.
type Config struct {
	XDS       xds.Config       `json:"xds,omitzero" yaml:"xds,omitempty"`
	AccessLog accesslog.Config `json:"-" yaml:"-"`

	// Listen is the address of the xDS and access-log gRPC server: host:port or
	// unix:///absolute/path (option xds-listen). Default DefaultListen.
	Listen string `json:"listen,omitempty" yaml:"listen,omitempty"`
	// TLS serves every listener over TLS, mutual with a client CA. It also turns on
	// XDS.UpstreamTLS.AccessLog, so that the Envoys this server configures send their access
	// logs over mutual TLS (with their SDS workload certificate).
	TLS TLS `json:"tls,omitzero" yaml:"tls,omitempty"`
	// InsecureListen allows a listener beyond loopback and unix sockets without mutual TLS
	// (option insecure-listen). It is logged as a warning.
	InsecureListen bool `json:"insecure_listen,omitempty" yaml:"insecure_listen,omitempty"`
	// ServiceAccounts maps a client certificate's account "NS/SA" to the workloads of NS it
	// may speak for besides the workload named SA ("*": every workload of NS). See package
	// nodeauth.
	ServiceAccounts map[string][]string `json:"service_accounts,omitempty" yaml:"service_accounts,omitempty"`
	// GatewayAccounts are the accounts "NS/SA" whose nodes may be gateways. nil means
	// nodeauth.DefaultGatewayAccounts (Istio's egress gateway).
	GatewayAccounts []string `json:"gateway_accounts,omitempty" yaml:"gateway_accounts,omitempty"`
	// The trust domain of client certificates is XDS.TrustDomain (option xds-trust-domain).
}

// TLS are the TLS files of the control plane's listener (options xds-tls-cert, xds-tls-key,
// xds-tls-client-ca), reloaded when they change (see package extproc/certs).
type TLS struct {
	CertFile     string `json:"cert_file,omitempty" yaml:"cert_file,omitempty"`
	KeyFile      string `json:"key_file,omitempty" yaml:"key_file,omitempty"`
	ClientCAFile string `json:"client_ca_file,omitempty" yaml:"client_ca_file,omitempty"`
	// ReloadInterval is how often the files are checked (option tls-reload-interval).
	// Default certs.DefaultInterval.
	ReloadInterval time.Duration `json:"reload_interval,omitempty" yaml:"reload_interval,omitempty"`
	// OnReload, when set, is told of every attempt to load changed files (for metrics).
	OnReload func(err error) `json:"-" yaml:"-"`
}

// Enabled reports whether the listener serves TLS.
func (t TLS) Enabled() bool { return t.CertFile != "" }

// Mutual reports whether the listener requires client certificates.
func (t TLS) Mutual() bool { return t.CertFile != "" && t.ClientCAFile != "" }

// Check applies defaults and reports every problem in c.
func (c Config) Check() (Config, error) {
	var errs []error
	var err error
	if c.TLS.Enabled() && !c.XDS.DisableAccessLog {
		// The access-log service is on this server: Envoy must reach it over TLS too.
		c.XDS.UpstreamTLS.AccessLog = true
	}
	if c.XDS, err = c.XDS.Check(); err != nil {
		errs = append(errs, fmt.Errorf("xds: %w", err))
	}
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	local, err := IsLocal(c.Listen)
	if err != nil {
		errs = append(errs, fmt.Errorf("listen: %w", err))
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		errs = append(errs, errors.New("tls: a certificate and its key go together"))
	}
	if c.TLS.ClientCAFile != "" && !c.TLS.Enabled() {
		errs = append(errs, errors.New("tls: a client CA needs a certificate and a key"))
	}
	if c.TLS.ReloadInterval < 0 {
		errs = append(errs, fmt.Errorf("tls: reload interval must be positive, got %s", c.TLS.ReloadInterval))
	}
	if err == nil && !local && !c.TLS.Mutual() && !c.InsecureListen {
		errs = append(errs, fmt.Errorf("listen %q is neither loopback nor a unix socket: serve it with mutual TLS "+
			"(a certificate, its key and a client CA), or allow it without (insecure-listen), "+
			"which lets every client that reaches it claim any node", c.Listen))
	}
	if _, err := nodeauth.New(c.authConfig()); err != nil {
		errs = append(errs, err)
	}
	return c, errors.Join(errs...)
}

// authConfig is the node authentication c asks for.
func (c Config) authConfig() nodeauth.Config {
	return nodeauth.Config{
		RequireTLS: c.TLS.Enabled(), Mutual: c.TLS.Mutual(), TrustDomain: c.XDS.TrustDomain,
		ServiceAccounts: c.ServiceAccounts, GatewayAccounts: c.GatewayAccounts,
	}
}

// IsLocal reports whether a listen address (host:port or unix:///path) is reachable only
// from this machine: a unix socket, a loopback IP or "localhost". An empty host (every
// interface) or any other name is not. Serve checks the address actually bound as well.
func IsLocal(addr string) (bool, error) {
	if path, ok := strings.CutPrefix(addr, "unix://"); ok {
		if !filepath.IsAbs(path) {
			return false, fmt.Errorf("%q: a unix socket needs an absolute path (unix:///path)", addr)
		}
		return true, nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false, fmt.Errorf("%q: want host:port or unix:///path: %w", addr, err)
	}
	if host == "localhost" {
		return true, nil
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback(), nil
}

// Model is what the control plane needs of the model: the baselines it compiles into RBAC
// and a learner for access-log flows. *flowmodel.Model satisfies it.
type Model interface {
	xds.Baselines
	accesslog.Learner
}

// Server is the control plane: the xDS controller and the access-log receiver.
type Server struct {
	cfg  Config
	log  *slog.Logger
	ctrl *xds.Controller
	als  *accesslog.Receiver
	tls  *certs.Source // nil without TLS
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
	auth, err := nodeauth.New(cfg.authConfig())
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: log}
	if cfg.TLS.Enabled() {
		s.tls, err = certs.New(certs.Config{
			Name: "xds", CertFile: cfg.TLS.CertFile, KeyFile: cfg.TLS.KeyFile, ClientCAFile: cfg.TLS.ClientCAFile,
			Interval: cfg.TLS.ReloadInterval, Logger: log, OnReload: cfg.TLS.OnReload,
		})
		if err != nil {
			return nil, fmt.Errorf("control plane: %w", err)
		}
	}
	if s.ctrl, err = xds.NewController(cfg.XDS, m, log.With("component", "xds"), xds.WithAuthenticator(auth)); err != nil {
		return nil, err
	}
	alsCfg := cfg.AccessLog
	alsCfg.Authenticator = auth
	if s.als, err = accesslog.NewReceiver(m, alsCfg, log.With("component", "accesslog")); err != nil {
		return nil, err
	}
	switch {
	case cfg.TLS.Mutual():
	case cfg.InsecureListen:
		if local, _ := IsLocal(cfg.Listen); !local {
			log.Warn("control plane: listening beyond loopback without mutual TLS (insecure-listen): "+
				"every client that reaches it can claim any node, read any service's policy and teach any baseline",
				"listen", cfg.Listen, "tls", cfg.TLS.Enabled())
		}
	default:
		log.Info("control plane: no mutual TLS; node claims are believed (loopback or unix socket only)", "listen", cfg.Listen)
	}
	return s, nil
}

// NewGRPCServer returns a gRPC server with the ADS service and the AccessLogService
// registered. With Config.TLS, the server's transport credentials are TLS (mutual with a
// client CA), set after opts so that no option can turn them off.
func (s *Server) NewGRPCServer(opts ...grpc.ServerOption) *grpc.Server {
	if s.tls != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(s.tls.TLSConfig())))
	}
	g := grpc.NewServer(opts...)
	s.Register(g)
	return g
}

// Register registers the ADS service and the AccessLogService on g. Prefer NewGRPCServer:
// on a server without the TLS credentials of Config.TLS, every stream is refused.
func (s *Server) Register(g *grpc.Server) {
	s.ctrl.Register(g)
	s.als.Register(g)
}

// Serve serves g on lis until g stops. It refuses (before serving) a listener beyond
// loopback and unix sockets without mutual TLS unless Config.InsecureListen is set: the
// address bound is checked, not only the one configured.
func (s *Server) Serve(g *grpc.Server, lis net.Listener) error {
	if err := s.CheckListener(lis); err != nil {
		return err
	}
	return g.Serve(lis)
}

// CheckListener reports whether lis may serve the control plane (see Serve).
func (s *Server) CheckListener(lis net.Listener) error {
	if s.cfg.TLS.Mutual() || s.cfg.InsecureListen {
		return nil
	}
	a := lis.Addr()
	switch a.Network() {
	case "unix", "unixpacket":
		return nil
	}
	if ap, err := netip.ParseAddrPort(a.String()); err == nil && ap.Addr().Unmap().IsLoopback() {
		return nil
	}
	return fmt.Errorf("control plane: listener %s %s is neither loopback nor a unix socket, and has no mutual TLS (insecure-listen not set)", a.Network(), a)
}

// Run pushes snapshots and reloads the TLS files until ctx ends, then ends the ADS streams
// (so that GracefulStop of the gRPC server does not wait for them). It returns nil on
// cancellation.
func (s *Server) Run(ctx context.Context) error {
	if s.tls != nil {
		go s.tls.Run(ctx)
	}
	return s.ctrl.Run(ctx)
}

// TLSSource returns the source of the listener's certificate (for its expiry), nil without
// TLS.
func (s *Server) TLSSource() *certs.Source { return s.tls }

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
	descNodes    = prometheus.NewDesc("meshguard_xds_nodes", "Node keys in use by ADS streams (sidecar services, gateways, unidentified).", nil, nil)
	descVersion  = prometheus.NewDesc("meshguard_xds_version", "Version of the last snapshot pushed.", nil, nil)
	descPushes   = prometheus.NewDesc("meshguard_xds_pushes_total", "Snapshots set.", nil, nil)
	descNacks    = prometheus.NewDesc("meshguard_xds_nacks_total", "Configurations Envoy rejected.", nil, nil)
	descBuildErr = prometheus.NewDesc("meshguard_xds_build_errors_total", "Failed builds of Envoy resources.", nil, nil)
	descSkips    = prometheus.NewDesc("meshguard_xds_skips_total", "Services not enforced at L4 as asked, by reason.", []string{"reason"}, nil)
	descStreams  = prometheus.NewDesc("meshguard_accesslog_streams_total", "Access-log streams received.", nil, nil)
	descEntries  = prometheus.NewDesc("meshguard_accesslog_entries_total", "Access-log entries received, by kind.", []string{"kind"}, nil)
	descFlows    = prometheus.NewDesc("meshguard_accesslog_flows_total", "Flows learned or decided from access logs.", nil, nil)
	descDropped  = prometheus.NewDesc("meshguard_accesslog_dropped_total", "Access-log entries not turned into flows, by reason.", []string{"reason"}, nil)
	descClamped  = prometheus.NewDesc("meshguard_accesslog_clamped_total", "Access-log entry times outside the sane window, replaced by the server clock, by reason.", []string{"reason"}, nil)
	descRefused  = prometheus.NewDesc("meshguard_controlplane_refused_streams_total", "Streams refused: no TLS where required, a client certificate that does not back the node claimed, or (ads) a new node key beyond max-node-keys, by API (ads, access_log).", []string{"api"}, nil)
)

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descNodes, descVersion, descPushes, descNacks, descBuildErr, descSkips, descStreams, descEntries, descFlows, descDropped, descClamped, descRefused} {
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
	for r, n := range a.Clamped {
		counter(descClamped, float64(n), r)
	}
	counter(descRefused, float64(x.Refused), "ads")
	counter(descRefused, float64(a.Refused), "access_log")
}
