// Package contract spells out, once, the names meshguard and Envoy agree on: the ext_proc
// attribute expressions meshguard asks for and the key Envoy files them under, the gRPC
// metadata keys of an ext_proc stream, the header, details and body of the 403 meshguard
// answers in Envoy's place, and the processing mode and attribute lists meshguard expects the
// ext_proc filter to be configured with.
//
// The ext_proc server (extproc), the xDS server that configures the filter
// (controlplane/xds), the null server and load generator (bench/load) and the install tests
// import these names; none of them spells one itself. The package is constants and functions
// only, with no dependency, so that anything may import it.
package contract

// AttributesKey is the key of ProcessingRequest.attributes under which Envoy's ext_proc
// filter puts the attributes listed in request_attributes and response_attributes. It is also
// the filter's name in an HTTP filter chain.
const AttributesKey = "envoy.filters.http.ext_proc"

// FilterName is the name of the ext_proc HTTP filter in Envoy configuration.
const FilterName = AttributesKey

// Attribute expressions (Envoy's attribute names, as listed in request_attributes and
// response_attributes; Envoy keys each value by the expression's text).
const (
	// AttrNodeID is the Envoy node id; Istio's form is sidecar~IP~POD.NS~NS.svc.cluster.local.
	AttrNodeID = "xds.node.id"
	// AttrNodeNamespace and AttrNodeWorkload are the node metadata Istio sets on every proxy.
	AttrNodeNamespace = "xds.node.metadata['" + NodeMetaNamespace + "']"
	AttrNodeWorkload  = "xds.node.metadata['" + NodeMetaWorkloadName + "']"
	// AttrNodeMetadata is the node metadata as a whole (a struct value).
	AttrNodeMetadata = "xds.node.metadata"
	// AttrPeerURISAN is the URI SAN of the downstream peer's certificate (SPIFFE ID).
	AttrPeerURISAN = "connection.uri_san_peer_certificate"
	// AttrSourceAddress is the downstream address, "ip:port".
	AttrSourceAddress = "source.address"
	// AttrDestination is the downstream connection's local address: in a sidecar, the
	// original destination the application dialled, "ip:port".
	AttrDestination = "destination.address"
	// AttrRequestedServer is the TLS SNI of the downstream connection.
	AttrRequestedServer = "connection.requested_server_name"
	// AttrUpstreamAddress is the address Envoy connected to (response time only).
	AttrUpstreamAddress = "upstream.address"
)

// NodeMeta returns the attribute expression of node metadata key, in the single-quoted form
// meshguard asks for.
func NodeMeta(key string) string { return AttrNodeMetadata + "['" + key + "']" }

// NodeMetaQuoted returns the attribute expression of node metadata key in its double-quoted
// form, which Envoy accepts as well.
func NodeMetaQuoted(key string) string { return AttrNodeMetadata + `["` + key + `"]` }

// Node metadata keys (Envoy node metadata, as Istio sets it).
const (
	NodeMetaNamespace    = "NAMESPACE"
	NodeMetaWorkloadName = "WORKLOAD_NAME"
)

// RequestAttributes returns the request_attributes meshguard asks for, in order. The caller
// owns the returned slice.
func RequestAttributes() []string {
	return []string{
		AttrNodeID, AttrNodeNamespace, AttrNodeWorkload, AttrDestination, AttrSourceAddress,
		AttrRequestedServer, AttrPeerURISAN,
	}
}

// ResponseAttributes returns the response_attributes meshguard asks for. The caller owns the
// returned slice.
func ResponseAttributes() []string { return []string{AttrUpstreamAddress} }

// gRPC metadata keys of an ext_proc (or access-log) stream.
const (
	// ServiceMetadataKey names the service of a whole stream outright (set with
	// GrpcService.initial_metadata): identity source 1 of DESIGN.md.
	ServiceMetadataKey = "x-meshguard-service"
	// TraceparentKey is the W3C trace context, in the stream's metadata or the request's
	// headers: the parent of the decision span.
	TraceparentKey = "traceparent"
)

// The 403 meshguard sends in Envoy's place (an ImmediateResponse).
const (
	// VerdictHeader is set on every response meshguard makes in Envoy's place.
	VerdictHeader = "x-meshguard-verdict"
	// BlockDetails is the ImmediateResponse details (Envoy's %RESPONSE_CODE_DETAILS%) of a
	// block.
	BlockDetails = "meshguard_blocked"
	// BudgetDetails is the details of a 403 sent because a decision overran its budget.
	BudgetDetails = "meshguard_budget_exceeded"
	// UndecodableDetails is the details of a 403 sent because a message of the stream could
	// not be decoded (over the size limit, invalid UTF-8 in a string field).
	UndecodableDetails = "meshguard_undecodable"
)

// Processing mode values, as Envoy's enum names (ProcessingMode.HeaderSendMode and
// BodySendMode).
const (
	SendModeSend = "SEND"
	SendModeSkip = "SKIP"
	BodyModeNone = "NONE"
)

// ProcessingMode is an ext_proc processing mode, each field an Envoy enum name.
type ProcessingMode struct {
	RequestHeader, ResponseHeader   string
	RequestBody, ResponseBody       string
	RequestTrailer, ResponseTrailer string
}

// RecommendedProcessingMode returns the processing mode meshguard expects (DESIGN.md,
// "Budget on the request path"): request and response headers sent, bodies and trailers not.
func RecommendedProcessingMode() ProcessingMode {
	return ProcessingMode{
		RequestHeader: SendModeSend, ResponseHeader: SendModeSend,
		RequestBody: BodyModeNone, ResponseBody: BodyModeNone,
		RequestTrailer: SendModeSkip, ResponseTrailer: SendModeSkip,
	}
}
