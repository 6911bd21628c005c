// Package extproc is meshguard's Envoy external-processing (ext_proc v3) server. It owns the
// stream lifecycle (one gRPC stream per HTTP request), the extraction of the calling service
// and the destination from attributes, headers and gRPC metadata, the translation of a
// flowmodel.Verdict into a ProcessingResponse (CONTINUE, or an ImmediateResponse 403), and the
// span, metrics and log line of every decision.
//
// The contract with Envoy: every message gets exactly one response of the matching kind,
// except in observability mode, where none is sent; a stream never ends cleanly with a
// message unanswered, so a clean end never means "allow" by accident. Envoy's names
// (attributes, metadata keys, header and details strings) live in package contract.
//
// The workload behind Envoy may be compromised, and it controls the request: the server
// fails closed on what it cannot establish. A destination that cannot be established
// (malformed, ambiguous or smuggled :authority, host or destination.address), two identity
// sources naming different services, or malformed pseudo-headers are decided in the
// service's mode without the model's judgement (flowmodel.Model.Undecidable: blocked in
// enforce and quarantine, alerted otherwise, never learned). Every request_headers is
// decided; a message that cannot be decoded gets a 403; a stream silent past
// Config.FirstMessageTimeout is closed and never holds a Config.MaxStreams slot.
package extproc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/meshguard/meshguard/flowmodel"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
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
	// OnMissing is the action for a request without identity (no source names a service):
	// "block" (default: meshguard fails closed when it cannot decide), "alert" or "allow".
	// Its reason is invalid_request.
	OnMissing string
	// AuthorizePeer, when set, decides whether a stream's client may speak for the identity
	// the stream names (see peer.go); a refusal is blocked as identity_mismatch in every
	// mode and never learned. nil: every claim is believed.
	AuthorizePeer AuthorizePeerFunc
	// Logger receives a line per alert and block (and per allow at debug level). Default:
	// slog.Default().
	Logger *slog.Logger
	// TracerProvider makes the decision spans. Default: no spans.
	TracerProvider trace.TracerProvider
	// DecisionLogsPerSecond caps the decision lines logged per second (alerts and blocks are
	// logged at info and warn); the others are counted in
	// meshguard_decision_logs_suppressed_total and summed up in one line. The cap is shared
	// fairly between services; a service's first line in a second is always logged. Default: 100;
	// negative: no cap.
	DecisionLogsPerSecond int
	// Metrics, when set, counts decisions.
	Metrics *Metrics
	// Now is the clock of event times. Default: time.Now.
	Now func() time.Time
	// DecisionBudget bounds the time the decider may take for a request; past it, the
	// request gets the OnBudget answer (see budget.go). Zero: no bound (Envoy's
	// message_timeout is the only one).
	DecisionBudget time.Duration
	// OnBudget is the answer when a decision overruns DecisionBudget: "allow" (default:
	// CONTINUE, recorded as an alert) or "block" (a 403 with details BudgetDetails).
	OnBudget string
	// MaxStreams bounds the ext_proc decisions in progress; a stream beyond it fails at
	// once with RESOURCE_EXHAUSTED instead of queueing. A stream counts from its first
	// message until its deciding message is answered (see peer.go), so that neither streams
	// that never send a message (bounded by MaxStreamsPerConnection and
	// FirstMessageTimeout) nor allowed requests waiting for their response hold the slots of
	// real decisions. Zero: no bound but the HTTP/2 one.
	MaxStreams int
	// FirstMessageTimeout is how long a new stream may stay silent: Envoy sends its first
	// message as soon as it opens a stream, so a stream without one after this long is
	// closed with DEADLINE_EXCEEDED. Default: DefaultFirstMessageTimeout.
	FirstMessageTimeout time.Duration
	// MaxStreamsPerConnection is the HTTP/2 concurrent-stream limit of one connection to
	// the ext_proc server (grpc.MaxConcurrentStreams, see NewGRPCServer). Default:
	// DefaultMaxStreamsPerConnection.
	MaxStreamsPerConnection int
	// MaxMessageBytes is the largest ext_proc message accepted (the gRPC receive limit, see
	// NewGRPCServer); a larger one is answered with a 403. Default: DefaultMaxMessageBytes.
	MaxMessageBytes int
	// MaxBodyBytes is how much of a BUFFERED request body is passed to the decider for
	// parameter values (see body.go). Default: 8192 (max-body-bytes); negative: none, every
	// request is decided at its headers.
	MaxBodyBytes int
}

