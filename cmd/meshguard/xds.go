package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/meshguard/meshguard/controlplane"
	"github.com/meshguard/meshguard/controlplane/xds"
	"github.com/meshguard/meshguard/extproc"
	"github.com/prometheus/client_golang/prometheus"
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

// check reports every problem with the flags.
func (x *xdsFlags) check() error {
	var errs []error
	if err := x.tls.check("xds-"); err != nil {
		errs = append(errs, err)
	}
	if !validTrustDomain(x.trustDomain) {
		errs = append(errs, fmt.Errorf("--xds-trust-domain %q: want a SPIFFE trust domain (lower-case letters, digits, '.', '-', '_')", x.trustDomain))
	}
	if !x.enabled() {
		return errors.Join(errs...)
	}
	c, err := controlplane.Config{XDS: x.cfg}.Check()
	if err != nil {
		errs = append(errs, fmt.Errorf("--xds-*: %w", err))
	} else {
		x.cfg = c.XDS
	}
	return errors.Join(errs...)
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

// controlPlane is the running xDS and access-log server.
type controlPlane struct {
	cp     *controlplane.Server
	grpc   *grpc.Server
	health *health.Server
	addr   string
	stop   context.CancelFunc
	wg     sync.WaitGroup
}

// startControlPlane serves xDS and access logs on x.listen over model.
func startControlPlane(ctx context.Context, x xdsFlags, model controlplane.Model, log *slog.Logger, reg prometheus.Registerer, failed chan<- error, opts ...grpc.ServerOption) (*controlPlane, error) {
	cp, err := controlplane.New(controlplane.Config{XDS: x.cfg}, model, log)
	if err != nil {
		return nil, err
	}
	if err := reg.Register(cp.Collector()); err != nil {
		return nil, err
	}
	lis, err := listen(ctx, x.listen)
	if err != nil {
		return nil, fmt.Errorf("--xds-listen: %w", err)
	}
	c := &controlPlane{cp: cp, health: health.NewServer(), addr: addrString(lis)}
	c.grpc = grpc.NewServer(extproc.ServerOptions(opts...)...)
	cp.Register(c.grpc)
	healthpb.RegisterHealthServer(c.grpc, c.health)
	runCtx, stop := context.WithCancel(context.Background())
	c.stop = stop
	c.wg.Add(2)
	go func() {
		defer c.wg.Done()
		if err := cp.Run(runCtx); err != nil {
			failed <- fmt.Errorf("xds controller: %w", err)
		}
	}()
	go func() {
		defer c.wg.Done()
		if err := c.grpc.Serve(lis); err != nil {
			failed <- fmt.Errorf("xds server: %w", err)
		}
	}()
	c.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	return c, nil
}

// shutdown ends the ADS streams (the controller closes them when its context ends) and
// stops the server.
func (c *controlPlane) shutdown() {
	c.health.Shutdown()
	c.stop()
	c.grpc.GracefulStop()
	c.wg.Wait()
}
