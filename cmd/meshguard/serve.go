package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/meshguard/meshguard/controlplane/admin"
	"github.com/meshguard/meshguard/controlplane/nodeauth"
	"github.com/meshguard/meshguard/extproc"
	"github.com/meshguard/meshguard/flowmodel"
	"github.com/meshguard/meshguard/flowmodel/resolve"
	"github.com/meshguard/meshguard/flowmodel/store"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func runServe(ctx context.Context, cfg serveConfig, stdout, stderr io.Writer) error {
	log := newLogger(stderr, cfg.logLevel, cfg.logFormat)
	srv, err := startServer(ctx, cfg, log, nil)
	if err != nil {
		return err
	}
	xdsAddr := "off"
	if srv.control != nil {
		xdsAddr = srv.control.addr
	}
	fmt.Fprintf(stdout, "meshguard %s serving ext_proc on %s, admin on %s, xds on %s, data in %s\n",
		version(), srv.extprocAddr, srv.adminAddr, xdsAddr, cfg.dataDir)
	return srv.wait(ctx)
}

// server is a running meshguard: the ext_proc gRPC server, the admin HTTP server (and the
// probe-only one), the control plane, the model and its persistence. The demo and tests run
// it in-process.
type server struct {
	cfg         serveConfig
	log         *slog.Logger
	model       *flowmodel.Model
	store       *store.Bolt
	grpc        *grpc.Server
	health      *health.Server
	http        *http.Server
	probes      *http.Server // nil without --health-listen
	admin       *admin.Handler
	tracing     *tracing
	resolver    *resolve.Resolver // nil without --resolve-hosts
	control     *controlPlane     // nil with --xds-listen off
	extprocAddr string
	adminAddr   string
	healthAddr  string // "" without --health-listen

	// group runs every server; the first to fail cancels failed and is the error wait
	// reports.
	group  *errgroup.Group
	failed context.Context

	persister   *flowmodel.Persister
	stopPersist context.CancelFunc
	persistDone chan error
	stopBackups context.CancelFunc // nil without --backup-interval
	backupsDone chan struct{}
	stopTLS     context.CancelFunc // stops polling the TLS files

	shutdownOnce sync.Once
	shutdownErr  error
}

// wrapDecider lets the demo watch decisions; nil keeps the model as it is.
type wrapDecider func(extproc.Decider) extproc.Decider

// undo is the stack of what a failed start must close again, last first.
type undo []func()

func (u *undo) push(f func()) { *u = append(*u, f) }

func (u undo) run() {
	for i := len(u) - 1; i >= 0; i-- {
		u[i]()
	}
}

