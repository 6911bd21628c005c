package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/meshguard/meshguard/controlplane"
	"github.com/meshguard/meshguard/controlplane/xds"
	"github.com/meshguard/meshguard/extproc"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// xdsFlags configure the control plane: the xDS (ADS) and access-log gRPC server for
// Envoys that take their configuration from meshguard.
type xdsFlags struct {
	listen string // "" or "off": no control plane
	cfg    xds.Config
	tls    tlsFlags
	// trustDomain names xDS and access-log nodes by their SPIFFE client certificates
	// (spiffe://<td>/ns/<ns>/sa/<sa>); the control plane checks node identity with it.
	trustDomain string
}

func (x *xdsFlags) enabled() bool { return x.listen != "" && x.listen != "off" }

// check reports every problem with the flags; insecureListen is --insecure-listen.
func (x *xdsFlags) check(insecureListen bool) error {
	var errs []error
	if err := x.tls.check("xds-"); err != nil {
		errs = append(errs, err)
	}
	if !validTrustDomain(x.trustDomain) {
		errs = append(errs, fmt.Errorf("--xds-trust-domain %q: want a SPIFFE trust domain (lower-case letters, digits, '.', '-', '_')", x.trustDomain))
	}
	// The trust domain names nodes by their client certificates (controlplane/nodeauth) and
	// gateway sources by their SPIFFE IDs (xds).
	x.cfg.TrustDomain = x.trustDomain
	if !x.enabled() {
		return errors.Join(errs...)
	}
	c, err := x.controlPlane(insecureListen, 0).Check()
	if err != nil {
		errs = append(errs, fmt.Errorf("--xds-*: %w", err))
	} else {
		x.cfg = c.XDS
	}
	return errors.Join(errs...)
}

// controlPlane is the control plane's configuration: its listener, its TLS (with node
// authentication by SPIFFE client certificates when mutual) and the xDS it serves.
func (x *xdsFlags) controlPlane(insecureListen bool, reload time.Duration) controlplane.Config {
	return controlplane.Config{
		XDS:    x.cfg,
		Listen: x.listen,
		TLS: controlplane.TLS{
			CertFile: x.tls.cert, KeyFile: x.tls.key, ClientCAFile: x.tls.clientCA,
			ReloadInterval: reload,
		},
		// Serve's own check (validate) already refused a listener beyond loopback without
		// TLS unless --insecure-listen; the control plane checks the address it bound too.
		InsecureListen: insecureListen,
	}
}

// validTrustDomain reports whether td is a SPIFFE trust domain name.
func validTrustDomain(td string) bool {
	if td == "" || len(td) > 255 {
		return false
	}
	for _, r := range td {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

// controlPlane is the xDS and access-log server.
type controlPlane struct {
	cp     *controlplane.Server
	grpc   *grpc.Server
	health *health.Server
	lis    net.Listener
	addr   string
	runCtx context.Context
	stop   context.CancelFunc
	once   sync.Once
}

// newControlPlane builds the control plane over model and its listener; start serves it.
func newControlPlane(ctx context.Context, cfg controlplane.Config, model controlplane.Model, log *slog.Logger, reg prometheus.Registerer, tlsm *tlsMetrics) (*controlPlane, error) {
	if tlsm != nil {
		cfg.TLS.OnReload = tlsm.onReload("xds")
	}
	cp, err := controlplane.New(cfg, model, log)
	if err != nil {
		return nil, err
	}
	if err := reg.Register(cp.Collector()); err != nil {
		return nil, err
	}
	if src := cp.TLSSource(); src != nil && tlsm != nil {
		if err := tlsm.watch("xds", src); err != nil {
			return nil, err
		}
	}
	lis, err := listen(ctx, cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("--xds-listen: %w", err)
	}
	c := &controlPlane{cp: cp, health: health.NewServer(), lis: lis, addr: addrString(lis)}
	// NewGRPCServer adds the TLS credentials last, so no option can turn TLS off.
	c.grpc = cp.NewGRPCServer(extproc.ServerOptions()...)
	healthpb.RegisterHealthServer(c.grpc, c.health)
	c.runCtx, c.stop = context.WithCancel(context.Background())
	return c, nil
}

// start runs the controller and serves, in g.
func (c *controlPlane) start(g *errgroup.Group) {
	g.Go(func() error {
		if err := c.cp.Run(c.runCtx); err != nil {
			return fmt.Errorf("xds controller: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		if err := c.cp.Serve(c.grpc, c.lis); err != nil {
			return fmt.Errorf("xds server: %w", err)
		}
		return nil
	})
	c.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
}

// close ends the ADS streams (the controller closes them when its context ends) and stops
// the server, or closes the listener of a control plane never started.
func (c *controlPlane) close() {
	c.once.Do(func() {
		c.health.Shutdown()
		c.stop()
		c.grpc.GracefulStop()
		c.lis.Close()
	})
}
