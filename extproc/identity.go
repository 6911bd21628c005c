package extproc

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/meshguard/meshguard/extproc/nodeid"
	"github.com/meshguard/meshguard/flowmodel"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"
)

// AttributesKey is the key of ProcessingRequest.attributes under which Envoy's ext_proc
// filter puts the request and response attributes it was asked for.
const AttributesKey = "envoy.filters.http.ext_proc"

// ServiceMetadataKey is the gRPC metadata key that names the calling service outright.
const ServiceMetadataKey = nodeid.ServiceMetadataKey

// Attribute names (CEL expressions, as listed in request_attributes; Envoy keys the values by
// the expression text).
const (
	AttrNodeID          = "xds.node.id"
	AttrNodeNamespace   = "xds.node.metadata['NAMESPACE']"
	AttrNodeWorkload    = "xds.node.metadata['WORKLOAD_NAME']"
	AttrPeerURISAN      = "connection.uri_san_peer_certificate"
	AttrSourceAddress   = "source.address"
	AttrDestination     = "destination.address"
	AttrRequestedServer = "connection.requested_server_name"
	AttrUpstreamAddress = "upstream.address"
)

// RequestAttributes and ResponseAttributes are what the ext_proc filter should send.
var (
	RequestAttributes = []string{
		AttrNodeID, AttrNodeNamespace, AttrNodeWorkload, AttrDestination, AttrSourceAddress,
		AttrRequestedServer, AttrPeerURISAN,
	}
	ResponseAttributes = []string{AttrUpstreamAddress}
)

// IdentitySource is one place the calling service's identity can come from.
type IdentitySource string

// The identity sources of DESIGN.md, in their default order.
const (
	IdentityMetadata      IdentitySource = "metadata"       // gRPC metadata x-meshguard-service
	IdentityNode          IdentitySource = "node"           // NAMESPACE/WORKLOAD_NAME node metadata, else the Istio node id
	IdentityPeerSAN       IdentitySource = "peer-san"       // SPIFFE URI SAN of the downstream peer: NS/SA
	IdentitySourceAddress IdentitySource = "source-address" // the downstream IP
)

// DefaultIdentityOrder is the order of DESIGN.md.
var DefaultIdentityOrder = []IdentitySource{IdentityMetadata, IdentityNode, IdentityPeerSAN, IdentitySourceAddress}

// ParseIdentityOrder parses a comma-separated list of identity sources.
func ParseIdentityOrder(s string) ([]IdentitySource, error) {
	var out []IdentitySource
	var errs []error
	seen := map[IdentitySource]bool{}
	for _, p := range strings.Split(s, ",") {
		src := IdentitySource(strings.TrimSpace(p))
		switch src {
		case IdentityMetadata, IdentityNode, IdentityPeerSAN, IdentitySourceAddress:
			if seen[src] {
				errs = append(errs, fmt.Errorf("identity source %q listed twice", src))
			}
			seen[src] = true
			out = append(out, src)
		default:
			errs = append(errs, fmt.Errorf("unknown identity source %q (valid: metadata, node, peer-san, source-address)", src))
		}
	}
	if len(out) == 0 && len(errs) == 0 {
		errs = append(errs, errors.New("no identity source given"))
	}
	return out, errors.Join(errs...)
}

// attrs is the attribute struct of one stream, merged across messages.
type attrs struct {
	fields map[string]*structpb.Value
}

func (a *attrs) merge(m map[string]*structpb.Struct) {
	s := m[AttributesKey]
	if s == nil || len(s.Fields) == 0 {
		return
	}
	if a.fields == nil {
		a.fields = s.Fields
		return
	}
	merged := make(map[string]*structpb.Value, len(a.fields)+len(s.Fields))
	for k, v := range a.fields {
		merged[k] = v
	}
	for k, v := range s.Fields {
		merged[k] = v
	}
	a.fields = merged
}

// str returns the attribute as a string: Envoy sends strings, and numbers or booleans for
// numeric and boolean attributes.
func (a *attrs) str(name string) string {
	v := a.fields[name]
	if v == nil {
		return ""
	}
	switch k := v.Kind.(type) {
	case *structpb.Value_StringValue:
		return k.StringValue
	case *structpb.Value_NumberValue:
		return strconv.FormatFloat(k.NumberValue, 'f', -1, 64)
	case *structpb.Value_BoolValue:
		return strconv.FormatBool(k.BoolValue)
	}
	return ""
}

// nodeMeta returns xds.node.metadata['KEY'], accepting double quotes too, or a struct value
// sent for "xds.node.metadata" as a whole.
func (a *attrs) nodeMeta(key, expr string) string {
	if s := a.str(expr); s != "" {
		return s
	}
	if s := a.str(`xds.node.metadata["` + key + `"]`); s != "" {
		return s
	}
	if v := a.fields["xds.node.metadata"]; v != nil {
		if st := v.GetStructValue(); st != nil {
			return st.Fields[key].GetStringValue()
		}
	}
	return ""
}

