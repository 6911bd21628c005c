// Package nodeid identifies the Envoy at the other end of an xDS or access-log stream: whether
// it is a sidecar or an egress gateway, and which service a sidecar belongs to. It follows the
// identity rules of DESIGN.md: node metadata NAMESPACE + WORKLOAD_NAME, else an Istio node id
// (`sidecar~IP~POD.NS~NS.svc.cluster.local`); SPIFFE IDs (`spiffe://TD/ns/NS/sa/SA`) name the
// sources behind a gateway.
//
// Everything here is a pure function of its input and safe for concurrent use.
package nodeid

import (
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/meshguard/meshguard/extproc/contract"
	"google.golang.org/protobuf/types/known/structpb"
)

// Node metadata keys read by Identify.
const (
	// MetaNamespace and MetaWorkloadName are the keys Istio sets on every proxy.
	MetaNamespace    = contract.NodeMetaNamespace
	MetaWorkloadName = contract.NodeMetaWorkloadName
	// MetaRole is meshguard's own key: "sidecar" or "gateway". It overrides the role taken
	// from an Istio node id.
	MetaRole = "MESHGUARD_ROLE"
)

// ServiceMetadataKey is the gRPC metadata key (set with GrpcService.initial_metadata) that
// names the service of a whole ext_proc or access-log stream outright: identity source 1
// of DESIGN.md.
const ServiceMetadataKey = contract.ServiceMetadataKey

// Role is the part an Envoy plays.
type Role uint8

const (
	// RoleSidecar is an Envoy beside one workload: all its traffic belongs to one service.
	RoleSidecar Role = iota + 1
	// RoleGateway is an egress gateway that carries the traffic of many services.
	RoleGateway
)

func (r Role) String() string {
	switch r {
	case RoleSidecar:
		return "sidecar"
	case RoleGateway:
		return "gateway"
	}
	return "unknown"
}

// Identity is who an Envoy node is.
type Identity struct {
	Role Role
	// Service is "NAMESPACE/WORKLOAD" for an identified sidecar; "" for a gateway or for a
	// sidecar whose node carries no identity.
	Service string
}

// Identify returns the identity of an Envoy node. A node that names no role is a sidecar,
// except an Istio "router~..." node, which is a gateway. A gateway never has a service: the
// traffic it carries belongs to its sources.
func Identify(n *corev3.Node) Identity {
	id := Identity{Role: RoleSidecar}
	istioRole, istioService, istioOK := ParseIstioID(n.GetId())
	if istioOK {
		id.Role = istioRole
	}
	fields := n.GetMetadata().GetFields()
	switch stringField(fields, MetaRole) {
	case "gateway":
		id.Role = RoleGateway
	case "sidecar":
		id.Role = RoleSidecar
	}
	if id.Role == RoleGateway {
		return id
	}
	ns, wl := stringField(fields, MetaNamespace), stringField(fields, MetaWorkloadName)
	switch {
	case ns != "" && wl != "":
		id.Service = ns + "/" + wl
	case istioOK:
		id.Service = istioService
	}
	return id
}

func stringField(fields map[string]*structpb.Value, key string) string {
	return strings.TrimSpace(fields[key].GetStringValue())
}

// ParseIstioID parses an Istio node id `TYPE~IP~POD.NS~NS.svc.DOMAIN`. TYPE "sidecar" is a
// sidecar, "router" a gateway. For a sidecar the service is "NS/WORKLOAD", where WORKLOAD is
// the pod name without the suffixes Kubernetes controllers add (see WorkloadFromPod).
func ParseIstioID(id string) (role Role, service string, ok bool) {
	parts := strings.Split(id, "~")
	if len(parts) != 4 {
		return 0, "", false
	}
	switch parts[0] {
	case "sidecar":
		role = RoleSidecar
	case "router":
		role = RoleGateway
	default:
		return 0, "", false
	}
	podNS := parts[2]
	dot := strings.LastIndexByte(podNS, '.')
	if dot <= 0 || dot == len(podNS)-1 {
		return 0, "", false
	}
	pod, ns := podNS[:dot], podNS[dot+1:]
	return role, ns + "/" + WorkloadFromPod(pod), true
}

// safeAlphabet is the alphabet of the random suffixes Kubernetes generates for pod and
// ReplicaSet names (k8s.io/apimachinery/pkg/util/rand: no vowels, no 0, 1, 3).
const safeAlphabet = "bcdfghjklmnpqrstvwxz2456789"

func isSafe(s string) bool {
	for i := 0; i < len(s); i++ {
		if strings.IndexByte(safeAlphabet, s[i]) < 0 {
			return false
		}
	}
	return s != ""
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// WorkloadFromPod strips the suffixes Kubernetes controllers append to pod names:
// Deployment `NAME-HASH-XXXXX` → NAME, DaemonSet or Job `NAME-XXXXX` → NAME, StatefulSet
// `NAME-N` → NAME. A name that matches none of these, or would be left empty, is returned
// unchanged. It is a heuristic
// for the rare node without WORKLOAD_NAME metadata (Istio sets it on every proxy).
func WorkloadFromPod(pod string) string {
	parts := strings.Split(pod, "-")
	if len(parts) < 2 {
		return pod
	}
	last := parts[len(parts)-1]
	switch {
	case len(last) == 5 && isSafe(last):
		parts = parts[:len(parts)-1]
		// A Deployment's ReplicaSet adds its pod-template-hash before the pod suffix.
		if h := parts[len(parts)-1]; len(parts) >= 2 && len(h) >= 6 && len(h) <= 10 && (isSafe(h) || isDigits(h)) {
			parts = parts[:len(parts)-1]
		}
	case isDigits(last):
		parts = parts[:len(parts)-1]
	}
	if wl := strings.Join(parts, "-"); wl != "" {
		return wl
	}
	return pod
}

// ServiceFromSPIFFE maps a SPIFFE ID `spiffe://TD/ns/NS/sa/SA` to the service "NS/SA".
func ServiceFromSPIFFE(uri string) (string, bool) {
	rest, ok := strings.CutPrefix(uri, "spiffe://")
	if !ok {
		return "", false
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 5 || parts[0] == "" || parts[1] != "ns" || parts[2] == "" || parts[3] != "sa" || parts[4] == "" {
		return "", false
	}
	return parts[2] + "/" + parts[4], true
}

// SPIFFEID is the inverse of ServiceFromSPIFFE: the SPIFFE ID of service "NS/SA" in a trust
// domain. It reports false for a service not of that form or an empty trust domain.
func SPIFFEID(trustDomain, service string) (string, bool) {
	ns, sa, ok := strings.Cut(service, "/")
	if !ok || trustDomain == "" || ns == "" || sa == "" || strings.Contains(sa, "/") {
		return "", false
	}
	return "spiffe://" + trustDomain + "/ns/" + ns + "/sa/" + sa, true
}
