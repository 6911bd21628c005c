package main

import (
	"context"
	"flag"
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
}

func (x *xdsFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&x.listen, "xds-listen", controlplane.DefaultListen, `xDS (ADS) and access-log gRPC address: host:port, unix:///path, or "off"`)
	fs.StringVar(&x.cfg.ExtProcAddress, "xds-ext-proc-address", xds.DefaultExtProcAddress, "meshguard's ext_proc address as the Envoys reach it, in the listeners meshguard serves")
	fs.StringVar(&x.cfg.AccessLogAddress, "xds-access-log-address", xds.DefaultAccessLogAddress, "meshguard's access-log service address as the Envoys reach it")
	fs.StringVar(&x.cfg.ListenerAddress, "xds-envoy-listener", xds.DefaultListenerAddress, "where the served outbound listener binds in Envoy")
	fs.DurationVar(&x.cfg.MessageTimeout, "xds-message-timeout", xds.DefaultMessageTimeout, "ext_proc message_timeout in the served listeners")
	fs.BoolVar(&x.cfg.FailureModeAllow, "xds-failure-mode-allow", false, "let requests through when Envoy cannot reach meshguard (fail open)")
	fs.BoolVar(&x.cfg.DenyAllWhenEmpty, "xds-deny-all-when-empty", false, "at L4, deny all of an enforced service that has no learned destination IP (default: leave it to ext_proc)")
	fs.BoolVar(&x.cfg.RBACOnHTTP, "xds-rbac-on-http", false, "put the L4 RBAC backstop in front of HTTP too")
}

func (x *xdsFlags) enabled() bool { return x.listen != "" && x.listen != "off" }

// check reports every problem with the flags.
func (x *xdsFlags) check() error {
	if !x.enabled() {
		return nil
	}
	if err := checkAddress("--xds-listen", x.listen); err != nil {
		return err
	}
	c, err := controlplane.Config{XDS: x.cfg}.Check()
	if err != nil {
		return fmt.Errorf("--xds-*: %w", err)
	}
	x.cfg = c.XDS
	return nil
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
