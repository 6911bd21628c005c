package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/meshguard/meshguard/controlplane/admin"
	"github.com/meshguard/meshguard/extproc"
	"github.com/meshguard/meshguard/flowmodel"
	"github.com/meshguard/meshguard/flowmodel/resolve"
	"github.com/meshguard/meshguard/flowmodel/store"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
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
	select {
	case <-ctx.Done():
		log.Info("shutting down", slog.String("cause", "signal"))
	case err := <-srv.failed:
		log.Error("server failed", slog.Any("error", err))
		srv.shutdown(context.Background())
		return err
	}
	return srv.shutdown(context.Background())
}

// server is a running meshguard: the ext_proc gRPC server, the admin HTTP server, the model
// and its persistence. The demo and tests run it in-process.
type server struct {
	cfg         serveConfig
	log         *slog.Logger
	model       *flowmodel.Model
	store       *store.Bolt
	grpc        *grpc.Server
	health      *health.Server
	http        *http.Server
	admin       *admin.Handler
	tracing     *tracing
	resolver    *resolve.Resolver // nil without --resolve-hosts
	control     *controlPlane     // nil with --xds-listen off
	extprocAddr string
	adminAddr   string
	failed      chan error

	stopPersist context.CancelFunc
	persistDone chan error
	stopTLS     context.CancelFunc // stops polling the TLS files
	serveWG     sync.WaitGroup

	shutdownOnce sync.Once
	shutdownErr  error
}

// wrapDecider lets the demo watch decisions; nil keeps the model as it is.
type wrapDecider func(extproc.Decider) extproc.Decider

