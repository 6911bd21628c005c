package nodeauth

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/url"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshguard/meshguard/extproc/nodeid"
)

func node(t *testing.T, id string, meta map[string]any) *corev3.Node {
	t.Helper()
	md, err := structpb.NewStruct(meta)
	if err != nil {
		t.Fatal(err)
	}
	return &corev3.Node{Id: id, Metadata: md}
}

func mutual(t *testing.T, sas map[string][]string) *Authenticator {
	t.Helper()
	a, err := New(Config{Mutual: true, TrustDomain: "cluster.local", ServiceAccounts: sas})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestAdversaryNodeClaims plays a workload whose certificate is shop/checkout's and which
// claims other identities on ADS or the access-log service (issue 10 case 8: any client
// could claim any node).
func TestAdversaryNodeClaims(t *testing.T) {
	checkout := Peer{Authenticated: true, SPIFFEID: "spiffe://cluster.local/ns/shop/sa/checkout", Namespace: "shop", ServiceAccount: "checkout"}
	shared := Peer{Authenticated: true, SPIFFEID: "spiffe://cluster.local/ns/shop/sa/default", Namespace: "shop", ServiceAccount: "default"}
	gw := Peer{Authenticated: true, SPIFFEID: "spiffe://cluster.local/ns/istio-system/sa/istio-egressgateway-service-account", Namespace: "istio-system", ServiceAccount: "istio-egressgateway-service-account"}
	meta := func(ns, wl string) map[string]any { return map[string]any{"NAMESPACE": ns, "WORKLOAD_NAME": wl} }
	a := mutual(t, map[string][]string{"shop/default": {"cart"}, "pay/default": {AnyWorkload}})
	for _, tc := range []struct {
		name    string
		peer    Peer
		id      string
		meta    map[string]any
		service string // x-meshguard-service
		want    string // service granted; "" = refused
		gateway bool
	}{
		{name: "own metadata", peer: checkout, meta: meta("shop", "checkout"), want: "shop/checkout"},
		{name: "own istio id", peer: checkout, id: "sidecar~10.0.0.2~checkout-7d4b9c8f6d-x2x9z.shop~shop.svc.cluster.local", want: "shop/checkout"},
		{name: "own, stream service agrees", peer: checkout, meta: meta("shop", "checkout"), service: "shop/checkout", want: "shop/checkout"},
		{name: "other namespace", peer: checkout, meta: meta("pay", "checkout")},
		{name: "other workload same namespace", peer: checkout, meta: meta("shop", "cart")},
		{name: "other istio id", peer: checkout, id: "sidecar~10.0.0.2~ledger-7d4b9c8f6d-x2x9z.pay~pay.svc.cluster.local"},
		{name: "istio id in another namespace behind own metadata", peer: checkout, id: "sidecar~10.0.0.2~checkout-1.pay~pay.svc.cluster.local", meta: meta("shop", "checkout")},
		{name: "istio id DNS part in another namespace", peer: checkout, id: "sidecar~10.0.0.2~checkout-1.shop~pay.svc.cluster.local"},
		{name: "stream service of another service", peer: checkout, meta: meta("shop", "checkout"), service: "pay/ledger"},
		{name: "no service", peer: checkout, id: "anything"},
		{name: "gateway role by metadata", peer: checkout, meta: map[string]any{"MESHGUARD_ROLE": "gateway"}},
		{name: "gateway role by istio id", peer: checkout, id: "router~10.0.0.2~checkout-1.shop~shop.svc.cluster.local"},
		{name: "real gateway", peer: gw, id: "router~10.0.0.9~istio-egressgateway-1.istio-system~istio-system.svc.cluster.local", want: "", gateway: true},
		{name: "shared account, listed workload", peer: shared, meta: meta("shop", "cart"), want: "shop/cart"},
		{name: "shared account, unlisted workload", peer: shared, meta: meta("shop", "checkout")},
		{name: "namespace-wide account elsewhere", peer: Peer{Authenticated: true, Namespace: "pay", ServiceAccount: "default"}, meta: meta("shop", "checkout")},
		{name: "namespace-wide account", peer: Peer{Authenticated: true, Namespace: "pay", ServiceAccount: "default"}, meta: meta("pay", "ledger"), want: "pay/ledger"},
		{name: "unauthenticated", peer: Peer{}, meta: meta("shop", "checkout")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, err := a.Authorize(tc.peer, node(t, tc.id, tc.meta), tc.service)
			refused := tc.want == "" && !tc.gateway
			if refused {
				if status.Code(err) != codes.PermissionDenied {
					t.Fatalf("Authorize = %+v, %v; want PermissionDenied", id, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if id.Service != tc.want || (id.Role == nodeid.RoleGateway) != tc.gateway {
				t.Errorf("Authorize = %+v, want service %q gateway %v", id, tc.want, tc.gateway)
			}
		})
	}
}

// TestWithoutMutualTLSEveryClaimIsBelieved documents what plaintext (loopback) trusts.
func TestWithoutMutualTLSEveryClaimIsBelieved(t *testing.T) {
	a, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	id, err := a.Authorize(Peer{}, node(t, "", map[string]any{"NAMESPACE": "pay", "WORKLOAD_NAME": "ledger"}), "")
	if err != nil || id.Service != "pay/ledger" {
		t.Errorf("Authorize = %+v, %v", id, err)
	}
	var none *Authenticator
	if _, err := none.Peer(context.Background()); err != nil {
		t.Errorf("nil authenticator: %v", err)
	}
}

func tlsContext(uris ...string) context.Context {
	var us []*url.URL
	for _, s := range uris {
		u, _ := url.Parse(s)
		us = append(us, u)
	}
	leaf := &x509.Certificate{URIs: us}
	return peer.NewContext(context.Background(), &peer.Peer{
		Addr:     &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1},
		AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{leaf}}}},
	})
}