// Defaults of the stream bounds.
const (
	// DefaultFirstMessageTimeout: Envoy sends the first message of a stream at once; a
	// second or two is ample even on a loaded node, and short enough that silent streams
	// cost little.
	DefaultFirstMessageTimeout = 2 * time.Second
	// DefaultMaxStreamsPerConnection: Envoy spreads its streams over several connections
	// when the server's limit is reached, so one connection needs no more than a busy
	// sidecar's concurrent requests.
	DefaultMaxStreamsPerConnection = 1000
	// DefaultMaxMessageBytes: request headers are limited to 60 KiB by Envoy's default
	// (max_request_headers_kb), attributes are small; 1 MiB leaves room for large header
	// sets and small BUFFERED bodies. A BUFFERED body as large as Envoy's default buffer
	// limit (1 MiB) needs a larger value.
	DefaultMaxMessageBytes = 1 << 20
	// MinMaxMessageBytes is the smallest MaxMessageBytes accepted: below Envoy's default
	// header limit, ordinary requests would be refused.
	MinMaxMessageBytes = 64 << 10
)

// Check applies defaults and reports every problem.
func (c Config) Check() (Config, error) {
	var errs []error
	if len(c.IdentityOrder) == 0 {
		c.IdentityOrder = DefaultIdentityOrder
	}
	switch c.OnMissing {
	case "":
		c.OnMissing = OnMissingBlock
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
	switch c.OnBudget {
	case "":
		c.OnBudget = OnBudgetBlock
	case OnBudgetAllow, OnBudgetBlock:
	default:
		errs = append(errs, fmt.Errorf("on-budget %q: valid values are allow, block", c.OnBudget))
	}
	if c.DecisionBudget < 0 {
		errs = append(errs, fmt.Errorf("decision budget %v must not be negative", c.DecisionBudget))
	}
	if c.MaxStreams < 0 {
		errs = append(errs, fmt.Errorf("max streams %d must not be negative", c.MaxStreams))
	}
	switch {
	case c.FirstMessageTimeout == 0:
		c.FirstMessageTimeout = DefaultFirstMessageTimeout
	case c.FirstMessageTimeout < 0:
		errs = append(errs, fmt.Errorf("first-message-timeout %v must be positive", c.FirstMessageTimeout))
	}
	switch {
	case c.MaxStreamsPerConnection == 0:
		c.MaxStreamsPerConnection = DefaultMaxStreamsPerConnection
	case c.MaxStreamsPerConnection < 0 || int64(c.MaxStreamsPerConnection) > math.MaxUint32:
		errs = append(errs, fmt.Errorf("max-streams-per-connection %d must be between 1 and %d", c.MaxStreamsPerConnection, uint32(math.MaxUint32)))
	}
	switch {
	case c.MaxMessageBytes == 0:
		c.MaxMessageBytes = DefaultMaxMessageBytes
	case c.MaxMessageBytes < MinMaxMessageBytes || c.MaxMessageBytes > math.MaxInt32:
		errs = append(errs, fmt.Errorf("max-message-bytes %d must be between %d (Envoy's default header limit fits) and %d",
			c.MaxMessageBytes, MinMaxMessageBytes, math.MaxInt32))
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = flowmodel.DefaultMaxBodyBytes
	}
	return c, errors.Join(errs...)
}

// Server implements extprocv3.ExternalProcessorServer.
type Server struct {
	extprocv3.UnimplementedExternalProcessorServer

	decider    Decider
	cfg        Config
	onMissing  flowmodel.Action
	tracer     trace.Tracer
	log        *slog.Logger
	logLimit   logLimiter
	metrics    *Metrics
	onBudget   flowmodel.Action
	watchdogs  sync.Pool    // of *watchdog
	firstRecvs sync.Pool    // of *firstRecv
	idleTimers sync.Pool    // of *idleTimer
	streams    atomic.Int64 // streams being served, for MaxStreams
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
	s.onBudget = flowmodel.Alert
	if cfg.OnBudget == OnBudgetBlock {
		s.onBudget = flowmodel.Block
	}
	return s, nil
}

// admit counts a new stream in, unless MaxStreams are being served.
func (s *Server) admit() bool {
	n := s.streams.Add(1)
	if s.cfg.MaxStreams > 0 && n > int64(s.cfg.MaxStreams) {
		s.streams.Add(-1)
		return false
	}
	return true
}

func (s *Server) release() { s.streams.Add(-1) }

// stream is the state of one ext_proc stream (one HTTP request). One goroutine owns it at a
// time: the stream's own, or the watchdog's after it cut a decision (see decideWithin).
type stream struct {
	ps            extprocv3.ExternalProcessor_ProcessServer
	ctx           context.Context
	md            metadata.MD
	attrs         attrs
	reqHeaders    headers
	sawReqHeaders bool // a request_headers message came: reqHeaders are the request's
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
	observe  bool // response facts are in flow, to be passed to the decider after the reply
	// incomplete is set when the flow was decided without the decider's judgement (no
	// identity, an unknown destination, an identity mismatch): it teaches nothing.
	incomplete bool
	idSource   IdentitySource
	body       bodyState // a request body the decision waits for (body.go)

	// With a decision budget: the request being decided, the copy of the flow the decider
	// reads, who answers the deciding message, and the watchdog's result when it did.
	current        *extprocv3.ProcessingRequest
	decideFlow     flowmodel.Flow
	answeredBy     atomic.Int32 // answerPending, answerDecider or answerWatchdog
	budgetExceeded bool
	handedOver     chan error

	// slot is set while the stream holds a MaxStreams slot (see releaseDecided).
	slot bool
	// With Config.AuthorizePeer: the identity checked, and the answer.
	authChecked bool
	authService string
	authSource  IdentitySource
	authErr     error
}

// Process handles one ext_proc stream.
func (s *Server) Process(ps extprocv3.ExternalProcessor_ProcessServer) error {
	st := &stream{ps: ps, ctx: ps.Context()}
	s.metrics.awaitFirst(1)
	var first *extprocv3.ProcessingRequest
	var err error
	if cancel, ok := st.ctx.Value(firstMessageKey{}).(context.CancelCauseFunc); ok {
		first, err = s.recvFirstCancel(st, cancel)
	} else {
		first, err = s.recvFirst(st)
	}
	s.metrics.awaitFirst(-1)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil // opened and closed without a message: nothing to answer
		}
		if isCanceled(err) {
			return status.Error(codes.Canceled, "stream canceled by the client")
		}
		s.metrics.streamError(status.Code(err))
		return err
	}
	if why, bad := undecodable(first); bad {
		return s.refuseUndecodable(st, why)
	}
	if !s.admit() {
		s.metrics.streamRejected()
		return status.Errorf(codes.ResourceExhausted,
			"meshguard: %d ext_proc streams in progress, the limit; retry on another meshguard", s.cfg.MaxStreams)
	}
	st.slot = true
	defer func() {
		if st.slot {
			s.release()
		}
	}()
	st.md, _ = metadata.FromIncomingContext(st.ctx)
	s.metrics.streamStarted()
	defer s.metrics.streamEnded()
	err = s.serve(st, first)
	if errors.Is(err, errHandedOver) {
		// The watchdog answered the deciding message and served the rest of the stream;
		// the decider has returned at last, and the stream is ours again once the
		// watchdog is done with it.
		err = <-st.handedOver
	}
	st.endSpan()
	return err
}

