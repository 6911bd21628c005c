// Package accesslog receives Envoy's gRPC access logs (envoy.service.accesslog.v3
// AccessLogService) and turns every HTTP and TCP entry into a flowmodel.Flow, so that the
// destinations and byte counts of TCP and TLS connections, which never reach ext_proc, are
// learned too.
//
// Which service an entry belongs to follows DESIGN.md's identity list: the
// x-meshguard-service gRPC metadata of the stream; else the node of the stream's first
// message (NAMESPACE/WORKLOAD_NAME metadata, else an Istio node id), unless that node is a
// gateway; else, per entry, the SPIFFE URI SAN of the downstream peer certificate (NS/SA);
// else the downstream IP.
//
// # Who may log for whom
//
// With Config.Authenticator in mutual-TLS mode, the stream's client certificate must back the
// node of its first message and its x-meshguard-service (see package nodeauth): a stream
// claiming another identity ends with PermissionDenied before any entry is read, and every
// entry of a sidecar's stream belongs to the sidecar's own service, whatever the entries say
// (later identifiers are ignored). Only an authenticated gateway's entries name their
// services one by one.
//
// # Time
//
// Entry start times come from the client. A time more than Config.MaxClockSkew ahead of the
// server's clock, or before the Unix epoch, is replaced by the server's clock and counted
// (Stats.Clamped), so that no entry can date a flow into the future (through probation, or
// past what the store can encode).
//
// TCP entries are decided (Learner.Decide: learned in learn mode, judged otherwise), since
// ext_proc never saw them; HTTP entries are only observed (Learner.Observe: the upstream
// address), since ext_proc already decided them, unless Config.DecideHTTP is set.
package accesslog

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	datav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/meshguard/meshguard/controlplane/nodeauth"
	"github.com/meshguard/meshguard/extproc/nodeid"
	"github.com/meshguard/meshguard/flowmodel"
)

// ServiceMetadataKey is the gRPC metadata key that names the service of a whole stream.
const ServiceMetadataKey = nodeid.ServiceMetadataKey

// FlowSource is the Source of every flow this package makes.
const FlowSource = "access_log"

// Learner receives the flows. *flowmodel.Model satisfies it. Both methods must be safe for
// concurrent use (one goroutine per stream) and must not retain the Flow.
type Learner interface {
	Decide(*flowmodel.Flow) flowmodel.Verdict
	Observe(*flowmodel.Flow)
}

// Kind is the kind of an access-log entry.
type Kind uint8

const (
	KindHTTP Kind = iota + 1
	KindTCP
)

func (k Kind) String() string {
	switch k {
	case KindHTTP:
		return "http"
	case KindTCP:
		return "tcp"
	}
	return "unknown"
}

// Record is one entry as the receiver handled it, for metrics, logs or spans.
type Record struct {
	Kind Kind
	// Flow is what the learner received; valid only during the OnRecord call.
	Flow *flowmodel.Flow
	// Decided says whether the flow went to Decide (then Verdict is its result) or Observe.
	Decided bool
	Verdict flowmodel.Verdict
	// Duration is the connection's or request's duration; 0 when unknown.
	Duration time.Duration
	// ResponseFlags are Envoy's short response flags ("UF", "UAEX", "DC", ...).
	ResponseFlags []string
	// TerminationDetails is Envoy's connection termination details, e.g.
	// "rbac_access_denied_matched_policy[none]" for a connection the RBAC refused.
	TerminationDetails string
}

// Config tunes a Receiver.
type Config struct {
	// DecideHTTP sends HTTP entries to Decide rather than Observe. Use it only where no
	// ext_proc filter decides the HTTP requests, or they would count twice.
	DecideHTTP bool
	// OnRecord, if set, is called for every flow, on the stream's goroutine: it must not
	// block.
	OnRecord func(Record)
	// Authenticator, when set, authenticates each stream's connection and authorises the
	// node it names (see the package doc). nil believes every stream.
	Authenticator *nodeauth.Authenticator
	// MaxClockSkew is how far ahead of the server's clock an entry's start time may be
	// before it is clamped. Default DefaultMaxClockSkew.
	MaxClockSkew time.Duration
	// Now is the server's clock. Default time.Now.
	Now func() time.Time
}

// DefaultMaxClockSkew is the default Config.MaxClockSkew.
const DefaultMaxClockSkew = 5 * time.Minute

// Clamp reasons: why an entry's time was replaced by the server's clock.
const (
	ClampFuture      = "future"
	ClampBeforeEpoch = "before_epoch"
)