// startServer builds each part of meshguard, in order, and starts serving. On error
// everything built is closed again.
func startServer(ctx context.Context, cfg serveConfig, log *slog.Logger, wrap wrapDecider) (_ *server, err error) {
	s := &server{cfg: cfg, log: log}
	var u undo
	defer func() {
		if err != nil {
			u.run()
		}
	}()
	if err := s.openModel(&u); err != nil {
		return nil, err
	}
	if s.tracing, err = newTracing(ctx, os.Getenv, log); err != nil {
		return nil, err
	}
	u.push(func() { s.tracing.shutdown(context.Background()) })
	log.Info("tracing", slog.String("exporter", s.tracing.exporter))

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), admin.ModeCollector(s.model),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "meshguard_event_times_clamped_total",
			Help: "Flow times the model replaced by the server clock: too far ahead of it, zero, or before the Unix epoch.",
		}, func() float64 { return float64(s.model.ClampedTimes()) }))
	if err := s.tracing.register(reg); err != nil {
		return nil, err
	}
	tctx, stopTLS := context.WithCancel(context.Background())
	s.stopTLS = stopTLS
	u.push(stopTLS)
	tlsm, err := newTLSMetrics(reg)
	if err != nil {
		return nil, err
	}
	grpcLis, err := s.newExtProc(ctx, tctx, tlsm, reg, wrap)
	if err != nil {
		return nil, err
	}
	u.push(func() { grpcLis.Close() })
	adminLis, err := s.newAdmin(ctx, tctx, tlsm, reg)
	if err != nil {
		return nil, err
	}
	u.push(func() { adminLis.Close() })
	var healthLis net.Listener
	if cfg.healthListen != "" {
		if healthLis, err = s.newProbes(ctx); err != nil {
			return nil, err
		}
		u.push(func() { healthLis.Close() })
	}
	if cfg.xds.enabled() {
		if s.control, err = newControlPlane(ctx, cfg.xds.controlPlane(cfg.insecureListen, cfg.tlsReload), s.model, log.With("component", "controlplane"), reg, tlsm); err != nil {
			return nil, err
		}
		u.push(s.control.close)
		s.admin.OnChange(s.control.cp.Notify) // push Envoy configuration at once
	}
	s.startPersister(reg)

	// Every part is built: serve. From here on a failure is reported by wait.
	group, failed := errgroup.WithContext(context.Background())
	s.group, s.failed = group, failed
	group.Go(func() error {
		if err := s.grpc.Serve(grpcLis); err != nil {
			return fmt.Errorf("ext_proc server: %w", err)
		}
		return nil
	})
	group.Go(func() error { return serveHTTP("admin server", s.http, adminLis) })
	if s.probes != nil {
		group.Go(func() error { return serveHTTP("health server", s.probes, healthLis) })
	}
	if s.control != nil {
		s.control.start(group)
	}
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	s.health.SetServingStatus("envoy.service.ext_proc.v3.ExternalProcessor", healthpb.HealthCheckResponse_SERVING)
	s.admin.SetReady(true)
	attrs := []any{slog.String("ext_proc", s.extprocAddr), slog.String("admin", s.adminAddr)}
	if s.control != nil {
		attrs = append(attrs, slog.String("xds", s.control.addr))
	}
	if s.probes != nil {
		attrs = append(attrs, slog.String("health", s.healthAddr))
	}
	log.Info("serving", attrs...)
	return s, nil
}