// recvResult is the outcome of one Recv.
type recvResult struct {
	req *extprocv3.ProcessingRequest
	err error
}

// errFirstMessageTimeout ends a stream that sent nothing within FirstMessageTimeout.
var errFirstMessageTimeout = status.Error(codes.DeadlineExceeded, "meshguard: no ext_proc message within the first-message timeout")

// The first-message timeout. A blocked Recv returns only when the stream's context is done
// (or a message or the end of the stream comes). grpc-go gives the handler no way to cancel
// that context, but a tap handle (grpc.InTapHandle) may replace it: tapFirstMessage, one of
// StreamOptions, gives every ext_proc stream a context the server can cancel, and
// recvFirstCancel arms a pooled timer that cancels it when no message came in time. A stream
// served without the tap (a server not built with StreamOptions) falls back to recvFirst,
// which waits for its first message in a goroutine: about 2.5 µs more per stream.

// firstMessageKey is the context key of the context.CancelCauseFunc tapFirstMessage sets.
type firstMessageKey struct{}

// tapFirstMessage is the tap handle of StreamOptions: it makes the context of every ext_proc
// stream cancellable by the server.
func tapFirstMessage(ctx context.Context, info *tap.Info) (context.Context, error) {
	if info.FullMethodName != extprocv3.ExternalProcessor_Process_FullMethodName {
		return ctx, nil
	}
	ctx, cancel := context.WithCancelCause(ctx)
	return context.WithValue(ctx, firstMessageKey{}, cancel), nil
}

