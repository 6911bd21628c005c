// Package flowmodel learns, for every service, where the service sends traffic, and decides
// whether a new flow is expected. It owns Flow (what one request looks like to the model),
// Verdict (what the model concludes), the per-service baselines and modes, and the Store
// interface through which baselines persist.
//
// The package knows nothing of Envoy, gRPC or OpenTelemetry: callers translate their inputs
// to a Flow and act on the Verdict. The model runs on event time (Flow.Time), kept within a
// sane window of the server clock (Config.Now): a time more than Config.MaxClockSkew ahead of
// it, or before the Unix epoch, is replaced by it, and probation and the end of learning
// never run ahead of it nor faster than it (unless Config.EventClock trusts event time, as a
// replay does). A replay of the same events with the same clock gives the same verdicts.
//
// What a workload sends is bounded before it reaches a baseline: shapes are cut to
// Config.ShapeLimits (flagged oversized_shape), a service keeps at most MaxDestinations
// destinations and MaxShapesPerService shapes, and at most MaxServices services are tracked.
package flowmodel

import (
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Destination is where a flow goes. A flow whose destination has no IP and no host, or only
// a host the model's Resolver has no fresh answer for, has no destination the model can
// check (unknown_destination).
type Destination struct {
	// IP is the address the service dialled (in a sidecar, the original destination).
	// The zero value means unknown. IPv4-mapped IPv6 addresses are normalised to IPv4 by
	// NormalizeIP.
	IP netip.Addr
	// Port is the destination port; 0 means unknown.
	Port uint16
	// Host is the lower-case host name (from :authority or TLS SNI), without port; "" when
	// unknown. A host that is an IP literal is carried in IP instead.
	Host string
}

// Valid reports whether the destination names an IP or a host.
func (d Destination) Valid() bool { return d.IP.IsValid() || d.Host != "" }

// String returns "host:port", "ip:port" or "[ipv6]:port" (the host wins when both are set).
func (d Destination) String() string {
	if d.Host != "" {
		return joinHostPort(d.Host, d.Port)
	}
	if d.IP.IsValid() {
		return netip.AddrPortFrom(d.IP, d.Port).String()
	}
	return ""
}

func joinHostPort(host string, port uint16) string {
	return host + ":" + strconv.FormatUint(uint64(port), 10)
}

// Flow is one request of one service, as the model sees it. The model never retains a Flow
// or its slices; callers may reuse them after Decide or Observe returns.
type Flow struct {
	// Time is the event time of the request. Decide, Observe and Learn replace a time outside
	// the sane window by the server clock (see Config.Now), in place.
	Time time.Time
	// Service is the identity of the calling workload, e.g. "shop/checkout".
	Service     string
	Destination Destination
	// Upstream is the address Envoy actually connected to (known at response time, e.g. in
	// an egress gateway). It is learned, never used to block.
	Upstream netip.AddrPort

	Method string
	// Path is the request path as sent, query included.
	Path string
	// HeaderKeys are the lower-case request header names, pseudo-headers excluded.
	HeaderKeys  []string
	ContentType string
	// RequestBytes and ResponseBytes are body sizes; -1 when unknown.
	RequestBytes  int64
	ResponseBytes int64
	// Status is the HTTP response status, 0 when unknown.
	Status int
	// Source names where the flow came from ("ext_proc", "replay", "pcap", ...); it is
	// recorded as the provenance of what the flow teaches.
	Source string
	// Body is the start of the request body, when the caller has it (Envoy's BUFFERED body,
	// at most Config.Params.Limits.MaxBodyBytes); BodyTruncated is set when the body went
	// on beyond it. Parameter values are read from Path's query and from Body.
	Body          string
	BodyTruncated bool
	// TraceID is the W3C trace id of the request, zero when unknown; alert episodes keep
	// a few as examples.
	TraceID [16]byte
}

// NormalizeIP returns a with IPv4-mapped IPv6 unmapped and any zone removed.
func NormalizeIP(a netip.Addr) netip.Addr {
	return a.Unmap().WithZone("")
}

// NormalizeHost lower-cases a host name and strips a trailing dot. It returns "" for an
// empty name.
func NormalizeHost(h string) string {
	h = strings.TrimSuffix(h, ".")
	for i := 0; i < len(h); i++ {
		if c := h[i]; 'A' <= c && c <= 'Z' {
			return strings.ToLower(h)
		}
	}
	return h
}

// ParseDestination parses "host:port", "ip:port", "[ipv6]:port", a bare IP or a bare host
// (port 0) into a Destination.
func ParseDestination(s string) (Destination, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return Destination{}, errEmptyDestination
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return Destination{IP: NormalizeIP(ap.Addr()), Port: ap.Port()}, nil
	}
	if a, err := netip.ParseAddr(strings.Trim(s, "[]")); err == nil {
		return Destination{IP: NormalizeIP(a)}, nil
	}
	host, port := s, uint16(0)
	if i := strings.LastIndexByte(s, ':'); i >= 0 {
		p, err := strconv.ParseUint(s[i+1:], 10, 16)
		if err != nil {
			return Destination{}, &destinationError{s: s, why: "bad port"}
		}
		host, port = s[:i], uint16(p)
	}
	host = NormalizeHost(host)
	if !validHostName(host) {
		return Destination{}, &destinationError{s: s, why: "bad host name"}
	}
	return Destination{Host: host, Port: port}, nil
}

// validHostName accepts DNS names (letters, digits, '-', '_', '.', '*' for wildcards).
func validHostName(h string) bool {
	if h == "" || len(h) > 253 {
		return false
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		switch {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '.', c == '_', c == '*':
		default:
			return false
		}
	}
	return true
}