// TestAdversaryPeerCertificates plays clients whose certificates name no usable identity
// (issue 10 case 8): another trust domain, two SPIFFE IDs, a malformed ID, no TLS at all.
func TestAdversaryPeerCertificates(t *testing.T) {
	a := mutual(t, nil)
	for _, tc := range []struct {
		name string
		ctx  context.Context
		want string // account; "" = refused
	}{
		{"good", tlsContext("spiffe://cluster.local/ns/shop/sa/checkout"), "shop/checkout"},
		{"with a non-SPIFFE URI too", tlsContext("https://example.com/", "spiffe://cluster.local/ns/shop/sa/checkout"), "shop/checkout"},
		{"other trust domain", tlsContext("spiffe://evil.local/ns/shop/sa/checkout"), ""},
		{"trust domain suffix", tlsContext("spiffe://cluster.local.evil/ns/shop/sa/checkout"), ""},
		{"two SPIFFE IDs", tlsContext("spiffe://cluster.local/ns/shop/sa/checkout", "spiffe://cluster.local/ns/pay/sa/ledger"), ""},
		{"extra path", tlsContext("spiffe://cluster.local/ns/shop/sa/checkout/x"), ""},
		{"percent-encoded", tlsContext("spiffe://cluster.local/ns/sh%2Fop/sa/checkout"), ""},
		{"query", tlsContext("spiffe://cluster.local/ns/shop/sa/checkout?ns=pay"), ""},
		{"no URI", tlsContext(), ""},
		{"no TLS", peer.NewContext(context.Background(), &peer.Peer{Addr: &net.TCPAddr{}}), ""},
		{"no peer", context.Background(), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := a.Peer(tc.ctx)
			if tc.want == "" {
				if status.Code(err) != codes.Unauthenticated {
					t.Fatalf("Peer = %+v, %v; want Unauthenticated", p, err)
				}
				return
			}
			if err != nil || p.Account() != tc.want {
				t.Errorf("Peer = %+v, %v; want %s", p, err, tc.want)
			}
		})
	}
}

func TestConfigCheck(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"zero", Config{}, true},
		{"mutual", Config{Mutual: true, TrustDomain: "cluster.local"}, true},
		{"mutual without trust domain", Config{Mutual: true}, false},
		{"bad trust domain", Config{TrustDomain: "a/b"}, false},
		{"bad account", Config{ServiceAccounts: map[string][]string{"shop": {"x"}}}, false},
		{"no workloads", Config{ServiceAccounts: map[string][]string{"shop/default": nil}}, false},
		{"bad workload", Config{ServiceAccounts: map[string][]string{"shop/default": {"pay/x"}}}, false},
		{"bad gateway", Config{GatewayAccounts: []string{"gw"}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := tc.cfg.Check()
			if (err == nil) != tc.ok {
				t.Fatalf("Check = %v, want ok %v", err, tc.ok)
			}
			if tc.cfg.Mutual && err == nil && !c.RequireTLS {
				t.Error("mutual without RequireTLS")
			}
		})
	}
}
