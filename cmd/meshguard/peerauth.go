package main

import (
	"context"
	"fmt"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshguard/meshguard/controlplane/nodeauth"
	"github.com/meshguard/meshguard/extproc"
	"github.com/meshguard/meshguard/extproc/nodeid"
)

// extProcPeerAuthorizer returns the extproc.Config.AuthorizePeer of an ext_proc server with
// mutual TLS (clientCA, --tls-client-ca, set): a stream's identity must be one its client
// certificate may speak for, by the rules xDS and the access-log service apply
// (controlplane/nodeauth, with na's trust domain and account mappings):
//
//   - the certificate carries exactly one spiffe://<trust domain>/ns/NS/sa/SA;
//   - a gateway account (na.GatewayAccounts) vouches for the downstream connection it saw:
//     its streams must name their service by the downstream's certificate (peer-san) or
//     address (source-address), never by metadata or node claims (the gateway's own
//     node would name the gateway, and its x-meshguard-service would be a claim of its own);
//   - any other account speaks for itself: the service, from whichever source, must be
//     "NS/WORKLOAD" in the certificate's namespace, with WORKLOAD the account's SA or listed
//     for it in na.ServiceAccounts (so a peer-san or source-address identity naming another
//     workload is refused too).
//
// Without a client CA it returns nil: every claim is believed, which trusts every process
// that reaches the ext_proc listener (see extproc's peer.go and SECURITY.md).
func extProcPeerAuthorizer(clientCA string, na nodeauth.Config) (extproc.AuthorizePeerFunc, error) {
	if clientCA == "" {
		return nil, nil
	}
	na.Mutual = true
	a, err := nodeauth.New(na)
	if err != nil {
		return nil, fmt.Errorf("ext_proc peer authentication: %w", err)
	}
	gateway := &corev3.Node{Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{
		nodeid.MetaRole: structpb.NewStringValue("gateway"),
	}}}
	return func(ctx context.Context, id extproc.Identity) error {
		p, err := a.Peer(ctx)
		if err != nil {
			return err
		}
		if _, err := a.Authorize(p, gateway, ""); err == nil {
			switch id.Source {
			case extproc.IdentityPeerSAN, extproc.IdentitySourceAddress:
				return nil
			}
			return fmt.Errorf("gateway %s vouches only for the downstream it saw (peer-san, source-address), not for a %s identity %q",
				p.SPIFFEID, id.Source, id.Service)
		}
		ns, wl, ok := strings.Cut(id.Service, "/")
		if !ok || ns == "" || wl == "" || strings.Contains(wl, "/") {
			return fmt.Errorf("client certificate %s may not speak for %s identity %q: not a NS/WORKLOAD service",
				p.SPIFFEID, id.Source, id.Service)
		}
		node := &corev3.Node{Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{
			nodeid.MetaNamespace:    structpb.NewStringValue(ns),
			nodeid.MetaWorkloadName: structpb.NewStringValue(wl),
			nodeid.MetaRole:         structpb.NewStringValue("sidecar"),
		}}}
		if _, err := a.Authorize(p, node, id.Service); err != nil {
			return fmt.Errorf("%s identity: %w", id.Source, err)
		}
		return nil
	}, nil
}
