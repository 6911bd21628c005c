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
	// maxConcurrentStreams per HTTP/2 connection. Envoy's own default for its gRPC clients is
	// unlimited (2^31-1); a bound keeps one connection from monopolising the server, and
	// Envoy queues further streams on its side until message_timeout. With
	// Config.MaxStreams set, the bound is raised to MaxStreams+streamHeadroom when that is
	// higher, so that the admission limit, which fails a stream at once, is met before the
	// HTTP/2 one, which makes clients wait.
	maxConcurrentStreams = 4096
	// streamHeadroom is how many streams above Config.MaxStreams one connection may open:
	// room for health checks and for the excess streams to be refused with
	// RESOURCE_EXHAUSTED rather than queued by the client.
	streamHeadroom = 64
	// maxRecvMsgSize: headers and attributes are small, but a BUFFERED body may be as large as
	// Envoy's per-request buffer limit (1 MiB by default) plus framing.
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

// NewGRPCServer returns a gRPC server with ext_proc and grpc.health.v1 registered. The
// HTTP/2 stream limit follows ext's MaxStreams (see streamHeadroom); extra options come last.
func NewGRPCServer(ext *Server, hs *health.Server, extra ...grpc.ServerOption) *grpc.Server {
	opts := []grpc.ServerOption{grpc.MaxConcurrentStreams(http2StreamLimit(ext.cfg.MaxStreams))}
	gs := grpc.NewServer(ServerOptions(append(opts, extra...)...)...)
	extprocv3.RegisterExternalProcessorServer(gs, ext)
	healthpb.RegisterHealthServer(gs, hs)
	return gs
}

// http2StreamLimit is the per-connection stream limit for an admission limit of maxStreams
// (0: none).
func http2StreamLimit(maxStreams int) uint32 {
	if limit := int64(maxStreams) + streamHeadroom; maxStreams > 0 && limit > maxConcurrentStreams {
		return uint32(min(limit, math.MaxUint32))
	}
	return maxConcurrentStreams
}