// Drop reasons: why an entry taught nothing.
const (
	DropNoService     = "no_service"
	DropNoDestination = "no_destination"
	// DropIntermediate: an intermediate entry of a long connection (periodic flush); the final
	// entry is used, so that a connection counts once.
	DropIntermediate = "intermediate"
)

// Stats are the receiver's counters; they only grow.
type Stats struct {
	Streams uint64
	Entries map[Kind]uint64
	Flows   uint64
	Dropped map[string]uint64
	// Clamped counts entry times replaced by the server's clock, by reason (ClampFuture,
	// ClampBeforeEpoch); those entries are still learned.
	Clamped map[string]uint64
	// Refused counts streams ended because their client could not speak as the node it
	// named, or lacked the TLS the server requires.
	Refused uint64
}

// Receiver is an AccessLogService server. It is safe for concurrent use.
type Receiver struct {
	alsv3.UnimplementedAccessLogServiceServer

	learner Learner
	cfg     Config
	log     *slog.Logger

	streams, flows, httpEntries, tcpEntries, refused atomic.Uint64
	mu                                               sync.Mutex
	dropped, clamped                                 map[string]uint64
}

// NewReceiver returns a receiver that feeds l. log may be nil.
func NewReceiver(l Learner, cfg Config, log *slog.Logger) (*Receiver, error) {
	if l == nil {
		return nil, errors.New("access log receiver: nil learner")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxClockSkew < 0 {
		return nil, fmt.Errorf("access log receiver: negative max clock skew %s", cfg.MaxClockSkew)
	}
	if cfg.MaxClockSkew == 0 {
		cfg.MaxClockSkew = DefaultMaxClockSkew
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Receiver{learner: l, cfg: cfg, log: log, dropped: map[string]uint64{}, clamped: map[string]uint64{}}, nil
}

// Register registers the AccessLogService on s.
func (r *Receiver) Register(s *grpc.Server) { alsv3.RegisterAccessLogServiceServer(s, r) }

// Stats returns the receiver's counters.
func (r *Receiver) Stats() Stats {
	r.mu.Lock()
	dropped, clamped := maps.Clone(r.dropped), maps.Clone(r.clamped)
	r.mu.Unlock()
	return Stats{
		Streams: r.streams.Load(),
		Entries: map[Kind]uint64{KindHTTP: r.httpEntries.Load(), KindTCP: r.tcpEntries.Load()},
		Flows:   r.flows.Load(),
		Dropped: dropped,
		Clamped: clamped,
		Refused: r.refused.Load(),
	}
}

func (r *Receiver) drop(reason string) {
	r.mu.Lock()
	r.dropped[reason]++
	r.mu.Unlock()
}

// clampTime replaces an entry time outside [Unix epoch, now+MaxClockSkew] by now.
func (r *Receiver) clampTime(f *flowmodel.Flow) {
	now := r.cfg.Now()
	var reason string
	switch {
	case f.Time.After(now.Add(r.cfg.MaxClockSkew)):
		reason = ClampFuture
	case f.Time.Before(time.Unix(0, 0)):
		reason = ClampBeforeEpoch
	default:
		return
	}
	r.mu.Lock()
	r.clamped[reason]++
	r.mu.Unlock()
	if r.log.Enabled(context.Background(), slog.LevelDebug) {
		r.log.Debug("access log: entry time clamped to the server clock", "service", f.Service, "time", f.Time, "reason", reason)
	}
	f.Time = now
}

// refuse counts and logs a refused stream and returns err.
func (r *Receiver) refuse(err error, node *corev3.Node, p nodeauth.Peer) error {
	r.refused.Add(1)
	r.log.Warn("access log stream refused", "node", node.GetId(), "peer", p.SPIFFEID, "error", err)
	return err
}

// StreamAccessLogs implements alsv3.AccessLogServiceServer.
func (r *Receiver) StreamAccessLogs(stream alsv3.AccessLogService_StreamAccessLogsServer) error {
	r.streams.Add(1)
	auth := r.cfg.Authenticator
	p, err := auth.Peer(stream.Context())
	if err != nil {
		return r.refuse(err, nil, p)
	}
	var claimed string
	if md, ok := metadata.FromIncomingContext(stream.Context()); ok {
		if v := md.Get(ServiceMetadataKey); len(v) > 0 {
			claimed = strings.TrimSpace(v[0])
		}
	}
	src := Source{Service: claimed}
	first := true
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return stream.SendAndClose(&alsv3.StreamAccessLogsResponse{})
		}
		if err != nil {
			return fmt.Errorf("access log stream: %w", err)
		}
		if first {
			first = false
			node := msg.GetIdentifier().GetNode()
			if auth.Mutual() {
				id, err := auth.Authorize(p, node, claimed)
				if err != nil {
					return r.refuse(err, node, p)
				}
				src = Source{Service: cmp.Or(claimed, id.Service), Gateway: claimed == "" && id.Role == nodeid.RoleGateway}
			} else if src.Service == "" {
				src = StreamSource(node)
			}
			r.log.Debug("access log stream", "node", node.GetId(), "service", src.Service, "gateway", src.Gateway, "peer", p.SPIFFEID)
		}
		switch logs := msg.GetLogEntries().(type) {
		case *alsv3.StreamAccessLogsMessage_HttpLogs:
			for _, e := range logs.HttpLogs.GetLogEntry() {
				r.httpEntries.Add(1)
				f, rec, reason := HTTPFlow(src, e)
				r.handle(&f, rec, reason, r.cfg.DecideHTTP)
			}
		case *alsv3.StreamAccessLogsMessage_TcpLogs:
			for _, e := range logs.TcpLogs.GetLogEntry() {
				r.tcpEntries.Add(1)
				f, rec, reason := TCPFlow(src, e)
				r.handle(&f, rec, reason, true)
			}
		}
	}
}