// idleTimer cancels a stream's context when its first message does not come in time. It is
// reused only when it was stopped before it fired.
type idleTimer struct {
	timer  *time.Timer
	mu     sync.Mutex
	cancel context.CancelCauseFunc // the stream being timed; nil when none
}

func (t *idleTimer) fire() {
	t.mu.Lock()
	cancel := t.cancel
	t.mu.Unlock()
	if cancel != nil {
		cancel(errFirstMessageTimeout)
	}
}

// recvFirstCancel receives the stream's first message, cancelling the stream's context
// (cancel, from tapFirstMessage) when none comes within FirstMessageTimeout.
func (s *Server) recvFirstCancel(st *stream, cancel context.CancelCauseFunc) (*extprocv3.ProcessingRequest, error) {
	t, _ := s.idleTimers.Get().(*idleTimer)
	if t == nil {
		t = &idleTimer{}
		t.timer = time.AfterFunc(time.Hour, t.fire)
		t.timer.Stop()
	}
	t.mu.Lock()
	t.cancel = cancel
	t.mu.Unlock()
	t.timer.Reset(s.cfg.FirstMessageTimeout)
	req, err := st.ps.Recv()
	if !t.timer.Stop() {
		// It fired: the stream's context is cancelled, whatever Recv returned.
		return nil, errFirstMessageTimeout
	}
	t.mu.Lock()
	t.cancel = nil
	t.mu.Unlock()
	s.idleTimers.Put(t)
	return req, err
}

// recvFirst receives the stream's first message, or fails with errFirstMessageTimeout when
// none comes in time. A blocked Recv cannot be interrupted but by the handler's return, so
// it runs in a goroutine of its own, which ends with the stream. Its channel and timer are
// pooled: they go back to the pool when the message came in time (the goroutine is done with
// them), and stay with the goroutine otherwise.
func (s *Server) recvFirst(st *stream) (*extprocv3.ProcessingRequest, error) {
	fr, _ := s.firstRecvs.Get().(*firstRecv)
	if fr == nil {
		fr = &firstRecv{ch: make(chan recvResult, 1), timer: time.NewTimer(time.Hour)}
		fr.timer.Stop()
	}
	fr.ps = st.ps
	fr.timer.Reset(s.cfg.FirstMessageTimeout)
	go fr.run()
	select {
	case r := <-fr.ch:
		fr.timer.Stop() // from Go 1.23 on, no stale tick can be received after Stop
		fr.ps = nil
		s.firstRecvs.Put(fr)
		return r.req, r.err
	case <-fr.timer.C:
		return nil, errFirstMessageTimeout
	}
}

// firstRecv receives the first message of a stream in a goroutine.
type firstRecv struct {
	ps    extprocv3.ExternalProcessor_ProcessServer
	ch    chan recvResult // buffered: run never blocks on it
	timer *time.Timer
}

func (fr *firstRecv) run() {
	req, err := fr.ps.Recv()
	fr.ch <- recvResult{req, err}
}

func isCanceled(err error) bool {
	return status.Code(err) == codes.Canceled || errors.Is(err, context.Canceled)
}

