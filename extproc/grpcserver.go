package extproc

import (
	"math"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
)

// gRPC server settings for Envoy clients. Envoy opens one stream per HTTP request over a few
// long-lived HTTP/2 connections, so the per-connection stream limit, not the connection
// count, bounds concurrency.
const (
	// maxConcurrentStreams per HTTP/2 connection of ServerOptions' other users (xDS, access
	// logs). The ext_proc server's own limit is Config.MaxStreamsPerConnection: a bound keeps
	// one connection from monopolising the server, and Envoy opens further connections or
	// queues streams on its side until message_timeout.
	maxConcurrentStreams = 4096
	// maxRecvMsgSize of ServerOptions' other users; the ext_proc server's own is
	// Config.MaxMessageBytes.
	maxRecvMsgSize = 8 << 20
	// keepaliveMinTime is the shortest client ping interval accepted; Envoy's default
	// connection keepalive pings less often than this.
	keepaliveMinTime = 10 * time.Second
	// keepaliveTime and keepaliveTimeout detect dead Envoys on idle connections.
	keepaliveTime    = 30 * time.Second
	keepaliveTimeout = 10 * time.Second
)

// ServerOptions returns the gRPC server options meshguard uses for Envoy-facing servers,
// followed by extra.
func ServerOptions(extra ...grpc.ServerOption) []grpc.ServerOption {
	opts := []grpc.ServerOption{
		grpc.MaxConcurrentStreams(maxConcurrentStreams),
		grpc.MaxRecvMsgSize(maxRecvMsgSize),
		grpc.MaxSendMsgSize(math.MaxInt32),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: keepaliveMinTime, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: keepaliveTime, Timeout: keepaliveTimeout}),
	}
	return append(opts, extra...)
}

// NewGRPCServer returns a gRPC server with ext_proc and grpc.health.v1 registered. Over
// ServerOptions, ext's configuration sets the HTTP/2 stream limit of a connection
// (Config.MaxStreamsPerConnection) and the receive message limit (Config.MaxMessageBytes);
// extra options come last.
func NewGRPCServer(ext *Server, hs *health.Server, extra ...grpc.ServerOption) *grpc.Server {
	opts := []grpc.ServerOption{
		grpc.MaxConcurrentStreams(uint32(ext.cfg.MaxStreamsPerConnection)),
		grpc.MaxRecvMsgSize(ext.cfg.MaxMessageBytes),
	}
	gs := grpc.NewServer(ServerOptions(append(opts, extra...)...)...)
	extprocv3.RegisterExternalProcessorServer(gs, ext)
	healthpb.RegisterHealthServer(gs, hs)
	return gs
}
