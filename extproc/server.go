// Package extproc is meshguard's Envoy external-processing (ext_proc v3) server. It owns the
// stream lifecycle (one gRPC stream per HTTP request), the extraction of the calling service
// and the destination from attributes, headers and gRPC metadata, the translation of a
// flowmodel.Verdict into a ProcessingResponse (CONTINUE, or an ImmediateResponse 403), and the
// span, metrics and log line of every decision.
//
// The contract with Envoy: every message gets exactly one response of the matching kind,
// except in observability mode, where none is sent; a stream never ends cleanly with a
// message unanswered, so a clean end never means "allow" by accident.
package extproc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"time"

	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/meshguard/meshguard/flowmodel"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// Decider decides flows. flowmodel.Model satisfies it. Implementations must be safe for
// concurrent use and must not block on I/O: Envoy waits on every call.
type Decider interface {
	// Decide returns the verdict for a request. The flow is owned by the caller and may be
	// reused after Decide returns.
	Decide(f *flowmodel.Flow) flowmodel.Verdict
	// Observe records response-time facts (status, upstream address) of a decided flow.
	Observe(f *flowmodel.Flow)
	// Mode returns a service's mode, and whether the service is known.
	Mode(service string) (flowmodel.Mode, bool)
}

// Missing-identity policies: what to do with a request whose service or destination cannot
// be determined.
const (
	OnMissingAllow = "allow"
	OnMissingAlert = "alert"
	OnMissingBlock = "block"
)

// Config configures a Server. Zero fields take their defaults.
type Config struct {
	// IdentityOrder is the order in which identity sources are tried. Default:
	// DefaultIdentityOrder.
	IdentityOrder []IdentitySource
	// OnMissing is the action for a request without identity or destination: "alert"
	// (default), "allow" or "block". Its reason is invalid_request.
	OnMissing string
	// Logger receives a line per alert and block (and per allow at debug level). Default:
	// slog.Default().
	Logger *slog.Logger
	// TracerProvider makes the decision spans. Default: no spans.
	TracerProvider trace.TracerProvider
	// DecisionLogsPerSecond caps the decision lines logged per second (alerts and blocks are
	// logged at info and warn); the others are counted in
	// meshguard_decision_logs_suppressed_total and summed up in one line. Default: 100;
	// negative: no cap.
	DecisionLogsPerSecond int
	// Metrics, when set, counts decisions.
	Metrics *Metrics
	// Now is the clock of event times. Default: time.Now.
	Now func() time.Time
}