// refuseUndecodable answers a message that could not be decoded (see extprocCodec) with a
// 403, and records the decision (invalid_request), in place of a stream error that Envoy's
// failure_mode_allow would turn into an allow. In observability mode nothing is answered.
func (s *Server) refuseUndecodable(st *stream, why string) error {
	st.received = s.cfg.Now()
	st.decided = true
	v := flowmodel.Verdict{Action: flowmodel.Block, Score: 1, Reasons: flowmodel.Reasons(0).With(flowmodel.ReasonInvalidRequest)}
	if st.flow.Service != "" {
		v.Mode, _ = s.decider.Mode(st.flow.Service)
	}
	st.endSpan()
	st.verdict = v
	s.metrics.decided(v)
	s.startSpan(st)
	s.logDecision(st)
	if st.span != nil {
		st.span.SetAttributes(AttrKeyUndecodable.String(why))
	}
	defer st.endSpan()
	if st.observability {
		return nil
	}
	return st.ps.Send(forbidden(BlockBody{Verdict: v.Action.String(), Reasons: v.Reasons.Strings()}, st.traceID, UndecodableDetails))
}

// errHandedOver tells serve's caller that the watchdog now owns the stream.
var errHandedOver = errors.New("extproc: stream handed over to the budget watchdog")

// serve answers req (when not nil) and then reads and answers messages until the stream ends.
func (s *Server) serve(st *stream, req *extprocv3.ProcessingRequest) error {
	for {
		if req == nil {
			var err error
			if req, err = st.ps.Recv(); err != nil {
				if errors.Is(err, io.EOF) {
					return nil // Envoy closed its side; every message so far was answered
				}
				if isCanceled(err) {
					return status.Error(codes.Canceled, "stream canceled by the client")
				}
				s.metrics.streamError(status.Code(err))
				return err
			}
			if why, bad := undecodable(req); bad {
				return s.refuseUndecodable(st, why)
			}
		}
		resp, final, err := s.handle(st, req)
		req = nil
		if errors.Is(err, errHandedOver) {
			return err
		}
		if err != nil {
			s.metrics.streamError(status.Code(err))
			return err
		}
		if done, err := s.send(st, resp, final); done {
			return err
		}
	}
}

// send sends resp (nothing when nil) and then does what Envoy need not wait for. done is
// set when the stream is over.
func (s *Server) send(st *stream, resp *extprocv3.ProcessingResponse, final bool) (done bool, err error) {
	if resp != nil {
		if err := st.ps.Send(resp); err != nil {
			return true, err
		}
		if st.span != nil {
			s.metrics.observeLatency(s.cfg.Now().Sub(st.received))
			st.endSpan()
		}
	}
	s.afterAnswer(st)
	if st.observe {
		st.observe = false
		s.decider.Observe(&st.flow)
	}
	// After an ImmediateResponse Envoy sends nothing more on this stream.
	return final, nil
}

func (st *stream) endSpan() {
	if st.span != nil {
		st.span.End()
		st.span = nil
	}
}

// handle answers one message. final is set when the response ends the stream
// (ImmediateResponse). A nil response with a nil error means "send nothing".
func (s *Server) handle(st *stream, req *extprocv3.ProcessingRequest) (resp *extprocv3.ProcessingResponse, final bool, err error) {
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
		st.sawReqHeaders = true
		if st.decided {
			// One stream is one request, but a second request_headers is decided as the
			// first was, never let through on the first one's verdict.
			st.endSpan()
			st.decided = false
		}
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		// Envoy may be configured to skip every request phase: then the response decides.
		st.attrs.merge(r.ResponseHeaders.GetAttributes())
	case *extprocv3.ProcessingRequest_RequestBody, *extprocv3.ProcessingRequest_RequestTrailers,
		*extprocv3.ProcessingRequest_ResponseBody, *extprocv3.ProcessingRequest_ResponseTrailers:
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
	if !st.decided && s.awaitBody(st, req) {
		return s.answer(st, req) // the decision waits for the body
	}
	if !st.decided {
		st.current = req
		if err := s.admitDecision(st); err != nil {
			return nil, false, err
		}
		v, inTime := s.decide(st, now)
		if !inTime {
			return nil, false, errHandedOver
		}
		if ir := s.settle(st, v); ir != nil {
			return s.reply(st, ir, true)
		}
	}
	return s.answer(st, req)
}

