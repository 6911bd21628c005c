package extproc

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/meshguard/meshguard/extproc/contract"
	"github.com/meshguard/meshguard/extproc/nodeid"
	"github.com/meshguard/meshguard/flowmodel"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"
)

// The names of Envoy's contract (see package contract), kept here for extproc's callers.
const (
	// AttributesKey is the key of ProcessingRequest.attributes under which Envoy's ext_proc
	// filter puts the request and response attributes it was asked for.
	AttributesKey = contract.AttributesKey
	// ServiceMetadataKey is the gRPC metadata key that names the calling service outright.
	ServiceMetadataKey = contract.ServiceMetadataKey
)

// Attribute names (CEL expressions, as listed in request_attributes; Envoy keys the values by
// the expression text).
const (
	AttrNodeID          = contract.AttrNodeID
	AttrNodeNamespace   = contract.AttrNodeNamespace
	AttrNodeWorkload    = contract.AttrNodeWorkload
	AttrPeerURISAN      = contract.AttrPeerURISAN
	AttrSourceAddress   = contract.AttrSourceAddress
	AttrDestination     = contract.AttrDestination
	AttrRequestedServer = contract.AttrRequestedServer
	AttrUpstreamAddress = contract.AttrUpstreamAddress
)

// RequestAttributes and ResponseAttributes are what the ext_proc filter should send.
var (
	RequestAttributes  = contract.RequestAttributes()
	ResponseAttributes = contract.ResponseAttributes()
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
	if a.fields == nil {
		return ""
	}
	if s := a.str(contract.NodeMetaQuoted(key)); s != "" {
		return s
	}
	if v := a.fields[contract.AttrNodeMetadata]; v != nil {
		if st := v.GetStructValue(); st != nil {
			return st.Fields[key].GetStringValue()
		}
	}
	return ""
}

// identity is who a stream says its service is.
type identity struct {
	service string
	source  IdentitySource
	// other is set when two identity sources both named a service and disagreed: the
	// gRPC-metadata service and the node's, the one of them that service is not.
	other string
}

// identify returns the calling service and the source it came from (service "" when no
// source in order yields one). When the order lists both metadata and node and both name a
// service, they must agree; when they do not, other names the service that lost.
func identify(order []IdentitySource, md metadata.MD, a *attrs) identity {
	var id identity
	var meta, node string
	var metaDone, nodeDone, checkBoth bool
	for _, src := range order {
		var s string
		switch src {
		case IdentityMetadata:
			meta, metaDone = metadataService(md), true
			s = meta
		case IdentityNode:
			node, nodeDone = nodeService(a), true
			s = node
		case IdentityPeerSAN:
			s, _ = nodeid.ServiceFromSPIFFE(a.str(AttrPeerURISAN))
		case IdentitySourceAddress:
			s = ipOf(a.str(AttrSourceAddress))
		}
		if s != "" && len(s) <= maxServiceName {
			id.service, id.source = s, src
			checkBoth = src == IdentityMetadata || src == IdentityNode
			break
		}
	}
	if !checkBoth || !slices.Contains(order, IdentityMetadata) || !slices.Contains(order, IdentityNode) {
		return id
	}
	if !metaDone {
		meta = metadataService(md)
	}
	if !nodeDone {
		node = nodeService(a)
	}
	if meta != "" && node != "" && meta != node {
		id.other = meta
		if id.service == meta {
			id.other = node
		}
	}
	return id
}

// metadataService is the service named by the stream's x-meshguard-service metadata; ""
// when absent or when it is sent more than once with different values.
func metadataService(md metadata.MD) string {
	v := md.Get(ServiceMetadataKey)
	if len(v) == 0 {
		return ""
	}
	s := strings.TrimSpace(v[0])
	for _, o := range v[1:] {
		if strings.TrimSpace(o) != s {
			return invalidIdentity
		}
	}
	return s
}

// invalidIdentity stands for an identity source that said two different things. It is a
// service name no source can produce (identities never contain a space), so it matches
// nothing, and it is too long to be taken as an identity (see maxServiceName).
var invalidIdentity = strings.Repeat(" ", maxServiceName+1)