// Check applies defaults and reports every problem.
func (c Config) Check() (Config, error) {
	var errs []error
	if len(c.IdentityOrder) == 0 {
		c.IdentityOrder = DefaultIdentityOrder
	}
	switch c.OnMissing {
	case "":
		c.OnMissing = OnMissingAlert
	case OnMissingAllow, OnMissingAlert, OnMissingBlock:
	default:
		errs = append(errs, fmt.Errorf("on-missing %q: valid values are allow, alert, block", c.OnMissing))
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.TracerProvider == nil {
		c.TracerProvider = noop.NewTracerProvider()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.DecisionLogsPerSecond == 0 {
		c.DecisionLogsPerSecond = 100
	}
	return c, errors.Join(errs...)
}

// Server implements extprocv3.ExternalProcessorServer.
type Server struct {
	extprocv3.UnimplementedExternalProcessorServer

	decider   Decider
	cfg       Config
	onMissing flowmodel.Action
	tracer    trace.Tracer
	log       *slog.Logger
	logLimit  logLimiter
	metrics   *Metrics
}

var _ extprocv3.ExternalProcessorServer = (*Server)(nil)

// NewServer returns a server that asks d for verdicts.
func NewServer(d Decider, cfg Config) (*Server, error) {
	if d == nil {
		return nil, errors.New("extproc: nil decider")
	}
	cfg, err := cfg.Check()
	if err != nil {
		return nil, err
	}
	s := &Server{
		decider:  d,
		cfg:      cfg,
		tracer:   cfg.TracerProvider.Tracer("github.com/meshguard/meshguard/extproc"),
		log:      cfg.Logger,
		logLimit: logLimiter{perSecond: int64(cfg.DecisionLogsPerSecond)},
		metrics:  cfg.Metrics,
	}
	switch cfg.OnMissing {
	case OnMissingAllow:
		s.onMissing = flowmodel.Allow
	case OnMissingBlock:
		s.onMissing = flowmodel.Block
	default:
		s.onMissing = flowmodel.Alert
	}
	return s, nil
}

// stream is the state of one ext_proc stream (one HTTP request).
type stream struct {
	md            metadata.MD
	attrs         attrs
	reqHeaders    headers
	started       bool
	observability bool
	reqBodyMode   extprocfilterv3.ProcessingMode_BodySendMode
	respBodyMode  extprocfilterv3.ProcessingMode_BodySendMode

	decided  bool
	received time.Time // when the deciding message arrived
	flow     flowmodel.Flow
	verdict  flowmodel.Verdict
	span     trace.Span
	traceID  trace.TraceID
}

// Process handles one ext_proc stream.
func (s *Server) Process(ps extprocv3.ExternalProcessor_ProcessServer) error {
	ctx := ps.Context()
	st := &stream{}
	st.md, _ = metadata.FromIncomingContext(ctx)
	s.metrics.streamStarted()
	defer s.metrics.streamEnded()
	defer st.endSpan()
	for {
		req, err := ps.Recv()
		if errors.Is(err, io.EOF) {
			return nil // Envoy closed its side; every message so far was answered
		}
		if err != nil {
			if status.Code(err) == codes.Canceled || errors.Is(err, context.Canceled) {
				return status.Error(codes.Canceled, "stream canceled by the client")
			}
			return err
		}
		resp, final, err := s.handle(ctx, st, req)
		if err != nil {
			s.metrics.streamError(status.Code(err))
			return err
		}
		if resp == nil {
			continue // observability mode: Envoy ignores responses
		}
		if err := ps.Send(resp); err != nil {
			return err
		}
		if st.span != nil {
			s.metrics.observeLatency(s.cfg.Now().Sub(st.received))
			st.endSpan()
		}
		if final {
			// After an ImmediateResponse Envoy sends nothing more on this stream.
			return nil
		}
	}
}

func (st *stream) endSpan() {
	if st.span != nil {
		st.span.End()
		st.span = nil
	}
}

// handle answers one message. final is set when the response ends the stream
// (ImmediateResponse). A nil response with a nil error means "send nothing".
func (s *Server) handle(ctx context.Context, st *stream, req *extprocv3.ProcessingRequest) (resp *extprocv3.ProcessingResponse, final bool, err error) {
	now := s.cfg.Now()
	if !st.started {
		st.started = true
		st.observability = req.GetObservabilityMode()
		if pc := req.GetProtocolConfig(); pc != nil {
			st.reqBodyMode, st.respBodyMode = pc.GetRequestBodyMode(), pc.GetResponseBodyMode()
		}
	}
	st.attrs.merge(req.GetAttributes())

	switch r := req.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		st.attrs.merge(r.RequestHeaders.GetAttributes())
		st.reqHeaders = r.RequestHeaders.GetHeaders().GetHeaders()
		if ir := s.decideOnce(ctx, st, now); ir != nil {
			return s.reply(st, ir, true)
		}
		return s.reply(st, &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{
			RequestHeaders: &extprocv3.HeadersResponse{},
		}}, false)

	case *extprocv3.ProcessingRequest_RequestBody:
		if ir := s.decideOnce(ctx, st, now); ir != nil {
			return s.reply(st, ir, true)
		}
		body := r.RequestBody
		st.flow.RequestBytes = addBytes(st.flow.RequestBytes, len(body.GetBody()))
		return s.reply(st, &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{
			RequestBody: bodyResponse(st.reqBodyMode, body),
		}}, false)

	case *extprocv3.ProcessingRequest_RequestTrailers:
		if ir := s.decideOnce(ctx, st, now); ir != nil {
			return s.reply(st, ir, true)
		}
		return s.reply(st, &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestTrailers{
			RequestTrailers: &extprocv3.TrailersResponse{},
		}}, false)

	case *extprocv3.ProcessingRequest_ResponseHeaders:
		st.attrs.merge(r.ResponseHeaders.GetAttributes())
		// Envoy may be configured to skip every request phase: then the response decides.
		if ir := s.decideOnce(ctx, st, now); ir != nil {
			return s.reply(st, ir, true)
		}
		s.observe(st, headers(r.ResponseHeaders.GetHeaders().GetHeaders()))
		return s.reply(st, &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{
			ResponseHeaders: &extprocv3.HeadersResponse{},
		}}, false)

	case *extprocv3.ProcessingRequest_ResponseBody:
		if ir := s.decideOnce(ctx, st, now); ir != nil {
			return s.reply(st, ir, true)
		}
		body := r.ResponseBody
		st.flow.ResponseBytes = addBytes(st.flow.ResponseBytes, len(body.GetBody()))
		return s.reply(st, &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{
			ResponseBody: bodyResponse(st.respBodyMode, body),
		}}, false)

	case *extprocv3.ProcessingRequest_ResponseTrailers:
		if ir := s.decideOnce(ctx, st, now); ir != nil {
			return s.reply(st, ir, true)
		}
		return s.reply(st, &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseTrailers{
			ResponseTrailers: &extprocv3.TrailersResponse{},
		}}, false)

	case nil:
		// A message without a phase (e.g. only a flow-control update) needs no answer; in
		// any other case it is a protocol error, never a silent allow.
		if req.GetClientWindowUpdate() != nil {
			return nil, false, nil
		}
		return nil, false, status.Error(codes.InvalidArgument, "meshguard: ProcessingRequest carries no request phase")
	default:
		return nil, false, status.Errorf(codes.Unimplemented, "meshguard: unknown request phase %T", r)
	}
}

