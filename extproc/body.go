package extproc

import (
	"encoding/hex"

	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/meshguard/meshguard/flowmodel"
	"google.golang.org/grpc/metadata"
)

// Request bodies and parameter values.
//
// A request is decided once, at one message. Without a body to wait for, that is the first
// message, as always: request headers (or the response headers when Envoy skips the request
// phases). A request whose body Envoy sends BUFFERED or BUFFERED_PARTIAL (its protocol_config
// says so on the first message, and the request headers do not end the stream) is decided at
// its request body message instead: the headers are answered with CONTINUE at once, the body
// message is held for the verdict, and a block is the same ImmediateResponse 403 there. In
// those modes Envoy holds the request's headers as well as its body until the body is
// answered, so nothing reaches the upstream before the verdict: the destination checks lose
// nothing by waiting, and the decider sees the body's parameter values (flowmodel's
// parameter_value).
//
// The decider gets at most Config.MaxBodyBytes of the body; a longer body, or a partial one
// (BUFFERED_PARTIAL past Envoy's buffer, end_of_stream false), is marked truncated, which the
// parameter models score as an overflow: a payload cannot hide past the cap unnoticed. Should
// request trailers or the response headers come before any body message, the request is
// decided there, without a body.
//
// Bodies sent STREAMED or FULL_DUPLEX_STREAMED, or by an Envoy that sends no protocol_config
// (before 1.31), are not inspected: the request is decided at its headers, its query still
// judged. install/ documents the request_body_mode setting and its cost.

// bodyState is what a stream keeps of its request body until the decision.
type bodyState struct {
	awaiting  bool // the decision waits for the request body message
	seen      bool // the body message arrived
	body      string
	length    int // bytes in the body message (before the cap)
	truncated bool
}

// awaitBody reports whether the decision of st waits for a later message than req. Called for
// every message of an undecided stream, it also keeps the body of a request body message.
func (s *Server) awaitBody(st *stream, req *extprocv3.ProcessingRequest) bool {
	if s.cfg.MaxBodyBytes < 0 {
		return false
	}
	switch r := req.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		if r.RequestHeaders.GetEndOfStream() || st.body.awaiting {
			// A second request_headers while the body is awaited is decided at once: no
			// message may postpone the decision twice.
			return false
		}
		switch st.reqBodyMode {
		case extprocfilterv3.ProcessingMode_BUFFERED, extprocfilterv3.ProcessingMode_BUFFERED_PARTIAL:
			st.body.awaiting = true
			return true
		}
	case *extprocv3.ProcessingRequest_RequestBody:
		if st.body.awaiting {
			b := r.RequestBody
			st.body.take(b.GetBody(), b.GetEndOfStream(), s.cfg.MaxBodyBytes)
		}
	}
	return false
}

// take keeps at most limit bytes of body.
func (b *bodyState) take(body []byte, end bool, limit int) {
	b.seen = true
	b.length = len(body)
	b.truncated = !end || len(body) > limit
	b.body = string(body[:min(len(body), limit)])
}

// bodyFacts puts what the stream knows beyond the headers into the flow being decided: the
// body, and the trace id of the request.
func (s *Server) bodyFacts(st *stream, f *flowmodel.Flow) {
	f.TraceID = traceIDOf(st.md, st.reqHeaders)
	if !st.body.seen {
		return
	}
	f.Body, f.BodyTruncated = st.body.body, st.body.truncated
	if f.RequestBytes < 0 && !st.body.truncated {
		f.RequestBytes = int64(st.body.length) // no content-length (chunked): the body says
	}
}

// traceIDOf returns the trace id of the W3C traceparent in the stream's metadata, else in
// the request headers (as parentContext reads them); zero when there is none. It does not
// allocate.
func traceIDOf(md metadata.MD, h headers) [16]byte {
	if v := md.Get("traceparent"); len(v) > 0 {
		if id, ok := parseTraceparent(v[0]); ok {
			return id
		}
	}
	id, _ := parseTraceparent(h.get("traceparent"))
	return id
}

// parseTraceparent reads the trace id of "vv-<32 hex>-<16 hex>-ff"; the all-zero id is
// invalid.
func parseTraceparent(v string) (id [16]byte, ok bool) {
	if len(v) < 55 || v[2] != '-' || v[35] != '-' {
		return id, false
	}
	if _, err := hex.Decode(id[:], []byte(v[3:35])); err != nil {
		return [16]byte{}, false
	}
	return id, id != [16]byte{}
}
