// Package xds serves Envoy its configuration over ADS (go-control-plane's snapshot cache):
// an outbound listener whose HTTP path carries meshguard's ext_proc filter and whose TLS and
// plain-TCP paths carry an RBAC backstop compiled from the learned baselines, so that a
// destination a service never used is refused at L4 for every protocol, not only for HTTP.
//
// Generator.Build is a pure function from a node's identity and the services' records to
// Envoy resources; Controller watches the baselines and pushes snapshots with monotonic
// versions. The package depends on flowmodel only for its record types.
//
// # Topology
//
// Every node gets one listener, ListenerName, bound to Config.ListenerAddress, to which
// outbound traffic is redirected. The original_dst listener filter restores the destination
// the app dialled, tls_inspector and http_inspector pick the path:
//
//   - plain HTTP: http_connection_manager (routes over RDS) with ext_proc, then the router to
//     the original destination;
//   - TLS the app originates: tcp_proxy to the original destination, behind the RBAC filter
//     (destination IP, port and SNI);
//   - anything else (default chain): tcp_proxy behind the RBAC filter (destination IP, port).
//
// Both paths log to meshguard's AccessLogService (gRPC access loggers), which is how TCP and
// TLS destinations are learned.
//
// # Nodes and snapshots
//
// Who a node is comes from its claims (node id and metadata); with mutual TLS the controller
// believes a claim only when the stream's client certificate backs it (package
// controlplane/nodeauth, Controller WithAuthenticator), so a node can read only its own
// service's snapshot, and only a gateway account the gateway snapshot.
//
// A sidecar node (see nodeid.Identify) gets the snapshot of its service: the RBAC has one
// policy whose principal is any (all traffic of the sidecar is the service's), and the ext_proc
// and access-log streams carry the service in the x-meshguard-service gRPC metadata. All
// sidecars of a service share one snapshot. A gateway node gets one snapshot for all
// gateways with per-source RBAC: each enforced service is a policy whose principals are its
// sources (the IP a service is named by, its SPIFFE ID "spiffe://TD/ns/NS/sa/SA", and
// Config.GatewaySources), plus a policy that lets every other source through. A SPIFFE
// principal matches only where the gateway terminates the sources' mTLS; the transparent
// listener this package generates does not, so there sources are told apart by IP.
//
// # Modes at L4
//
//   - learn: no RBAC.
//   - monitor: the enforce rules as shadow rules (Envoy counts rbac.shadow_denied; nothing is
//     refused). A monitor service with no learned destination IP has no shadow rules unless
//     Config.DenyAllWhenEmpty makes them a shadow deny-all.
//   - enforce: only learned destination IPs and ports; on TLS, the SNI when present must be a
//     learned host. An enforce service with no learned destination IP denies everything at
//     L4 from its first push (on a gateway: its sources are denied everything); nothing
//     learned never means nothing enforced.
//   - quarantine: only the explicit allow list (IPs on every path, host names by SNI on TLS);
//     an empty allow list is a deliberate deny-all.
//
// While a node's TCP or TLS path enforces, tcp_proxy waits for the client's first bytes
// (upstream_connect_mode ON_DOWNSTREAM_DATA) so that the RBAC decides before Envoy connects
// anywhere (Envoy otherwise connects first and refuses after, envoyproxy/envoy#9023). See
// Config.ServerFirstPorts for protocols in which the server speaks first.
package xds

import (
	"cmp"
	"fmt"
	"slices"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/meshguard/meshguard/extproc/nodeid"
	"github.com/meshguard/meshguard/flowmodel"
)

// Names of the resources and of the gRPC metadata key the generated configuration uses.
const (
	ListenerName       = "meshguard_outbound"
	RouteName          = "meshguard_outbound"
	ClusterOriginalDst = "meshguard_original_dst"
	ClusterExtProc     = "meshguard_ext_proc"
	ClusterAccessLog   = "meshguard_access_log"
	// AccessLogName is the log_name of the gRPC access loggers.
	AccessLogName = "meshguard"
	// ServiceMetadataKey carries a sidecar's service on the ext_proc and access-log streams
	// (identity source 1 of DESIGN.md).
	ServiceMetadataKey = nodeid.ServiceMetadataKey
)