// serveHTTP serves srv on lis until it is shut down.
func serveHTTP(name string, srv *http.Server, lis net.Listener) error {
	if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

// openModel builds the model (with its resolver under --resolve-hosts), opens the store and
// loads the baselines.
func (s *server) openModel(u *undo) error {
	cfg, log := s.cfg, s.log
	if cfg.resolveHosts {
		r, err := resolve.New(resolve.Config{Servers: cfg.dnsServers, Logger: log})
		if err != nil {
			return fmt.Errorf("--resolve-hosts: %w", err)
		}
		u.push(r.Close)
		s.resolver = r
		cfg.model.Resolver = hostResolver{r, time.Now} // resolve's clock too
	}
	var err error
	if s.model, err = flowmodel.New(cfg.model); err != nil {
		return err
	}
	if s.store, err = store.Open(cfg.dataDir, store.Options{Logger: log}); err != nil {
		return err
	}
	u.push(func() { s.store.Close() })
	start := time.Now()
	n, err := s.model.Load(s.store)
	if err != nil {
		return fmt.Errorf("%s: %w", s.store.Path(), err)
	}
	log.Info("baselines loaded", slog.Int("services", n), slog.String("store", s.store.Path()), slog.Duration("took", time.Since(start)))
	// The persister saves in the background (startPersister) and, for the admin API, saves
	// every operator's change with its audit record before the 200.
	s.persister = &flowmodel.Persister{Model: s.model, Store: s.store, Interval: cfg.flushInterval}
	return nil
}

// newExtProc builds the ext_proc gRPC server (with grpc.health.v1) and its listener.
func (s *server) newExtProc(ctx, tlsCtx context.Context, tlsm *tlsMetrics, reg prometheus.Registerer, wrap wrapDecider) (net.Listener, error) {
	cfg := s.cfg
	metrics, err := extproc.NewMetrics(reg)
	if err != nil {
		return nil, err
	}
	var grpcOpts []grpc.ServerOption
	if cfg.tls.enabled() {
		src, err := tlsm.source(tlsCtx, "ext_proc", cfg.tls, tls.RequireAndVerifyClientCert, nil, cfg.tlsReload, s.log)
		if err != nil {
			return nil, fmt.Errorf("--tls-cert: %w", err)
		}
		grpcOpts = append(grpcOpts, grpc.Creds(credentials.NewTLS(src.TLSConfig())))
	}
	epCfg := cfg.extproc
	epCfg.Logger, epCfg.TracerProvider, epCfg.Metrics = s.log, s.tracing.provider, metrics
	// Under mutual TLS a stream's identity must be one its SPIFFE certificate may speak for,
	// as on the xDS and access-log listener.
	if epCfg.AuthorizePeer, err = extProcPeerAuthorizer(cfg.tls.clientCA, nodeauth.Config{TrustDomain: cfg.xds.trustDomain}); err != nil {
		return nil, err
	}
	var decider extproc.Decider = s.model
	if wrap != nil {
		decider = wrap(decider)
	}
	ext, err := extproc.NewServer(decider, epCfg)
	if err != nil {
		return nil, err
	}
	lis, err := listen(ctx, cfg.listen)
	if err != nil {
		return nil, fmt.Errorf("--listen: %w", err)
	}
	s.extprocAddr = addrString(lis)
	s.health = health.NewServer()
	s.grpc = extproc.NewGRPCServer(ext, s.health, grpcOpts...)
	return lis, nil
}

// newAdmin builds the admin HTTP server and its listener.
func (s *server) newAdmin(ctx, tlsCtx context.Context, tlsm *tlsMetrics, reg prometheus.Gatherer) (net.Listener, error) {
	cfg := s.cfg
	var adminTLS *tls.Config
	if cfg.adminTLS.enabled() {
		// Probes carry no client certificate: the handshake asks for one, and the admin
		// handler takes a verified certificate (by --admin-cert-roles) or a bearer token.
		src, err := tlsm.source(tlsCtx, "admin", cfg.adminTLS, tls.VerifyClientCertIfGiven, []string{"http/1.1"}, cfg.tlsReload, s.log)
		if err != nil {
			return nil, fmt.Errorf("--admin-tls-cert: %w", err)
		}
		adminTLS = src.TLSConfig()
	}
	token, created, err := admin.LoadOrCreateToken(cfg.adminTokenFile)
	if err != nil {
		return nil, fmt.Errorf("--admin-token-file: %w", err)
	}
	if created {
		s.log.Info("admin token created", slog.String("file", cfg.adminTokenFile))
	}
	sched := s.backupSchedule()
	s.admin, err = admin.New(s.model, admin.Options{
		Gatherer: reg, Logger: s.log, Committer: s.persister, Store: s.store,
		Token: token, Hosts: cfg.adminHosts, CertRoles: cfg.adminCertRoles, CertDefaultRole: cfg.adminCertDefaultRole,
		Backup: func() (string, store.Report, error) { return s.store.BackupNow(sched) },
	})
	if err != nil {
		return nil, err
	}
	// The admin handler authenticates every /v1 call itself: a bearer token or a verified
	// client certificate (the handshake asks for one; probes and token clients send none).
	var h http.Handler = s.admin
	if cfg.pprof {
		h = withPprof(h, s.admin)
	}
	lis, err := listen(ctx, cfg.adminListen)
	if err != nil {
		return nil, fmt.Errorf("--admin-listen: %w", err)
	}
	s.adminAddr = addrString(lis)
	if adminTLS != nil {
		lis = tls.NewListener(lis, adminTLS)
	}
	s.http = newHTTPServer(h, s.log)
	return lis, nil
}

// newProbes builds the probe-only HTTP server of --health-listen: /healthz and /readyz
// of the admin handler, nothing else.
func (s *server) newProbes(ctx context.Context) (net.Listener, error) {
	lis, err := listen(ctx, s.cfg.healthListen)
	if err != nil {
		return nil, fmt.Errorf("--health-listen: %w", err)
	}
	s.healthAddr = addrString(lis)
	s.probes = newHTTPServer(probesOnly(s.admin, s.cfg.healthMetrics), s.log)
	return lis, nil
}

// probesOnly passes GET and HEAD of /healthz and /readyz to h, and of /metrics with
// metrics; anything else is a 404. /metrics is off by default: decision counts by reason
// would tell a workload that reaches this listener which of its requests alerted (a
// detection oracle).
func probesOnly(h http.Handler, metrics bool) http.Handler {
	mux := http.NewServeMux()
	paths := []string{"/healthz", "/readyz"}
	if metrics {
		paths = append(paths, "/metrics")
	}
	for _, p := range paths {
		mux.Handle("GET "+p, h) // GET patterns match HEAD too
	}
	return mux
}

func newHTTPServer(h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
}

// startPersister saves the model's changes off the request path, at most --flush-interval
// behind, until shutdown makes the last save.
func (s *server) startPersister(reg prometheus.Registerer) {
	pm := newPersistMetrics(reg)
	reg.MustRegister(admin.StoreCollector(s.persister))
	pctx, stop := context.WithCancel(context.Background())
	s.stopPersist, s.persistDone = stop, make(chan error, 1)
	p := s.persister
	p.OnError = func(err error) {
		pm.failures.Inc()
		s.log.Error("saving baselines failed; will retry", slog.Any("error", err))
	}
	p.OnSave = func(n int) { pm.saved.Add(float64(n)) }
	go func() { s.persistDone <- p.Run(pctx) }()
	go s.sweepRateDrops(pctx, pm.rateDrops, time.Minute)
	if sched := s.backupSchedule(); sched.Interval > 0 {
		bctx, stop := context.WithCancel(context.Background())
		s.stopBackups, s.backupsDone = stop, make(chan struct{})
		go func() { defer close(s.backupsDone); s.store.RunBackups(bctx, sched) }()
	}
}

// sweepRateDrops asks the model every interval for services whose request rate dropped
// below their hour-of-day profile and that have made no request since (a drop that belongs
// to no request), and reports each once: a log line and meshguard_rate_drops_total.
func (s *server) sweepRateDrops(ctx context.Context, drops prometheus.Counter, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			for _, d := range s.model.SweepSeasonal(now) {
				drops.Inc()
				s.log.Warn("rate drop", slog.String("service", d.Service), slog.String("mode", d.Mode.String()),
					slog.Float64("count", d.Count), slog.Float64("expected", d.Expected), slog.Float64("score", d.Score),
					slog.String("reason", flowmodel.ReasonRateDrop.String()))
			}
		}
	}
}