// nodeService is the service named by the node: NAMESPACE/WORKLOAD_NAME node metadata, else
// the Istio node id.
func nodeService(a *attrs) string {
	ns, wl := a.nodeMeta(contract.NodeMetaNamespace, AttrNodeNamespace), a.nodeMeta(contract.NodeMetaWorkloadName, AttrNodeWorkload)
	if ns != "" && wl != "" {
		return ns + "/" + wl
	}
	if _, svc, ok := nodeid.ParseIstioID(a.str(AttrNodeID)); ok {
		return svc
	}
	return ""
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
			return headerValue(hv)
		}
	}
	return ""
}

func headerValue(hv *corev3.HeaderValue) string {
	if rv := hv.GetRawValue(); len(rv) > 0 {
		return string(rv)
	}
	return hv.GetValue()
}

// contentLength returns the content-length header, when it is a valid non-negative number.
func (h headers) contentLength() (int64, bool) {
	return parseContentLength(h.get("content-length"))
}

func parseContentLength(cl string) (int64, bool) {
	if cl == "" {
		return 0, false // no header: no ParseInt, whose error would allocate
	}
	n, err := strconv.ParseInt(cl, 10, 64)
	return n, err == nil && n >= 0
}

// requestHead is what one pass over the request headers finds: the pseudo-headers and the
// headers that name the destination, with how often each came, and the other header names.
type requestHead struct {
	method, path, authority, host, scheme string
	contentType, contentLength            string
	nMethod, nPath, nAuthority, nHost     int
	nScheme                               int
}

// scan reads h into r and appends the names of the regular headers to keys.
func (r *requestHead) scan(h headers, keys []string) []string {
	for _, hv := range h {
		k := hv.GetKey()
		if k == "" {
			continue
		}
		if k[0] != ':' {
			keys = append(keys, k)
		}
		switch k {
		case ":method":
			r.nMethod++
			r.method = headerValue(hv)
		case ":path":
			r.nPath++
			r.path = headerValue(hv)
		case ":authority":
			r.nAuthority++
			r.authority = headerValue(hv)
		case ":scheme":
			r.nScheme++
			r.scheme = headerValue(hv)
		case "host":
			r.nHost++
			r.host = headerValue(hv)
		case "content-type":
			if r.contentType == "" {
				r.contentType = headerValue(hv)
			}
		case "content-length":
			if r.contentLength == "" {
				r.contentLength = headerValue(hv)
			}
		}
	}
	return keys
}

// wellFormed reports whether the pseudo-headers describe one HTTP request, as Envoy's codecs
// would pass it: exactly one :method, at most one :path and :scheme, and a :path in origin
// form ("/...") except for CONNECT (a tunnel: no path, or any) and "OPTIONS *".
func (r *requestHead) wellFormed() bool {
	if r.nMethod != 1 || r.method == "" || r.nPath > 1 || r.nScheme > 1 {
		return false
	}
	if r.method == "CONNECT" {
		return true
	}
	if r.nPath == 0 {
		return false
	}
	return strings.HasPrefix(r.path, "/") || (r.path == "*" && r.method == "OPTIONS")
}

// destFault says why a request's destination could not be established.
type destFault uint8

const (
	destOK           destFault = iota
	destMissing                // neither an address nor a host
	destBadAddress             // destination.address is present but not an IP (and port)
	destBadAuthority           // :authority (or host, or the SNI) is not a valid host[:port]
	destAmbiguous              // several :authority or host headers, or the two disagree
)