// reply drops responses in observability mode.
func (s *Server) reply(st *stream, resp *extprocv3.ProcessingResponse, final bool) (*extprocv3.ProcessingResponse, bool, error) {
	if st.observability {
		st.endSpan()
		return nil, false, nil
	}
	return resp, final, nil
}

func addBytes(total int64, n int) int64 {
	if total < 0 {
		total = 0
	}
	return total + int64(n)
}

// bodyResponse answers a body chunk. In FULL_DUPLEX_STREAMED mode Envoy forwards only what
// the processor sends back, so the chunk is echoed unchanged; in the other modes CONTINUE
// leaves it as it is.
func bodyResponse(mode extprocfilterv3.ProcessingMode_BodySendMode, b *extprocv3.HttpBody) *extprocv3.BodyResponse {
	if mode != extprocfilterv3.ProcessingMode_FULL_DUPLEX_STREAMED {
		return &extprocv3.BodyResponse{}
	}
	return &extprocv3.BodyResponse{Response: &extprocv3.CommonResponse{
		BodyMutation: &extprocv3.BodyMutation{Mutation: &extprocv3.BodyMutation_StreamedResponse{
			StreamedResponse: &extprocv3.StreamedBodyResponse{Body: b.GetBody(), EndOfStream: b.GetEndOfStream()},
		}},
	}}
}