// backupSchedule is when and where backups of the store are written (--backup-interval,
// --backup-keep, <data-dir>/backups).
func (s *server) backupSchedule() store.BackupSchedule {
	return store.BackupSchedule{
		Interval: s.cfg.backupInterval, Dir: filepath.Join(s.cfg.dataDir, "backups"), Keep: s.cfg.backupKeep,
		OnBackup: func(path string, _ store.Report) { s.log.Info("store backed up", slog.String("file", path)) },
		OnError:  func(err error) { s.log.Error("store backup failed", slog.Any("error", err)) },
	}
}

// wait serves until ctx is done (a signal) or a part fails, then shuts down. It returns the
// first failure, if any, joined with what went wrong while shutting down.
func (s *server) wait(ctx context.Context) error {
	select {
	case <-ctx.Done():
		s.log.Info("shutting down", slog.String("cause", "signal"))
	case <-s.failed.Done():
		s.log.Error("shutting down", slog.String("cause", "a server failed"), slog.Any("error", context.Cause(s.failed)))
	}
	return s.shutdown(context.Background())
}

// shutdown drains and stops everything: health NOT_SERVING and not ready (so that Envoy and
// Kubernetes send new streams elsewhere), a lameduck pause, GracefulStop bounded by the drain
// timeout, then the last save of the baselines and the flush of spans. It returns the first
// failure of a server, if any, joined with what went wrong while stopping. Later calls return
// the first call's result.
func (s *server) shutdown(ctx context.Context) error {
	s.shutdownOnce.Do(func() { s.shutdownErr = s.stop(ctx) })
	return s.shutdownErr
}

