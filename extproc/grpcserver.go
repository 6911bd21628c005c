package extproc

import (
	"bytes"
	"math"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
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

// NewGRPCServer returns a gRPC server with ext_proc and grpc.health.v1 registered, with
// ServerOptions, then StreamOptions of ext's configuration, then extra.
func NewGRPCServer(ext *Server, hs *health.Server, extra ...grpc.ServerOption) *grpc.Server {
	gs := grpc.NewServer(ServerOptions(append(StreamOptions(ext.cfg), extra...)...)...)
	extprocv3.RegisterExternalProcessorServer(gs, ext)
	healthpb.RegisterHealthServer(gs, hs)
	return gs
}

// StreamOptions returns the gRPC server options of an ext_proc server with configuration cfg
// (defaults applied, see Config.Check): the HTTP/2 stream limit of a connection
// (MaxStreamsPerConnection), the message limit (MaxMessageBytes, through extprocCodec) and
// the tap handle that lets the server end a stream silent for FirstMessageTimeout (see
// tapFirstMessage; grpc-go takes one tap handle per server). The null server of bench/load
// uses them too, so that both are measured alike.
func StreamOptions(cfg Config) []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.InTapHandle(tapFirstMessage),
		grpc.MaxConcurrentStreams(uint32(cfg.MaxStreamsPerConnection)),
		grpc.MaxRecvMsgSize(transportLimit(cfg.MaxMessageBytes)),
		grpc.ForceServerCodecV2(newExtprocCodec(cfg.MaxMessageBytes)),
	}
}

// A message Envoy sends that cannot be decoded (over Config.MaxMessageBytes, or not valid
// protobuf, such as invalid UTF-8 in a string field, which Go's protobuf refuses) must get a
// 403, not a stream error that Envoy's failure_mode_allow would turn into an allow. grpc-go
// ends a stream at once, with an error status, when Recv fails, so the ext_proc server's
// codec never fails on a ProcessingRequest: it hands over an empty one marked as
// undecodable (see undecodable), and the server answers it with a 403.
//
// The gRPC receive limit itself is set above MaxMessageBytes (transportLimit), so that a
// message somewhat over the limit is still read and answered; one over the transport limit,
// which Envoy's own header and buffer limits keep from happening unless they are raised,
// ends its stream with RESOURCE_EXHAUSTED.

// Markers of undecodable messages: an unknown field that no ext_proc version uses (the
// largest field number) with a fixed value.
var (
	markTooLarge = protowire.AppendString(protowire.AppendTag(nil, protowire.MaxValidNumber, protowire.BytesType), "meshguard: over max-message-bytes")
	markInvalid  = protowire.AppendString(protowire.AppendTag(nil, protowire.MaxValidNumber, protowire.BytesType), "meshguard: undecodable")
)

// transportLimit is the gRPC receive limit for a MaxMessageBytes of max.
func transportLimit(max int) int { return int(min(2*int64(max), math.MaxInt32)) }

// extprocCodec is grpc's proto codec, except that a ProcessingRequest that cannot be decoded
// is handed over marked instead of failing the stream.
type extprocCodec struct {
	encoding.CodecV2
	maxBytes int
}

func newExtprocCodec(maxBytes int) extprocCodec {
	return extprocCodec{CodecV2: encoding.GetCodecV2(grpcproto.Name), maxBytes: maxBytes}
}

// Unmarshal implements encoding.CodecV2.
func (c extprocCodec) Unmarshal(data mem.BufferSlice, v any) error {
	req, ok := v.(*extprocv3.ProcessingRequest)
	if !ok {
		return c.CodecV2.Unmarshal(data, v)
	}
	mark := markTooLarge
	if data.Len() <= c.maxBytes {
		if err := c.CodecV2.Unmarshal(data, v); err == nil {
			return nil
		}
		mark = markInvalid
	}
	proto.Reset(req)
	req.ProtoReflect().SetUnknown(mark)
	return nil
}

// undecodable says whether req stands for a message that could not be decoded, and why.
func undecodable(req *extprocv3.ProcessingRequest) (why string, ok bool) {
	u := req.ProtoReflect().GetUnknown()
	switch {
	case len(u) == 0:
		return "", false
	case bytes.Equal(u, markTooLarge):
		return "over max-message-bytes", true
	case bytes.Equal(u, markInvalid):
		return "not valid protobuf", true
	}
	return "", false
}