// answer is the response to req once its stream is decided and not blocked.
func (s *Server) answer(st *stream, req *extprocv3.ProcessingRequest) (*extprocv3.ProcessingResponse, bool, error) {
	var resp *extprocv3.ProcessingResponse
	switch r := req.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		resp = &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{
			RequestHeaders: &extprocv3.HeadersResponse{},
		}}
	case *extprocv3.ProcessingRequest_RequestBody:
		body := r.RequestBody
		st.flow.RequestBytes = addBytes(st.flow.RequestBytes, len(body.GetBody()))
		resp = &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{
			RequestBody: bodyResponse(st.reqBodyMode, body),
		}}
	case *extprocv3.ProcessingRequest_RequestTrailers:
		resp = &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestTrailers{
			RequestTrailers: &extprocv3.TrailersResponse{},
		}}
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		s.responseFacts(st, headers(r.ResponseHeaders.GetHeaders().GetHeaders()))
		resp = &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{
			ResponseHeaders: &extprocv3.HeadersResponse{},
		}}
	case *extprocv3.ProcessingRequest_ResponseBody:
		body := r.ResponseBody
		st.flow.ResponseBytes = addBytes(st.flow.ResponseBytes, len(body.GetBody()))
		resp = &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{
			ResponseBody: bodyResponse(st.respBodyMode, body),
		}}
	case *extprocv3.ProcessingRequest_ResponseTrailers:
		resp = &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseTrailers{
			ResponseTrailers: &extprocv3.TrailersResponse{},
		}}
	default:
		// handle lets only the phases above through.
		return nil, false, status.Errorf(codes.Internal, "meshguard: no answer for %T", r)
	}
	return s.reply(st, resp, false)
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

// decide builds the stream's flow at its first message and asks for a verdict. inTime is
// false when the decision overran the budget and the watchdog took the stream over.
func (s *Server) decide(st *stream, now time.Time) (v flowmodel.Verdict, inTime bool) {
	st.decided = true
	st.received = now
	f := &st.flow
	*f = flowmodel.Flow{Time: now, RequestBytes: -1, ResponseBytes: -1, Source: "ext_proc"}
	h := st.reqHeaders
	var rh requestHead
	if len(h) > 0 {
		f.HeaderKeys = rh.scan(h, make([]string, 0, len(h)))
	}
	f.Method, f.Path, f.ContentType = rh.method, rh.path, rh.contentType
	if n, ok := parseContentLength(rh.contentLength); ok {
		f.RequestBytes = n
	}
	s.bodyFacts(st, f)

	id := identify(s.cfg.IdentityOrder, st.md, &st.attrs)
	dest, fault := destination(&st.attrs, &rh)
	f.Service, f.Destination = id.service, dest
	st.idSource = id.source
	st.incomplete = true
	if id.service == "" {
		// No service, no mode to judge by: the configured answer, and the decider is not
		// asked.
		return flowmodel.Verdict{Action: s.onMissing, Score: 1, Reasons: flowmodel.Reasons(0).With(flowmodel.ReasonInvalidRequest)}, true
	}
	if s.peerRefused(st, id.service, id.source) {
		// The client may not speak for this service: blocked, the decider not asked.
		return s.refusedVerdict(id.service), true
	}
	var inc incomplete
	if id.other != "" {
		inc.reasons = inc.reasons.With(flowmodel.ReasonIdentityMismatch)
		inc.other = id.other
	}
	if fault != destOK {
		inc.reasons = inc.reasons.With(flowmodel.ReasonUnknownDestination)
	}
	if st.sawReqHeaders && !rh.wellFormed() {
		inc.reasons = inc.reasons.With(flowmodel.ReasonInvalidRequest)
	}
	st.incomplete = !inc.reasons.Empty()
	return s.decideWithin(st, inc)
}

