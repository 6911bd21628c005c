// Package nullproc is the baseline ext_proc server the load generator measures meshguard
// against: it answers every ProcessingRequest with the matching CONTINUE response and does
// nothing else. It is built from the same grpc-go, with the same server options, as meshguard,
// so the difference between the two is the cost of meshguard's own work.
package nullproc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/meshguard/meshguard/extproc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// DefaultMaxConcurrentStreams caps the concurrent ext_proc streams per HTTP/2 connection,
// as meshguard's default max-streams-per-connection does.
const DefaultMaxConcurrentStreams = extproc.DefaultMaxStreamsPerConnection

// Config holds the server options shared with meshguard. The zero value of a field means its
// default.
type Config struct {
	// MaxConcurrentStreams per HTTP/2 connection. Default DefaultMaxConcurrentStreams.
	MaxConcurrentStreams uint32
}

// ServerOptions returns the grpc-go server options meshguard's ext_proc server uses
// (extproc.ServerOptions and extproc.StreamOptions: stream limit, message sizes and codec,
// keepalive), so that the comparison measures only meshguard's own work.
func ServerOptions(c Config) []grpc.ServerOption {
	if c.MaxConcurrentStreams == 0 {
		c.MaxConcurrentStreams = DefaultMaxConcurrentStreams
	}
	cfg := extproc.Config{MaxStreamsPerConnection: int(c.MaxConcurrentStreams), MaxMessageBytes: extproc.DefaultMaxMessageBytes}
	return extproc.ServerOptions(extproc.StreamOptions(cfg)...)
}

// NewServer returns a gRPC server with the null ext_proc service and grpc.health.v1
// (reporting SERVING) registered.
func NewServer(c Config) *grpc.Server {
	s := grpc.NewServer(ServerOptions(c)...)
	extprocv3.RegisterExternalProcessorServer(s, Processor{})
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(extprocv3.ExternalProcessor_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(s, hs)
	return s
}

// Listen listens on addr, either host:port (TCP) or unix:///path.
func Listen(ctx context.Context, addr string) (net.Listener, error) {
	network, address := "tcp", addr
	if path, ok := strings.CutPrefix(addr, "unix://"); ok {
		network, address = "unix", path
	}
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, network, address)
	if err != nil {
		return nil, fmt.Errorf("nullproc: listen on %s: %w", addr, err)
	}
	return l, nil
}

// Processor is the null ext_proc service. It is stateless and safe for concurrent use.
type Processor struct {
	extprocv3.UnimplementedExternalProcessorServer
}

// Process answers each message with the matching CONTINUE response until the client closes
// its side of the stream.
func (Processor) Process(stream grpc.BidiStreamingServer[extprocv3.ProcessingRequest, extprocv3.ProcessingResponse]) error {
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		resp, err := Continue(req)
		if err != nil {
			return status.Error(codes.InvalidArgument, err.Error())
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

// Continue returns the CONTINUE response that matches req's phase.
func Continue(req *extprocv3.ProcessingRequest) (*extprocv3.ProcessingResponse, error) {
	switch req.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{}}}, nil
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{}}}, nil
	case *extprocv3.ProcessingRequest_RequestBody:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{}}}, nil
	case *extprocv3.ProcessingRequest_ResponseBody:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: &extprocv3.BodyResponse{}}}, nil
	case *extprocv3.ProcessingRequest_RequestTrailers:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestTrailers{RequestTrailers: &extprocv3.TrailersResponse{}}}, nil
	case *extprocv3.ProcessingRequest_ResponseTrailers:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseTrailers{ResponseTrailers: &extprocv3.TrailersResponse{}}}, nil
	default:
		return nil, fmt.Errorf("processing request with no phase set (%T)", req.GetRequest())
	}
}
