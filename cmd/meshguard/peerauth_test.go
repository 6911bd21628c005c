package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	"google.golang.org/grpc/peer"

	"github.com/meshguard/meshguard/controlplane/nodeauth"
	"github.com/meshguard/meshguard/extproc"
	"github.com/meshguard/meshguard/extproc/certs/certtest"
	"github.com/meshguard/meshguard/extproc/envoysim"
	"github.com/meshguard/meshguard/flowmodel"
)

// TestAdversaryExtProcStreamIdentity covers issue 10 cases 8 and 11 on ext_proc: a pod with
// a mesh certificate of its own (every pod has one) reaches meshguard's ext_proc port (a
// central layout admits whole namespaces) and opens its own stream naming shop/payments, by
// x-meshguard-service, node attributes or a forged downstream certificate, with a
// destination of its choosing. With mutual TLS the stream's identity must be one its client
// certificate may speak for, by nodeauth's rules: a refused claim is a 403 identity_mismatch
// and teaches the model nothing (the learning service stays unknown). The payments sidecar's
// own certificate, and the egress gateway vouching for the downstream it saw, are decided.
func TestAdversaryExtProcStreamIdentity(t *testing.T) {
	const td = "cluster.local"
	ca := certtest.NewCA(t, "mesh")
	spiffe := func(ns, sa string) string { return "spiffe://" + td + "/ns/" + ns + "/sa/" + sa }
	var (
		attacker = ca.ClientURI(t, "attacker", spiffe("attacker", "attacker"))
		neighbor = ca.ClientURI(t, "cart", spiffe("shop", "cart"))
		twoIDs   = ca.ClientURI(t, "two", spiffe("attacker", "attacker"), spiffe("shop", "payments"))
		foreign  = ca.ClientURI(t, "foreign", "spiffe://evil.example/ns/shop/sa/payments")
		noID     = ca.Client(t, "no-spiffe")
		payments = ca.ClientURI(t, "payments", spiffe("shop", "payments"))
		gateway  = ca.ClientURI(t, "gateway", spiffe("istio-system", "istio-egressgateway-service-account"))
	)
	const victim = "shop/payments"
	claim := func(how string) envoysim.Request {
		r := envoysim.Request{
			Attributes: map[string]string{extproc.AttrDestination: "203.0.113.77:443"},
			Headers: []envoysim.Header{{Key: ":method", Value: "GET"}, {Key: ":path", Value: "/"},
				{Key: ":authority", Value: "203.0.113.77"}, {Key: ":scheme", Value: "https"}},
			ResponseHeaders:    []envoysim.Header{{Key: ":status", Value: "200"}},
			ResponseAttributes: map[string]string{extproc.AttrUpstreamAddress: "203.0.113.77:443"},
		}
		switch how {
		case "metadata":
			r.Metadata = map[string]string{extproc.ServiceMetadataKey: victim}
		case "node":
			r.Attributes[extproc.AttrNodeNamespace], r.Attributes[extproc.AttrNodeWorkload] = "shop", "payments"
		case "peer-san":
			r.Attributes[extproc.AttrPeerURISAN] = spiffe("shop", "payments")
		case "source-address":
			r.Attributes[extproc.AttrSourceAddress] = "10.1.0.11:40000"
		}
		return r
	}
	for _, tc := range []struct {
		name   string
		client *certtest.Leaf
		how    string
		allow  bool
	}{
		{"another namespace claims by metadata", attacker, "metadata", false},
		{"another namespace claims by node", attacker, "node", false},
		{"another namespace forges the downstream certificate", attacker, "peer-san", false},
		{"same namespace, another account", neighbor, "node", false},
		{"same namespace, another account, by metadata", neighbor, "metadata", false},
		{"two SPIFFE IDs, one the victim's", twoIDs, "node", false},
		{"the victim's SPIFFE ID in another trust domain", foreign, "node", false},
		{"no SPIFFE ID", noID, "node", false},
		{"the gateway speaks for itself by metadata", gateway, "metadata", false},
		{"the gateway claims node metadata", gateway, "node", false},
		{"the payments sidecar by node", payments, "node", true},
		{"the payments sidecar by metadata", payments, "metadata", true},
		{"a sidecar names a service by address", attacker, "source-address", false},
		{"the gateway vouches for its downstream", gateway, "peer-san", true},
		{"the gateway vouches for its downstream's address", gateway, "source-address", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			model, err := flowmodel.New(flowmodel.Config{})
			if err != nil {
				t.Fatal(err)
			}
			authorize, err := extProcPeerAuthorizer("client-ca.pem", nodeauth.Config{TrustDomain: td})
			if err != nil || authorize == nil {
				t.Fatalf("authorizer %v, %v", authorize != nil, err)
			}
			c := serveExtProcTLS(t, model, extproc.Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), AuthorizePeer: authorize}, ca, tc.client)
			res, err := envoysim.Do(context.Background(), c, claim(tc.how), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			service := victim
			if tc.how == "source-address" {
				service = "10.1.0.11"
			}
			_, learned := model.Mode(service)
			if tc.allow {
				if res.Immediate != nil || !learned {
					t.Fatalf("immediate %v, learned %v: want the request decided (learn mode allows) and learned", res.Immediate, learned)
				}
				return
			}
			if res.Immediate == nil {
				t.Fatal("allowed: the stream spoke for shop/payments")
			}
			var body extproc.BlockBody
			if err := json.Unmarshal(res.Immediate.GetBody(), &body); err != nil {
				t.Fatal(err)
			}
			if body.Verdict != "block" || !slices.Contains(body.Reasons, "identity_mismatch") {
				t.Fatalf("verdict %s %v, want block identity_mismatch", body.Verdict, body.Reasons)
			}
			if learned {
				t.Fatalf("the refused stream taught %s's baseline", service)
			}
		})
	}
}