func (r *Receiver) handle(f *flowmodel.Flow, rec Record, reason string, decide bool) {
	if reason != "" {
		r.drop(reason)
		return
	}
	r.clampTime(f)
	rec.Flow = f
	if decide {
		rec.Decided = true
		rec.Verdict = r.learner.Decide(f)
	} else {
		r.learner.Observe(f)
	}
	r.flows.Add(1)
	if r.cfg.OnRecord != nil {
		r.cfg.OnRecord(rec)
	}
}

// Source is who a stream's entries belong to.
type Source struct {
	// Service names every entry of the stream; "" when entries are identified one by one.
	Service string
	// Gateway is set when the stream comes from a gateway.
	Gateway bool
}

// StreamSource identifies a stream by the node of its first message.
func StreamSource(n *corev3.Node) Source {
	id := nodeid.Identify(n)
	return Source{Service: id.Service, Gateway: id.Role == nodeid.RoleGateway}
}

// entryService returns the service of one entry.
func entryService(src Source, c *datav3.AccessLogCommon) string {
	if src.Service != "" {
		return src.Service
	}
	for _, san := range c.GetTlsProperties().GetPeerCertificateProperties().GetSubjectAltName() {
		if svc, ok := nodeid.ServiceFromSPIFFE(san.GetUri()); ok {
			return svc
		}
	}
	for _, a := range []*corev3.Address{c.GetDownstreamDirectRemoteAddress(), c.GetDownstreamRemoteAddress()} {
		if ap, ok := addrPort(a); ok {
			return ap.Addr().String()
		}
	}
	return ""
}