// startServer opens the store, loads the baselines and starts serving. On error everything
// started is stopped again.
func startServer(ctx context.Context, cfg serveConfig, log *slog.Logger, wrap wrapDecider) (_ *server, err error) {
	s := &server{cfg: cfg, log: log, failed: make(chan error, 2)}
	var cleanups []func()
	defer func() {
		if err != nil {
			for i := len(cleanups) - 1; i >= 0; i-- {
				cleanups[i]()
			}
		}
	}()

	if cfg.resolveHosts {
		r, err := resolve.New(resolve.Config{Servers: cfg.dnsServers, Logger: log})
		if err != nil {
			return nil, fmt.Errorf("--resolve-hosts: %w", err)
		}
		cleanups = append(cleanups, r.Close)
		s.resolver = r
		cfg.model.Resolver = hostResolver{r, time.Now} // resolve's clock too
	}
	if s.model, err = flowmodel.New(cfg.model); err != nil {
		return nil, err
	}
	if s.store, err = store.Open(cfg.dataDir, store.Options{}); err != nil {
		return nil, err
	}
	cleanups = append(cleanups, func() { s.store.Close() })
	start := time.Now()
	n, err := s.model.Load(s.store)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s.store.Path(), err)
	}
	log.Info("baselines loaded", slog.Int("services", n), slog.String("store", s.store.Path()), slog.Duration("took", time.Since(start)))

	if s.tracing, err = newTracing(ctx, os.Getenv); err != nil {
		return nil, err
	}
	cleanups = append(cleanups, func() { s.tracing.shutdown(context.Background()) })
	log.Info("tracing", slog.String("exporter", s.tracing.exporter))

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), admin.ModeCollector(s.model))
	metrics, err := extproc.NewMetrics(reg)
	if err != nil {
		return nil, err
	}
	persistMetrics := newPersistMetrics(reg)
	tlsm, err := newTLSMetrics(reg)
	if err != nil {
		return nil, err
	}
	tctx, stopTLS := context.WithCancel(context.Background())
	s.stopTLS = stopTLS
	cleanups = append(cleanups, stopTLS)
	var grpcOpts []grpc.ServerOption
	if cfg.tls.enabled() {
		src, err := tlsm.source(tctx, "ext_proc", cfg.tls, tls.RequireAndVerifyClientCert, nil, cfg.tlsReload, log)
		if err != nil {
			return nil, fmt.Errorf("--tls-cert: %w", err)
		}
		grpcOpts = append(grpcOpts, grpc.Creds(credentials.NewTLS(src.TLSConfig())))
	}
	var adminTLS *tls.Config
	if cfg.adminTLS.enabled() {
		// Probes carry no client certificate: the handshake asks for one, requireClientCert
		// insists on it for everything but /healthz and /readyz.
		src, err := tlsm.source(tctx, "admin", cfg.adminTLS, tls.VerifyClientCertIfGiven, []string{"http/1.1"}, cfg.tlsReload, log)
		if err != nil {
			return nil, fmt.Errorf("--admin-tls-cert: %w", err)
		}
		adminTLS = src.TLSConfig()
	}

	epCfg := cfg.extproc
	epCfg.Logger, epCfg.TracerProvider, epCfg.Metrics = log, s.tracing.provider, metrics
	var decider extproc.Decider = s.model
	if wrap != nil {
		decider = wrap(decider)
	}
	ext, err := extproc.NewServer(decider, epCfg)
	if err != nil {
		return nil, err
	}

	grpcLis, err := listen(ctx, cfg.listen)
	if err != nil {
		return nil, fmt.Errorf("--listen: %w", err)
	}
	cleanups = append(cleanups, func() { grpcLis.Close() })
	adminLis, err := listen(ctx, cfg.adminListen)
	if err != nil {
		return nil, fmt.Errorf("--admin-listen: %w", err)
	}
	cleanups = append(cleanups, func() { adminLis.Close() })
	s.extprocAddr, s.adminAddr = addrString(grpcLis), addrString(adminLis)

	// Persistence runs off the request path, at most flushInterval behind.
	pctx, stop := context.WithCancel(context.Background())
	s.stopPersist, s.persistDone = stop, make(chan error, 1)
	p := &flowmodel.Persister{
		Model: s.model, Store: s.store, Interval: cfg.flushInterval,
		OnError: func(err error) {
			persistMetrics.failures.Inc()
			log.Error("saving baselines failed; will retry", slog.Any("error", err))
		},
		OnSave: func(n int) { persistMetrics.saved.Add(float64(n)) },
	}
	go func() { s.persistDone <- p.Run(pctx) }()

	if cfg.xds.enabled() {
		if s.control, err = startControlPlane(ctx, cfg.xds, s.model, log.With("component", "controlplane"), reg, s.failed); err != nil {
			return nil, err
		}
		cleanups = append(cleanups, s.control.shutdown)
	}

	s.health = health.NewServer()
	s.grpc = extproc.NewGRPCServer(ext, s.health, grpcOpts...)
	s.admin = admin.New(s.model, admin.Options{Gatherer: reg, Logger: log})
	if s.control != nil {
		s.admin.OnChange(s.control.cp.Notify) // push Envoy configuration at once
	}
	var adminHandler http.Handler = s.admin
	if cfg.pprof {
		adminHandler = withPprof(adminHandler)
	}
	if cfg.adminTLS.clientCA != "" {
		adminHandler = requireClientCert(adminHandler)
	}
	if adminTLS != nil {
		adminLis = tls.NewListener(adminLis, adminTLS)
	}
	s.http = &http.Server{Handler: adminHandler, ReadHeaderTimeout: 5 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}

	s.serveWG.Add(2)
	go func() {
		defer s.serveWG.Done()
		if err := s.grpc.Serve(grpcLis); err != nil {
			s.failed <- fmt.Errorf("ext_proc server: %w", err)
		}
	}()
	go func() {
		defer s.serveWG.Done()
		if err := s.http.Serve(adminLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.failed <- fmt.Errorf("admin server: %w", err)
		}
	}()
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	s.health.SetServingStatus("envoy.service.ext_proc.v3.ExternalProcessor", healthpb.HealthCheckResponse_SERVING)
	s.admin.SetReady(true)
	attrs := []any{slog.String("ext_proc", s.extprocAddr), slog.String("admin", s.adminAddr)}
	if s.control != nil {
		attrs = append(attrs, slog.String("xds", s.control.addr))
	}
	log.Info("serving", attrs...)
	return s, nil
}

// shutdown drains and stops everything: health NOT_SERVING and not ready (so that Envoy and
// Kubernetes send new streams elsewhere), a lameduck pause, GracefulStop bounded by the drain
// timeout, then the last save of the baselines and the flush of spans. Later calls return
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
		s.control.shutdown()
	}
	hctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var errs []error
	if err := s.http.Shutdown(hctx); err != nil {
		errs = append(errs, fmt.Errorf("admin server: %w", err))
	}
	s.serveWG.Wait()
	s.stopTLS()
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
func withPprof(h http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", h)
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

type persistMetrics struct {
	saved, failures prometheus.Counter
}

func newPersistMetrics(reg prometheus.Registerer) persistMetrics {
	m := persistMetrics{
		saved:    prometheus.NewCounter(prometheus.CounterOpts{Name: "meshguard_store_services_saved_total", Help: "Service records written to the store."}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{Name: "meshguard_store_save_failures_total", Help: "Failed batch saves (retried)."}),
	}
	reg.MustRegister(m.saved, m.failures)
	return m
}