// TestExtProcPeerAuthorizerNeedsMutualTLS: without a client CA there is no authorizer (every
// claim believed, as before); with one, the trust domain is checked.
func TestExtProcPeerAuthorizerNeedsMutualTLS(t *testing.T) {
	if a, err := extProcPeerAuthorizer("", nodeauth.Config{TrustDomain: "cluster.local"}); a != nil || err != nil {
		t.Fatalf("without a client CA: %v, %v; want none", a != nil, err)
	}
	if _, err := extProcPeerAuthorizer("ca.pem", nodeauth.Config{TrustDomain: "Bad/Domain"}); err == nil {
		t.Fatal("a bad trust domain was accepted")
	}
}

// serveExtProcTLS serves ext_proc with mutual TLS on a loopback port and returns a client
// presenting client.
func serveExtProcTLS(t *testing.T, d extproc.Decider, cfg extproc.Config, ca *certtest.CA, client *certtest.Leaf) extprocv3.ExternalProcessorClient {
	t.Helper()
	srv, err := extproc.NewServer(d, cfg)
	if err != nil {
		t.Fatal(err)
	}
	server := ca.Server(t, "meshguard")
	creds := credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{server.TLS(t)},
		ClientCAs:    ca.Pool(), ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12,
	})
	gs := extproc.NewGRPCServer(srv, health.NewServer(), grpc.Creds(creds))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{client.TLS(t)}, RootCAs: ca.Pool(), ServerName: "localhost", MinVersion: tls.VersionTLS12,
	})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return extprocv3.NewExternalProcessorClient(conn)
}

// heldDecider holds decisions in progress while hold is set, for tests of --max-streams.
type heldDecider struct {
	extproc.Decider
	hold    atomic.Bool
	entered chan struct{} // receives once per held decision
	release chan struct{} // closed to let held decisions go
}

func newHeldDecider() *heldDecider {
	return &heldDecider{entered: make(chan struct{}, 16), release: make(chan struct{})}
}

func (d *heldDecider) wrap(inner extproc.Decider) extproc.Decider { d.Decider = inner; return d }

func (d *heldDecider) Decide(f *flowmodel.Flow) flowmodel.Verdict {
	if d.hold.Load() {
		d.entered <- struct{}{}
		<-d.release
	}
	return d.Decider.Decide(f)
}

// BenchmarkExtProcPeerAuthorizer is the cost of the check, once per ext_proc stream with
// mutual TLS: go test -run '^$' -bench ExtProcPeerAuthorizer ./cmd/meshguard/
func BenchmarkExtProcPeerAuthorizer(b *testing.B) {
	ca := certtest.NewCA(b, "mesh")
	leaf := ca.ClientURI(b, "payments", "spiffe://cluster.local/ns/shop/sa/payments")
	ctx := peer.NewContext(context.Background(), &peer.Peer{AuthInfo: credentials.TLSInfo{
		State: tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{leaf.Cert}}}}})
	authorize, err := extProcPeerAuthorizer("client-ca.pem", nodeauth.Config{TrustDomain: "cluster.local"})
	if err != nil {
		b.Fatal(err)
	}
	id := extproc.Identity{Service: "shop/payments", Source: extproc.IdentityNode}
	b.ReportAllocs()
	for b.Loop() {
		if err := authorize(ctx, id); err != nil {
			b.Fatal(err)
		}
	}
}