func (s *server) stop(ctx context.Context) error {
	s.health.Shutdown()
	s.admin.SetReady(false)
	if s.cfg.lameduck > 0 {
		s.log.Info("lameduck", slog.Duration("for", s.cfg.lameduck))
		select {
		case <-time.After(s.cfg.lameduck):
		case <-ctx.Done():
		}
	}
	drained := make(chan struct{})
	go func() { s.grpc.GracefulStop(); close(drained) }()
	t := time.NewTimer(s.cfg.drainTimeout)
	select {
	case <-drained:
		t.Stop()
	case <-t.C:
		s.log.Warn("drain timeout: closing the remaining streams", slog.Duration("after", s.cfg.drainTimeout))
		s.grpc.Stop()
		<-drained
	}
	if s.control != nil {
		s.control.close()
	}
	hctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	errs := []error{nil} // the first failure of a server, once all have returned
	if err := s.http.Shutdown(hctx); err != nil {
		errs = append(errs, fmt.Errorf("admin server: %w", err))
	}
	if s.probes != nil {
		if err := s.probes.Shutdown(hctx); err != nil {
			errs = append(errs, fmt.Errorf("health server: %w", err))
		}
	}
	errs[0] = s.group.Wait()
	s.stopTLS()
	if s.stopBackups != nil {
		s.stopBackups() // before the last save and the close of the store
		<-s.backupsDone
	}
	s.stopPersist()
	if err := <-s.persistDone; err != nil {
		errs = append(errs, fmt.Errorf("last save of baselines: %w", err))
	}
	if err := s.store.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close store: %w", err))
	}
	if s.resolver != nil {
		s.resolver.Close()
	}
	tctx, cancel2 := context.WithTimeout(ctx, 5*time.Second)
	defer cancel2()
	if err := s.tracing.shutdown(tctx); err != nil {
		errs = append(errs, fmt.Errorf("flush spans: %w", err))
	}
	s.log.Info("stopped")
	return errors.Join(errs...)
}

// hostResolver answers the model from resolve's cache: a fresh positive answer is evidence,
// anything else (none yet, expired, the name does not exist) is not. resolve.Lookup also
// returns a stale answer while it refreshes it; now, the resolver's clock, tells them apart.
type hostResolver struct {
	r   *resolve.Resolver
	now func() time.Time
}

func (h hostResolver) Lookup(host string) ([]netip.Addr, bool) {
	a, ok := h.r.Lookup(host)
	if !ok || a.Negative || len(a.Addrs) == 0 || !a.Fresh(h.now()) {
		return nil, false
	}
	return a.Addrs, true
}

// withPprof serves net/http/pprof under /debug/pprof/ next to h.
// Profiles need the admin role, as every other call beyond the probes needs a credential.
func withPprof(h http.Handler, a *admin.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", h)
	for path, f := range map[string]http.HandlerFunc{
		"/debug/pprof/": pprof.Index, "/debug/pprof/cmdline": pprof.Cmdline, "/debug/pprof/profile": pprof.Profile,
		"/debug/pprof/symbol": pprof.Symbol, "/debug/pprof/trace": pprof.Trace,
	} {
		mux.Handle(path, a.Require(admin.RoleAdmin, f))
	}
	return mux
}

type persistMetrics struct {
	saved, failures, rateDrops prometheus.Counter
}

func newPersistMetrics(reg prometheus.Registerer) persistMetrics {
	m := persistMetrics{
		saved:    prometheus.NewCounter(prometheus.CounterOpts{Name: "meshguard_store_services_saved_total", Help: "Service records written to the store."}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{Name: "meshguard_store_save_failures_total", Help: "Failed batch saves (retried)."}),
		rateDrops: prometheus.NewCounter(prometheus.CounterOpts{Name: "meshguard_rate_drops_total",
			Help: "Services found silent below their hour-of-day profile by the periodic sweep (rate_drop; a drop seen on a request is a decision instead)."}),
	}
	reg.MustRegister(m.saved, m.failures, m.rateDrops)
	return m
}