// identify returns the calling service and the source it came from, or "" when no source in
// order yields one.
func identify(order []IdentitySource, md metadata.MD, a *attrs) (string, IdentitySource) {
	for _, src := range order {
		var s string
		switch src {
		case IdentityMetadata:
			if v := md.Get(ServiceMetadataKey); len(v) > 0 {
				s = strings.TrimSpace(v[0])
			}
		case IdentityNode:
			ns, wl := a.nodeMeta("NAMESPACE", AttrNodeNamespace), a.nodeMeta("WORKLOAD_NAME", AttrNodeWorkload)
			if ns != "" && wl != "" {
				s = ns + "/" + wl
			} else if _, svc, ok := nodeid.ParseIstioID(a.str(AttrNodeID)); ok {
				s = svc
			}
		case IdentityPeerSAN:
			s, _ = nodeid.ServiceFromSPIFFE(a.str(AttrPeerURISAN))
		case IdentitySourceAddress:
			s = ipOf(a.str(AttrSourceAddress))
		}
		if s != "" && len(s) <= maxServiceName {
			return s, src
		}
	}
	return "", ""
}

// maxServiceName bounds identities taken from the stream.
const maxServiceName = 253

// ipOf returns the IP of "ip:port", "[ipv6]:port" or a bare IP, normalised; "" if none.
func ipOf(addr string) string {
	if ap, err := netip.ParseAddrPort(addr); err == nil {
		return flowmodel.NormalizeIP(ap.Addr()).String()
	}
	if a, err := netip.ParseAddr(addr); err == nil {
		return flowmodel.NormalizeIP(a).String()
	}
	return ""
}

// headers is the request or response header map of a stream.
type headers []*corev3.HeaderValue

// get returns the first value of the lower-case header name, from raw_value (current Envoy)
// or value (older Envoy).
func (h headers) get(name string) string {
	for _, hv := range h {
		if hv.GetKey() == name {
			if rv := hv.GetRawValue(); len(rv) > 0 {
				return string(rv)
			}
			return hv.GetValue()
		}
	}
	return ""
}

// contentLength returns the content-length header, when it is a valid non-negative number.
func (h headers) contentLength() (int64, bool) {
	cl := h.get("content-length")
	if cl == "" {
		return 0, false // no header: no ParseInt, whose error would allocate
	}
	n, err := strconv.ParseInt(cl, 10, 64)
	return n, err == nil && n >= 0
}

// destination builds the flow's destination from destination.address (the original
// destination in a sidecar), :authority and the TLS SNI. ok is false when neither an IP nor
// a host could be found.
func destination(a *attrs, h headers) (d flowmodel.Destination, ok bool) {
	if s := a.str(AttrDestination); s != "" {
		if ap, err := netip.ParseAddrPort(s); err == nil {
			d.IP, d.Port = flowmodel.NormalizeIP(ap.Addr()), ap.Port()
		} else if ip, err := netip.ParseAddr(s); err == nil {
			d.IP = flowmodel.NormalizeIP(ip)
		}
	}
	host, port := splitAuthority(h.get(":authority"))
	if host == "" {
		host = a.str(AttrRequestedServer)
	}
	if host != "" {
		if ip, err := netip.ParseAddr(host); err == nil {
			// An IP literal in the authority: it is the destination when nothing else says so.
			if !d.IP.IsValid() {
				d.IP = flowmodel.NormalizeIP(ip)
			}
		} else if hn := flowmodel.NormalizeHost(host); validHost(hn) {
			d.Host = hn
		}
	}
	if d.Port == 0 {
		switch {
		case port != 0:
			d.Port = port
		case h.get(":scheme") == "https":
			d.Port = 443
		case h.get(":scheme") == "http":
			d.Port = 80
		}
	}
	return d, d.Valid()
}

// splitAuthority splits "host:port", "[v6]:port", "host" or "[v6]" into host and port (0 when
// absent or bad).
func splitAuthority(s string) (string, uint16) {
	if s == "" {
		return "", 0
	}
	if s[0] == '[' {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return "", 0
		}
		host, rest := s[1:end], s[end+1:]
		if p, ok := strings.CutPrefix(rest, ":"); ok {
			n, err := strconv.ParseUint(p, 10, 16)
			if err != nil {
				return host, 0
			}
			return host, uint16(n)
		}
		return host, 0
	}
	i := strings.LastIndexByte(s, ':')
	if i < 0 || strings.Count(s, ":") > 1 {
		return s, 0 // a bare IPv6 address or a host without port
	}
	n, err := strconv.ParseUint(s[i+1:], 10, 16)
	if err != nil {
		return s[:i], 0
	}
	return s[:i], uint16(n)
}

func validHost(h string) bool {
	if h == "" || len(h) > 253 {
		return false
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		switch {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '.', c == '_':
		default:
			return false
		}
	}
	return true
}