// destination builds the flow's destination from destination.address (the original
// destination in a sidecar), :authority (or host) and the TLS SNI, and says what was wrong
// when it could not. Any destination input that is present but malformed or ambiguous is a
// fault, even when another input would do: a request must not be judged by the part of what
// it says that suits it.
func destination(a *attrs, r *requestHead) (d flowmodel.Destination, fault destFault) {
	if s := a.str(AttrDestination); s != "" {
		if ap, err := netip.ParseAddrPort(s); err == nil && ap.Addr().Zone() == "" {
			d.IP, d.Port = flowmodel.NormalizeIP(ap.Addr()), ap.Port()
		} else if ip, err := netip.ParseAddr(s); err == nil && ip.Zone() == "" {
			d.IP = flowmodel.NormalizeIP(ip)
		} else {
			return d, destBadAddress
		}
	}
	if r.nAuthority > 1 || r.nHost > 1 {
		return d, destAmbiguous
	}
	auth := r.authority
	if r.nAuthority == 0 {
		auth = r.host
	}
	var host string
	var ip netip.Addr
	var port uint16
	if auth != "" {
		var ok bool
		if host, ip, port, ok = parseAuthority(auth); !ok {
			return d, destBadAuthority
		}
		if r.nAuthority == 1 && r.nHost == 1 {
			h2, ip2, port2, ok := parseAuthority(r.host)
			if !ok || h2 != host || ip2 != ip || (port != 0 && port2 != 0 && port != port2) {
				return d, destAmbiguous
			}
		}
	} else if r.nAuthority+r.nHost > 0 {
		return d, destBadAuthority // an empty :authority or host
	} else if sni := a.str(AttrRequestedServer); sni != "" {
		var ok bool
		if host, ok = parseHostName(sni); !ok {
			return d, destBadAuthority
		}
	}
	switch {
	case ip.IsValid():
		// An IP literal in the authority: it is the destination when nothing else says so,
		// and it must be the one the request goes to when destination.address says so.
		if !d.IP.IsValid() {
			d.IP = ip
		} else if d.IP != ip {
			return d, destAmbiguous
		}
	case host != "":
		d.Host = host
	}
	if d.Port == 0 {
		switch {
		case port != 0:
			d.Port = port
		case r.scheme == "https":
			d.Port = 443
		case r.scheme == "http":
			d.Port = 80
		}
	}
	if !d.Valid() {
		return d, destMissing
	}
	return d, destOK
}

// parseAuthority parses an HTTP authority, "host", "host:port", "ipv4[:port]" or
// "[ipv6][:port]", strictly: no userinfo, no empty or zero port, no zone, a host name
// made of valid DNS labels. The host is normalised (lower case, no trailing dot) and an
// IPv4-mapped IPv6 address is IPv4.
func parseAuthority(s string) (host string, ip netip.Addr, port uint16, ok bool) {
	if s == "" {
		return "", ip, 0, false
	}
	var portText string
	hasPort := false
	if s[0] == '[' {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return "", ip, 0, false
		}
		a, err := netip.ParseAddr(s[1:end])
		if err != nil || !a.Is6() || a.Zone() != "" {
			return "", ip, 0, false
		}
		ip = flowmodel.NormalizeIP(a)
		rest := s[end+1:]
		if rest != "" {
			if rest[0] != ':' {
				return "", ip, 0, false
			}
			portText, hasPort = rest[1:], true
		}
	} else {
		h := s
		if i := strings.IndexByte(s, ':'); i >= 0 {
			h, portText, hasPort = s[:i], s[i+1:], true
		}
		if a, err := netip.ParseAddr(h); err == nil {
			if !a.Is4() {
				return "", ip, 0, false
			}
			ip = a
		} else if host, ok = parseHostName(h); !ok {
			return "", ip, 0, false
		}
	}
	if hasPort {
		if port, ok = parsePort(portText); !ok {
			return "", netip.Addr{}, 0, false
		}
	}
	return host, ip, port, true
}

// parsePort parses a decimal port, 1 to 65535, digits only.
func parsePort(s string) (uint16, bool) {
	if s == "" || len(s) > 5 {
		return 0, false
	}
	n := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	if n == 0 || n > 65535 {
		return 0, false
	}
	return uint16(n), true
}

// parseHostName normalises a DNS host name (lower case, one trailing dot dropped) and checks
// it: at most 253 characters of labels of 1 to 63 letters, digits, '-' and '_', the last of
// which is not all digits (a name like 127.1 or 0x7f.1 is an IP address to some resolvers).
func parseHostName(s string) (string, bool) {
	h := flowmodel.NormalizeHost(s)
	if h == "" || len(h) > 253 {
		return "", false
	}
	label, digits := 0, true
	for i := 0; i < len(h); i++ {
		c := h[i]
		switch {
		case c == '.':
			if label == 0 {
				return "", false
			}
			label, digits = 0, true
			continue
		case '0' <= c && c <= '9':
		case 'a' <= c && c <= 'z', c == '-', c == '_':
			digits = false
		default:
			return "", false
		}
		if label++; label > 63 {
			return "", false
		}
	}
	if label == 0 || digits {
		return "", false
	}
	if i := strings.LastIndexByte(h, '.'); strings.HasPrefix(h[i+1:], "0x") {
		return "", false
	}
	return h, true
}