// Skip reasons: why a service is not enforced at L4 as its mode says.
const (
	// SkipNoPrincipals: a gateway cannot tell the service's connections apart (its name is
	// neither an IP nor NS/SA with a trust domain, and no GatewaySources are configured).
	SkipNoPrincipals = "no_principals"
	// SkipBadDestination: a destination in the record does not parse; it is left out, the
	// rest of the service's destinations still apply.
	SkipBadDestination = "bad_destination"
)

// Skip records a service whose L4 rules are not what its mode asks for, and why.
type Skip struct {
	Service string
	Reason  string
	Detail  string
}

func (s Skip) String() string {
	if s.Detail == "" {
		return s.Service + ": " + s.Reason
	}
	return s.Service + ": " + s.Reason + " (" + s.Detail + ")"
}

// Resources is what one node is told.
type Resources struct {
	Listeners []*listenerv3.Listener
	Clusters  []*clusterv3.Cluster
	Routes    []*routev3.RouteConfiguration
	// Skipped lists the services not enforced at L4 as their mode asks, sorted.
	Skipped []Skip
}

// ByType returns the resources keyed by type URL, as cache.NewSnapshot takes them.
func (r Resources) ByType() map[resource.Type][]types.Resource {
	out := map[resource.Type][]types.Resource{
		resource.ListenerType: make([]types.Resource, 0, len(r.Listeners)),
		resource.ClusterType:  make([]types.Resource, 0, len(r.Clusters)),
		resource.RouteType:    make([]types.Resource, 0, len(r.Routes)),
	}
	for _, l := range r.Listeners {
		out[resource.ListenerType] = append(out[resource.ListenerType], l)
	}
	for _, c := range r.Clusters {
		out[resource.ClusterType] = append(out[resource.ClusterType], c)
	}
	for _, rc := range r.Routes {
		out[resource.RouteType] = append(out[resource.RouteType], rc)
	}
	return out
}

// Generator builds Envoy resources from baselines. It is immutable and safe for concurrent
// use.
type Generator struct {
	cfg Config
}

// NewGenerator checks cfg and returns a generator.
func NewGenerator(cfg Config) (*Generator, error) {
	cfg, err := cfg.Check()
	if err != nil {
		return nil, err
	}
	return &Generator{cfg: cfg}, nil
}

// Config returns the generator's configuration with defaults applied.
func (g *Generator) Config() Config { return g.cfg }

// Build returns the resources for a node. For a sidecar only the record named by id.Service
// matters (others are ignored; a service absent from services is treated as learning); for
// a gateway every record does. Build is a pure function of its arguments and the
// generator's configuration: equal inputs give equal resources.
func (g *Generator) Build(id nodeid.Identity, services []flowmodel.ServiceRecord) (Resources, error) {
	var pol nodePolicy
	switch id.Role {
	case nodeid.RoleGateway:
		pol = g.gatewayPolicy(services)
	default:
		var rec *flowmodel.ServiceRecord
		if id.Service != "" {
			for i := range services {
				if services[i].Name == id.Service {
					rec = &services[i]
					break
				}
			}
		}
		pol = g.sidecarPolicy(rec)
	}
	b := builder{cfg: &g.cfg, id: id}
	res := Resources{
		Listeners: []*listenerv3.Listener{b.listener(pol)},
		Clusters:  b.clusters(),
		Routes:    []*routev3.RouteConfiguration{b.routes()},
		Skipped:   pol.skipped,
	}
	slices.SortFunc(res.Skipped, func(a, b Skip) int {
		return cmp.Or(cmp.Compare(a.Service, b.Service), cmp.Compare(a.Reason, b.Reason), cmp.Compare(a.Detail, b.Detail))
	})
	if b.err != nil {
		return Resources{}, fmt.Errorf("build resources for %s %q: %w", id.Role, id.Service, b.err)
	}
	return res, nil
}
