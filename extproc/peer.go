package extproc

import (
	"context"

	"github.com/meshguard/meshguard/flowmodel"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Binding a stream's identity to its client.
//
// Whoever opens an ext_proc stream says who it speaks for: the x-meshguard-service gRPC
// metadata, the node attributes, the downstream peer's certificate (as the proxy saw it) or
// the downstream address. Any process that reaches the ext_proc port can open a stream, so
// those claims are only as good as the connection's proof of who sent them. With
// Config.AuthorizePeer set (cmd/meshguard sets it when ext_proc has mutual TLS, with the
// rules of controlplane/nodeauth that xDS and the access-log service apply), the stream's
// identity is checked against its client once, when it is established; a refusal is an
// identity mismatch that is blocked in every mode (alerted in observability mode, where
// nothing can be blocked) and never learned: it fails closed.
//
// Without an authorizer every claim is believed: that trusts every process that can reach
// the ext_proc listener, which is why the layouts keep it on a unix socket only meshguard and
// Envoy mount, on loopback, or behind a NetworkPolicy admitting only the proxies.

// Identity is who a stream's requests are attributed to, and where that came from, as given
// to Config.AuthorizePeer.
type Identity struct {
	// Service is the calling service ("NS/WORKLOAD", "NS/SA" from a SPIFFE ID, or an IP
	// with IdentitySourceAddress).
	Service string
	// Source is the identity source that named Service. With IdentityMetadata and
	// IdentityNode the stream's client speaks for itself (a sidecar); with IdentityPeerSAN
	// and IdentitySourceAddress it vouches for the downstream connection it saw (a gateway).
	Source IdentitySource
}

// AuthorizePeerFunc decides whether the client of a stream (its context carries the
// connection's peer, google.golang.org/grpc/peer) may speak for id. A non-nil error refuses.
// It is called once per stream and identity, on the stream's goroutine, before the decision:
// it must be fast and must not block on I/O.
type AuthorizePeerFunc func(ctx context.Context, id Identity) error

// peerRefused reports whether the stream's client may not speak for id (service and
// source), asking Config.AuthorizePeer once per stream and identity. A nil authorizer
// refuses nothing.
func (s *Server) peerRefused(st *stream, service string, source IdentitySource) bool {
	if s.cfg.AuthorizePeer == nil || service == "" {
		return false
	}
	if st.authChecked && st.authService == service && st.authSource == source {
		return st.authErr != nil
	}
	st.authChecked, st.authService, st.authSource = true, service, source
	st.authErr = s.cfg.AuthorizePeer(st.ctx, Identity{Service: service, Source: source})
	return st.authErr != nil
}

// refusedVerdict is the verdict of a stream whose client may not speak for its service:
// identity_mismatch, blocked whatever the service's mode.
func (s *Server) refusedVerdict(service string) flowmodel.Verdict {
	v := flowmodel.Verdict{Action: flowmodel.Block, Score: 1, Reasons: flowmodel.Reasons(0).With(flowmodel.ReasonIdentityMismatch)}
	v.Mode, _ = s.decider.Mode(service)
	return v
}

// The MaxStreams slot. It bounds the decisions in progress, not the requests: a stream takes
// one when its first message comes (before that, FirstMessageTimeout and
// MaxStreamsPerConnection bound it) and gives it back as soon as a message is answered with
// no decision pending. A stream then waiting for its response holds no slot and only small
// state (see wait), so that streams of allowed requests kept open for a long time (a slow
// upstream, or a workload holding its responses back on purpose) cannot starve the decisions
// of other services. The next decision on the stream (a later request_headers, or a decision
// that was put off until a later message) takes a slot again, or ends the stream with
// RESOURCE_EXHAUSTED as a new stream would. A stream whose decision overran the budget keeps
// its slot until its end: its decider is stuck.

// admitDecision takes a slot for the decision about to be made on st, unless it holds one.
func (s *Server) admitDecision(st *stream) error {
	if st.slot {
		return nil
	}
	if !s.admit() {
		s.metrics.streamRejected()
		return status.Errorf(codes.ResourceExhausted,
			"meshguard: %d ext_proc decisions in progress, the limit; retry on another meshguard", s.cfg.MaxStreams)
	}
	st.slot = true
	return nil
}

// afterAnswer runs once a message of st is answered (or, in observability mode, handled): no
// decision is in progress, so the slot goes back, and a decided stream drops what the
// decision needed and the rest of the stream does not.
func (s *Server) afterAnswer(st *stream) {
	if st.budgetExceeded {
		return
	}
	if st.slot {
		st.slot = false
		s.release()
	}
	if st.decided {
		st.wait()
	}
}

// wait drops a decided stream's request state: what the response phase needs is the flow's
// identity, destination, time and sizes, and the attributes of the messages still to come.
// What a waiting stream holds is thus a fixed-size struct plus strings bounded by the
// identity and destination limits, however large its request was.
func (st *stream) wait() {
	st.reqHeaders = nil
	st.current = nil
	st.attrs = attrs{}
	st.decideFlow = flowmodel.Flow{}
	st.flow.Path, st.flow.HeaderKeys, st.flow.Method, st.flow.ContentType = "", nil, "", ""
	st.body, st.flow.Body = bodyState{}, "" // a judged body: up to max-body-bytes each
}
