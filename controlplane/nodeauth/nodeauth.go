// Package nodeauth decides who may speak as an Envoy node on the control plane's streams (ADS
// and the AccessLogService). A node's claim (its node id, its NAMESPACE and WORKLOAD_NAME
// metadata, its MESHGUARD_ROLE, and the x-meshguard-service gRPC metadata of a stream) is
// only believed when the connection's client certificate backs it.
//
// # What a certificate vouches for
//
// With mutual TLS, the client certificate's URI SAN must be an Istio SPIFFE ID
// spiffe://<trust domain>/ns/<NS>/sa/<SA> in the configured trust domain (exactly one
// spiffe:// URI). The node is then authorised as follows:
//
//   - A sidecar must claim a service "NS/WORKLOAD" (meshguard's sidecar service name, from
//     the NAMESPACE and WORKLOAD_NAME metadata or the Istio node id). Every namespace the node
//     names (NAMESPACE metadata, the POD.NS and NS.svc parts of an Istio node id, the
//     service) must be the certificate's NS. The WORKLOAD must be the certificate's SA, or
//     be listed for "NS/SA" in Config.ServiceAccounts ("*" there lets the account speak for
//     every workload of its namespace: use it only where workloads share an account, such
//     as "default", and know that they can then speak for each other).
//   - A gateway (a router~ node id or MESHGUARD_ROLE=gateway) must present an account listed
//     in Config.GatewayAccounts: a gateway is told every service's policy and its access
//     logs name any service.
//   - A stream's x-meshguard-service, when present, must be the sidecar's own service.
//   - A node that claims no service, or a certificate without a SPIFFE ID of the trust
//     domain, is refused.
//
// Refusals are gRPC PermissionDenied; a connection without the TLS the server requires is
// Unauthenticated.
//
// # Without mutual TLS
//
// Without a client CA the connection proves nothing about the node: every claim is believed,
// as before this package existed. That trusts every process that can reach the listener, which
// is why the control plane refuses to listen beyond loopback or a unix socket without mutual
// TLS unless told to (insecure-listen).
package nodeauth

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/meshguard/meshguard/extproc/nodeid"
)

// AnyWorkload, as a workload of Config.ServiceAccounts, lets an account speak for every
// workload of its namespace.
const AnyWorkload = "*"

// DefaultGatewayAccounts are the accounts allowed to be gateways when Config.GatewayAccounts
// is nil: Istio's egress gateway.
var DefaultGatewayAccounts = []string{"istio-system/istio-egressgateway-service-account"}

// Config says what the server requires of its clients.
type Config struct {
	// RequireTLS refuses streams whose connection is not TLS (set when the server has a
	// certificate: no plaintext fallback, even on a listener wired without credentials).
	RequireTLS bool
	// Mutual makes the client certificate the node's identity (set when the server has a
	// client CA). It implies RequireTLS.
	Mutual bool
	// TrustDomain is the SPIFFE trust domain of the client certificates. Required with Mutual.
	TrustDomain string
	// ServiceAccounts maps an account "NS/SA" to the workloads (WORKLOAD_NAME, without the
	// namespace) its certificate may claim besides the workload named SA; AnyWorkload
	// allows every workload of NS.
	ServiceAccounts map[string][]string
	// GatewayAccounts are the accounts "NS/SA" allowed to be gateways. nil means
	// DefaultGatewayAccounts; an empty non-nil slice allows none.
	GatewayAccounts []string
}

// Check applies defaults and reports every problem in c.
func (c Config) Check() (Config, error) {
	var errs []error
	if c.Mutual {
		c.RequireTLS = true
		if c.TrustDomain == "" {
			errs = append(errs, errors.New("mutual TLS needs a trust domain"))
		}
	}
	if c.TrustDomain != "" && (strings.ContainsAny(c.TrustDomain, "/: ") || strings.ToLower(c.TrustDomain) != c.TrustDomain) {
		errs = append(errs, fmt.Errorf("trust domain %q: want a bare lower-case domain", c.TrustDomain))
	}
	if c.GatewayAccounts == nil {
		c.GatewayAccounts = slices.Clone(DefaultGatewayAccounts)
	}
	for _, a := range c.GatewayAccounts {
		if !validAccount(a) {
			errs = append(errs, fmt.Errorf("gateway account %q: want NS/SA", a))
		}
	}
	for a, wls := range c.ServiceAccounts {
		if !validAccount(a) {
			errs = append(errs, fmt.Errorf("service account %q: want NS/SA", a))
		}
		if len(wls) == 0 {
			errs = append(errs, fmt.Errorf("service account %q: no workloads", a))
		}
		for _, w := range wls {
			if w == "" || strings.ContainsAny(w, "/ ") {
				errs = append(errs, fmt.Errorf("service account %q: workload %q: want a workload name or %q", a, w, AnyWorkload))
			}
		}
	}
	return c, errors.Join(errs...)
}

func validAccount(a string) bool {
	ns, sa, ok := strings.Cut(a, "/")
	return ok && ns != "" && sa != "" && !strings.ContainsAny(sa, "/ ") && !strings.Contains(ns, " ")
}

// Peer is what a connection proves about its client.
type Peer struct {
	// Authenticated is set when a verified client certificate named the peer.
	Authenticated bool
	// SPIFFEID, Namespace and ServiceAccount come from the certificate.
	SPIFFEID, Namespace, ServiceAccount string
}

// Account is "NS/SA", or "" for an unauthenticated peer.
func (p Peer) Account() string {
	if !p.Authenticated {
		return ""
	}
	return p.Namespace + "/" + p.ServiceAccount
}

