package extproc

import (
	"context"

	"github.com/meshguard/meshguard/extproc/contract"
	"github.com/meshguard/meshguard/flowmodel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/metadata"
)

// Span attribute keys of a decision span (DESIGN.md, "Span attributes").
const (
	AttrKeyService  = attribute.Key("meshguard.service")
	AttrKeyMode     = attribute.Key("meshguard.mode")
	AttrKeyVerdict  = attribute.Key("meshguard.verdict")
	AttrKeyScore    = attribute.Key("meshguard.score")
	AttrKeyReasons  = attribute.Key("meshguard.reasons")
	AttrKeyDestAddr = attribute.Key("destination.address")
	AttrKeyDestPort = attribute.Key("destination.port")
	AttrKeyServer   = attribute.Key("server.address")
	AttrKeyMethod   = attribute.Key("http.request.method")
	AttrKeyURLPath  = attribute.Key("url.path")
	// AttrKeyBudgetExceeded is set (true) on the span of a decision cut by the decision
	// budget; its verdict is then the budget's answer, with no reason codes.
	AttrKeyBudgetExceeded = attribute.Key("meshguard.budget_exceeded")
	// AttrKeyUndecodable is set on the span of a 403 sent because a message could not be
	// decoded; its value says why ("over max-message-bytes", "not valid protobuf").
	AttrKeyUndecodable = attribute.Key("meshguard.undecodable")
)

// SpanName is the name of decision spans.
const SpanName = "meshguard.decision"

var traceContext = propagation.TraceContext{}

// mdCarrier reads W3C trace context from gRPC metadata.
type mdCarrier metadata.MD

func (c mdCarrier) Get(k string) string {
	if v := metadata.MD(c).Get(k); len(v) > 0 {
		return v[0]
	}
	return ""
}
func (c mdCarrier) Set(k, v string) { metadata.MD(c).Set(k, v) }
func (c mdCarrier) Keys() []string {
	out := make([]string, 0, len(c))
	for k := range c {
		out = append(out, k)
	}
	return out
}

// headerCarrier reads W3C trace context from the request's headers.
type headerCarrier headers

func (c headerCarrier) Get(k string) string { return headers(c).get(k) }
func (c headerCarrier) Set(string, string)  {}
func (c headerCarrier) Keys() []string {
	out := make([]string, 0, len(c))
	for _, h := range c {
		out = append(out, h.GetKey())
	}
	return out
}

// parentContext returns ctx with the remote parent of the decision: the traceparent in the
// stream's gRPC metadata, else the request's traceparent header.
func parentContext(ctx context.Context, md metadata.MD, h headers) context.Context {
	if len(md.Get(contract.TraceparentKey)) > 0 {
		if pc := traceContext.Extract(ctx, mdCarrier(md)); trace.SpanContextFromContext(pc).IsValid() {
			return pc
		}
	}
	return traceContext.Extract(ctx, headerCarrier(h))
}

func (s *Server) startSpan(st *stream) {
	pctx := parentContext(st.ctx, st.md, st.reqHeaders)
	v, f := st.verdict, &st.flow
	attrs := make([]attribute.KeyValue, 0, 11)
	attrs = append(attrs,
		AttrKeyService.String(f.Service),
		AttrKeyMode.String(modeName(v.Mode)),
		AttrKeyVerdict.String(v.Action.String()),
		AttrKeyScore.Float64(v.Score),
		AttrKeyReasons.StringSlice(v.Reasons.Strings()),
	)
	if d := f.Destination; d.IP.IsValid() {
		attrs = append(attrs, AttrKeyDestAddr.String(d.IP.String()))
	}
	if d := f.Destination; d.Port != 0 {
		attrs = append(attrs, AttrKeyDestPort.Int(int(d.Port)))
	}
	if d := f.Destination; d.Host != "" {
		attrs = append(attrs, AttrKeyServer.String(d.Host))
	}
	if f.Method != "" {
		attrs = append(attrs, AttrKeyMethod.String(f.Method))
	}
	if f.Path != "" {
		attrs = append(attrs, AttrKeyURLPath.String(urlPath(f.Path)))
	}
	if st.budgetExceeded {
		attrs = append(attrs, AttrKeyBudgetExceeded.Bool(true))
	}
	attrs = appendVerdictAttrs(attrs, v)
	_, span := s.tracer.Start(pctx, SpanName,
		trace.WithSpanKind(trace.SpanKindInternal),
		trace.WithTimestamp(st.received),
		trace.WithAttributes(attrs...))
	st.span = span
	if sc := span.SpanContext(); sc.IsValid() {
		st.traceID = sc.TraceID()
	} else {
		st.traceID = trace.SpanContextFromContext(pctx).TraceID()
	}
}

// DecisionSampler samples every decision span whose verdict is alert or block and leaves the
// others to fallback. With fallback nil, an allowed decision follows its parent's sampled
// flag and is not sampled without a parent.
func DecisionSampler(fallback sdktrace.Sampler) sdktrace.Sampler {
	if fallback == nil {
		fallback = sdktrace.ParentBased(sdktrace.NeverSample())
	}
	return decisionSampler{fallback: fallback}
}

type decisionSampler struct{ fallback sdktrace.Sampler }

func (d decisionSampler) ShouldSample(p sdktrace.SamplingParameters) sdktrace.SamplingResult {
	for _, kv := range p.Attributes {
		if kv.Key != AttrKeyVerdict {
			continue
		}
		if v := kv.Value.AsString(); v == flowmodel.Alert.String() || v == flowmodel.Block.String() {
			return sdktrace.SamplingResult{
				Decision:   sdktrace.RecordAndSample,
				Tracestate: trace.SpanContextFromContext(p.ParentContext).TraceState(),
			}
		}
		break
	}
	return d.fallback.ShouldSample(p)
}

func (d decisionSampler) Description() string {
	return "MeshguardDecisionSampler{alert,block:AlwaysOn;else:" + d.fallback.Description() + "}"
}