// decideOnce decides the stream's flow at its first message. It returns the
// ImmediateResponse to send when the verdict is block, else nil.
func (s *Server) decideOnce(ctx context.Context, st *stream, now time.Time) *extprocv3.ProcessingResponse {
	if st.decided {
		return nil
	}
	st.decided = true
	st.received = now
	f := &st.flow
	*f = flowmodel.Flow{Time: now, RequestBytes: -1, ResponseBytes: -1, Source: "ext_proc"}
	h := st.reqHeaders
	f.Method = h.get(":method")
	f.Path = h.get(":path")
	f.ContentType = h.get("content-type")
	if cl := h.get("content-length"); cl != "" {
		if n, err := strconv.ParseInt(cl, 10, 64); err == nil && n >= 0 {
			f.RequestBytes = n
		}
	}
	if len(h) > 0 {
		f.HeaderKeys = make([]string, 0, len(h))
		for _, hv := range h {
			if k := hv.GetKey(); k != "" && k[0] != ':' {
				f.HeaderKeys = append(f.HeaderKeys, k)
			}
		}
	}

	svc, idSource := identify(s.cfg.IdentityOrder, st.md, &st.attrs)
	dest, destOK := destination(&st.attrs, h)
	f.Service, f.Destination = svc, dest
	var v flowmodel.Verdict
	if svc == "" || !destOK {
		v = flowmodel.Verdict{Action: s.onMissing, Score: 1, Reasons: flowmodel.Reasons(0).With(flowmodel.ReasonInvalidRequest)}
		if svc != "" {
			v.Mode, _ = s.decider.Mode(svc)
		}
	} else {
		v = s.decider.Decide(f)
	}
	if st.observability && v.Action == flowmodel.Block {
		v.Action = flowmodel.Alert // nothing can be blocked from observability mode
	}
	st.verdict = v
	s.metrics.decided(v)
	s.startSpan(ctx, st)
	s.logDecision(st, idSource)
	if v.Action != flowmodel.Block {
		return nil
	}
	return blockResponse(v, st.traceID)
}

// observe passes response-time facts to the decider.
func (s *Server) observe(st *stream, h headers) {
	f := &st.flow
	if f.Service == "" {
		return
	}
	if code, err := strconv.Atoi(h.get(":status")); err == nil {
		f.Status = code
	}
	if ap, err := netip.ParseAddrPort(st.attrs.str(AttrUpstreamAddress)); err == nil {
		f.Upstream = ap
	}
	if cl := h.get("content-length"); cl != "" {
		if n, err := strconv.ParseInt(cl, 10, 64); err == nil && n >= 0 {
			f.ResponseBytes = n
		}
	}
	s.decider.Observe(f)
}

func (s *Server) logDecision(st *stream, idSource IdentitySource) {
	v := st.verdict
	level := slog.LevelInfo
	switch v.Action {
	case flowmodel.Allow:
		level = slog.LevelDebug
	case flowmodel.Block:
		level = slog.LevelWarn
	}
	ctx := context.Background()
	if !s.log.Enabled(ctx, level) {
		return
	}
	ok, suppressed := s.logLimit.allow(st.received)
	if suppressed > 0 {
		s.log.LogAttrs(ctx, slog.LevelWarn, "decision logs suppressed", slog.Int64("lines", suppressed),
			slog.Int("limit_per_second", s.cfg.DecisionLogsPerSecond))
	}
	if !ok {
		s.metrics.logSuppressed()
		return
	}
	f := &st.flow
	attrs := []slog.Attr{
		slog.String("service", f.Service),
		slog.String("identity_source", string(idSource)),
		slog.String("mode", modeName(v.Mode)),
		slog.String("verdict", v.Action.String()),
		slog.Float64("score", v.Score),
		slog.Any("reasons", v.Reasons.Strings()),
		slog.String("destination", f.Destination.String()),
		slog.String("method", f.Method),
		slog.String("path", urlPath(f.Path)),
	}
	if st.traceID.IsValid() {
		attrs = append(attrs, slog.String("trace_id", st.traceID.String()))
	}
	if rid := st.reqHeaders.get("x-request-id"); rid != "" {
		attrs = append(attrs, slog.String("request_id", rid))
	}
	s.log.LogAttrs(ctx, level, "decision", attrs...)
}

func modeName(m flowmodel.Mode) string {
	if !m.Valid() {
		return "unknown"
	}
	return m.String()
}

// urlPath is the path without its query (the query may carry secrets).
func urlPath(p string) string {
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		return p[:i]
	}
	return p
}