// Authenticator authenticates stream peers and authorises their node claims. It is
// immutable and safe for concurrent use. A nil *Authenticator trusts every claim.
type Authenticator struct {
	cfg Config
}

// New checks cfg and returns an authenticator.
func New(cfg Config) (*Authenticator, error) {
	cfg, err := cfg.Check()
	if err != nil {
		return nil, fmt.Errorf("node authentication: %w", err)
	}
	return &Authenticator{cfg: cfg}, nil
}

// Mutual reports whether node identities come from client certificates.
func (a *Authenticator) Mutual() bool { return a != nil && a.cfg.Mutual }

// Peer returns what the connection of a stream's context proves. The error is a gRPC
// status: Unauthenticated when the server requires TLS and the connection has none, or
// mutual TLS and the client certificate carries no SPIFFE ID of the trust domain.
func (a *Authenticator) Peer(ctx context.Context) (Peer, error) {
	if a == nil || !a.cfg.RequireTLS {
		return Peer{}, nil
	}
	p, ok := peer.FromContext(ctx)
	if !ok {
		return Peer{}, status.Error(codes.Unauthenticated, "no peer information")
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return Peer{}, status.Error(codes.Unauthenticated, "TLS is required")
	}
	if !a.cfg.Mutual {
		return Peer{}, nil
	}
	if len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return Peer{}, status.Error(codes.Unauthenticated, "a verified client certificate is required")
	}
	leaf := info.State.VerifiedChains[0][0]
	var ids []string
	for _, u := range leaf.URIs {
		if strings.EqualFold(u.Scheme, "spiffe") {
			ids = append(ids, u.String())
		}
	}
	if len(ids) != 1 {
		return Peer{}, status.Errorf(codes.Unauthenticated, "client certificate has %d SPIFFE IDs, want exactly one", len(ids))
	}
	ns, sa, ok := a.parseSPIFFE(ids[0])
	if !ok {
		return Peer{}, status.Errorf(codes.Unauthenticated, "client certificate SPIFFE ID %q is not spiffe://%s/ns/NS/sa/SA", ids[0], a.cfg.TrustDomain)
	}
	return Peer{Authenticated: true, SPIFFEID: ids[0], Namespace: ns, ServiceAccount: sa}, nil
}

// parseSPIFFE parses spiffe://TD/ns/NS/sa/SA in the authenticator's trust domain. The URI
// must be exactly that: no port, user, query, fragment, or percent-encoding.
func (a *Authenticator) parseSPIFFE(id string) (ns, sa string, ok bool) {
	rest, ok := strings.CutPrefix(id, "spiffe://"+a.cfg.TrustDomain+"/")
	if !ok || strings.ContainsAny(rest, "?#%@: ") {
		return "", "", false
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 4 || parts[0] != "ns" || parts[1] == "" || parts[2] != "sa" || parts[3] == "" {
		return "", "", false
	}
	return parts[1], parts[3], true
}

// Authorize checks that p may speak as node n, with the stream-wide service claim service
// (the x-meshguard-service gRPC metadata; "" when absent), and returns the node's identity.
// Without mutual TLS every claim is believed. The error is a gRPC PermissionDenied status.
func (a *Authenticator) Authorize(p Peer, n *corev3.Node, service string) (nodeid.Identity, error) {
	id := nodeid.Identify(n)
	if !a.Mutual() {
		return id, nil
	}
	deny := func(format string, args ...any) (nodeid.Identity, error) {
		return nodeid.Identity{}, status.Errorf(codes.PermissionDenied, "client certificate %s may not speak as node %q: "+format,
			append([]any{p.SPIFFEID, n.GetId()}, args...)...)
	}
	if !p.Authenticated {
		return deny("no client identity")
	}
	if id.Role == nodeid.RoleGateway {
		if !slices.Contains(a.cfg.GatewayAccounts, p.Account()) {
			return deny("the account is not a gateway account")
		}
		return id, nil
	}
	if id.Service == "" {
		return deny("the node names no service")
	}
	ns, wl, _ := strings.Cut(id.Service, "/")
	if ns != p.Namespace {
		return deny("service %q is not in namespace %q", id.Service, p.Namespace)
	}
	fields := n.GetMetadata().GetFields()
	if v := strings.TrimSpace(fields[nodeid.MetaNamespace].GetStringValue()); v != "" && v != p.Namespace {
		return deny("NAMESPACE %q is not %q", v, p.Namespace)
	}
	if nss, ok := istioNamespaces(n.GetId()); ok {
		for _, v := range nss {
			if v != p.Namespace {
				return deny("node id names namespace %q, not %q", v, p.Namespace)
			}
		}
	}
	if wl != p.ServiceAccount {
		allowed := a.cfg.ServiceAccounts[p.Account()]
		if !slices.Contains(allowed, wl) && !slices.Contains(allowed, AnyWorkload) {
			return deny("workload %q is neither the service account nor listed for %q", wl, p.Account())
		}
	}
	if service != "" && service != id.Service {
		return deny("stream service %q is not the node's service %q", service, id.Service)
	}
	return id, nil
}

// istioNamespaces returns the namespaces an Istio node id TYPE~IP~POD.NS~NS.svc.DOMAIN names.
func istioNamespaces(id string) ([]string, bool) {
	if _, _, ok := nodeid.ParseIstioID(id); !ok {
		return nil, false
	}
	parts := strings.Split(id, "~")
	podNS := parts[2]
	out := []string{podNS[strings.LastIndexByte(podNS, '.')+1:]}
	if ns, _, ok := strings.Cut(parts[3], "."); ok || ns != "" {
		out = append(out, ns)
	}
	return out, true
}