// addrPort converts an Envoy socket address with an IP to netip.AddrPort.
func addrPort(a *corev3.Address) (netip.AddrPort, bool) {
	sa := a.GetSocketAddress()
	if sa == nil {
		return netip.AddrPort{}, false
	}
	ip, err := netip.ParseAddr(sa.GetAddress())
	if err != nil || ip.IsUnspecified() || sa.GetPortValue() > 65535 {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(flowmodel.NormalizeIP(ip), uint16(sa.GetPortValue())), true
}

// common fills what HTTP and TCP entries share: time, service, destination, upstream,
// duration, flags. The destination is the upstream Envoy connected to; a connection that
// never got one (refused by the RBAC, failed) falls back to the downstream local address,
// which the original_dst listener filter set to what the app dialled.
func common(src Source, c *datav3.AccessLogCommon, f *flowmodel.Flow, rec *Record) string {
	if c.GetIntermediateLogEntry() {
		return DropIntermediate
	}
	f.Source = FlowSource
	f.Service = entryService(src, c)
	if f.Service == "" {
		return DropNoService
	}
	if t := c.GetStartTime(); t != nil {
		f.Time = t.AsTime()
	} else {
		f.Time = time.Now()
	}
	if up, ok := addrPort(c.GetUpstreamRemoteAddress()); ok {
		f.Upstream = up
		f.Destination.IP, f.Destination.Port = up.Addr(), up.Port()
	} else if dl, ok := addrPort(c.GetDownstreamLocalAddress()); ok {
		f.Destination.IP, f.Destination.Port = dl.Addr(), dl.Port()
	}
	f.Destination.Host = flowmodel.NormalizeHost(c.GetTlsProperties().GetTlsSniHostname())
	switch {
	case c.GetDuration() != nil:
		rec.Duration = c.GetDuration().AsDuration()
	case c.GetTimeToLastDownstreamTxByte() != nil:
		rec.Duration = c.GetTimeToLastDownstreamTxByte().AsDuration()
	}
	rec.ResponseFlags = ResponseFlags(c.GetResponseFlags())
	rec.TerminationDetails = c.GetConnectionTerminationDetails()
	return ""
}

// TCPFlow converts a TCP entry. The request bytes are the bytes the client sent (out of
// the service), the response bytes those it received. reason is non-empty when the entry
// teaches nothing.
func TCPFlow(src Source, e *datav3.TCPAccessLogEntry) (f flowmodel.Flow, rec Record, reason string) {
	rec.Kind = KindTCP
	if reason = common(src, e.GetCommonProperties(), &f, &rec); reason != "" {
		return f, rec, reason
	}
	f.RequestBytes = int64(e.GetConnectionProperties().GetReceivedBytes())
	f.ResponseBytes = int64(e.GetConnectionProperties().GetSentBytes())
	if !f.Destination.Valid() {
		return f, rec, DropNoDestination
	}
	return f, rec, ""
}

// HTTPFlow converts an HTTP entry. The host comes from the authority (else the SNI).
func HTTPFlow(src Source, e *datav3.HTTPAccessLogEntry) (f flowmodel.Flow, rec Record, reason string) {
	rec.Kind = KindHTTP
	if reason = common(src, e.GetCommonProperties(), &f, &rec); reason != "" {
		return f, rec, reason
	}
	req, resp := e.GetRequest(), e.GetResponse()
	if auth := req.GetAuthority(); auth != "" {
		if d, err := flowmodel.ParseDestination(auth); err == nil && d.Host != "" {
			f.Destination.Host = d.Host
		}
	}
	if m := req.GetRequestMethod(); m != corev3.RequestMethod_METHOD_UNSPECIFIED {
		f.Method = m.String()
	}
	f.Path = req.GetPath()
	f.ContentType = req.GetRequestHeaders()["content-type"]
	f.RequestBytes = int64(req.GetRequestBodyBytes())
	f.ResponseBytes = int64(resp.GetResponseBodyBytes())
	f.Status = int(resp.GetResponseCode().GetValue())
	if !f.Destination.Valid() {
		return f, rec, DropNoDestination
	}
	return f, rec, ""
}

// ResponseFlags returns Envoy's short names of the flags set, in Envoy's order.
func ResponseFlags(rf *datav3.ResponseFlags) []string {
	if rf == nil {
		return nil
	}
	var out []string
	for _, f := range []struct {
		set  bool
		name string
	}{
		{rf.GetFailedLocalHealthcheck(), "LH"},
		{rf.GetNoHealthyUpstream(), "UH"},
		{rf.GetUpstreamRequestTimeout(), "UT"},
		{rf.GetLocalReset(), "LR"},
		{rf.GetUpstreamRemoteReset(), "UR"},
		{rf.GetUpstreamConnectionFailure(), "UF"},
		{rf.GetUpstreamConnectionTermination(), "UC"},
		{rf.GetUpstreamOverflow(), "UO"},
		{rf.GetNoRouteFound(), "NR"},
		{rf.GetDelayInjected(), "DI"},
		{rf.GetFaultInjected(), "FI"},
		{rf.GetRateLimited(), "RL"},
		{rf.GetUnauthorizedDetails() != nil, "UAEX"},
		{rf.GetRateLimitServiceError(), "RLSE"},
		{rf.GetDownstreamConnectionTermination(), "DC"},
		{rf.GetUpstreamRetryLimitExceeded(), "URX"},
		{rf.GetStreamIdleTimeout(), "SI"},
		{rf.GetInvalidEnvoyRequestHeaders(), "IH"},
		{rf.GetDownstreamProtocolError(), "DPE"},
		{rf.GetUpstreamMaxStreamDurationReached(), "UMSDR"},
		{rf.GetResponseFromCacheFilter(), "RFCF"},
		{rf.GetNoFilterConfigFound(), "NFCF"},
		{rf.GetDurationTimeout(), "DT"},
		{rf.GetUpstreamProtocolError(), "UPE"},
		{rf.GetNoClusterFound(), "NC"},
		{rf.GetOverloadManager(), "OM"},
		{rf.GetDnsResolutionFailure(), "DF"},
		{rf.GetDownstreamRemoteReset(), "DRR"},
	} {
		if f.set {
			out = append(out, f.name)
		}
	}
	return out
}