// incomplete says why a stream's flow cannot go to the decider as it is.
type incomplete struct {
	// reasons is empty for a complete flow; else it holds unknown_destination,
	// identity_mismatch and invalid_request, as they apply.
	reasons flowmodel.Reasons
	// other is, with identity_mismatch, the service the other identity source named.
	other string
}

// UndecidableDecider is implemented by deciders that judge requests the server cannot turn into a
// complete flow; flowmodel.Model does (see flowmodel.Model.Undecidable). A decider without it
// is asked only for the service's mode, and an unknown service is blocked.
type UndecidableDecider interface {
	Undecidable(service string, rs flowmodel.Reasons) flowmodel.Verdict
}

// ask asks the decider: the verdict for f, or, for an incomplete flow, the verdict that
// fails closed in the service's mode (and, with two identities, in the stricter of their
// modes).
func (s *Server) ask(f *flowmodel.Flow, inc incomplete) flowmodel.Verdict {
	if inc.reasons.Empty() {
		return s.decider.Decide(f)
	}
	v := s.undecidable(f.Service, inc.reasons)
	if inc.other != "" {
		if o := s.undecidable(inc.other, inc.reasons); o.Action > v.Action {
			v = o
		}
	}
	return v
}

func (s *Server) undecidable(service string, rs flowmodel.Reasons) flowmodel.Verdict {
	if u, ok := s.decider.(UndecidableDecider); ok {
		return u.Undecidable(service, rs)
	}
	v := flowmodel.Verdict{Score: 1, Reasons: rs, Action: flowmodel.Block}
	if m, known := s.decider.Mode(service); known {
		v.Mode, v.Action = m, flowmodel.UndecidableAction(m)
	}
	return v
}

// settle records the verdict of the stream (metrics, span, log line). It returns the
// ImmediateResponse to send when the verdict is block, else nil.
func (s *Server) settle(st *stream, v flowmodel.Verdict) *extprocv3.ProcessingResponse {
	if st.observability && v.Action == flowmodel.Block {
		v.Action = flowmodel.Alert // nothing can be blocked from observability mode
	}
	st.verdict = v
	s.metrics.decided(v)
	s.startSpan(st)
	s.logDecision(st)
	if v.Action != flowmodel.Block {
		return nil
	}
	if st.budgetExceeded {
		return budgetBlockResponse(st.traceID)
	}
	return blockResponse(v, st.traceID)
}

// responseFacts records response-time facts in the flow, for send to pass to the decider
// once the response is on its way.
func (s *Server) responseFacts(st *stream, h headers) {
	f := &st.flow
	if st.incomplete || st.budgetExceeded {
		// No identity, no destination or two identities, or the decider is stuck on this
		// service: nothing to observe.
		return
	}
	if code, err := strconv.Atoi(h.get(":status")); err == nil {
		f.Status = code
	}
	if ap, err := netip.ParseAddrPort(st.attrs.str(AttrUpstreamAddress)); err == nil {
		f.Upstream = ap
	}
	if n, ok := h.contentLength(); ok {
		f.ResponseBytes = n
	}
	st.observe = true
}

func (s *Server) logDecision(st *stream) {
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
	ok, suppressed := s.logLimit.allow(st.received, st.flow.Service)
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
		slog.String("identity_source", string(st.idSource)),
		slog.String("mode", modeName(v.Mode)),
		slog.String("verdict", v.Action.String()),
		slog.Float64("score", v.Score),
		slog.Any("reasons", v.Reasons.Strings()),
		slog.String("destination", f.Destination.String()),
		slog.String("method", f.Method),
		slog.String("path", urlPath(f.Path)),
	}
	if st.budgetExceeded {
		attrs = append(attrs, slog.Bool("budget_exceeded", true))
	}
	attrs = appendVerdictLogAttrs(attrs, v)
	if st.traceID.IsValid() {
		attrs = append(attrs, slog.String("trace_id", st.traceID.String()))
	}
	if rid := st.reqHeaders.get("x-request-id"); rid != "" {
		attrs = append(attrs, slog.String("request_id", rid))
	}
	if st.authErr != nil {
		attrs = append(attrs, slog.String("peer_refused", st.authErr.Error()))
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
