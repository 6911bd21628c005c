package main

import (
	"context"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
)

// TestServeServesXDS connects an ADS client to "serve" as a sidecar Envoy of shop/checkout
// would: it gets a valid listener, and after the operator enforces the service, a newer one
// whose RBAC allows the learned destination.
func TestServeServesXDS(t *testing.T) {
	ts := startTestServer(t, t.TempDir())
	learn(t, ts)

	conn, err := grpc.NewClient(ts.control.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ads, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	md, _ := structpb.NewStruct(map[string]any{"NAMESPACE": "shop", "WORKLOAD_NAME": "checkout"})
	node := &corev3.Node{Id: "sidecar~10.1.0.11~checkout-7d4b9c8f6d-x2x9z.shop~shop.svc.cluster.local", Metadata: md}
	if err := ads.Send(&discoverygrpc.DiscoveryRequest{Node: node, TypeUrl: resource.ListenerType}); err != nil {
		t.Fatal(err)
	}
	next := func() (*listenerv3.Listener, uint64) {
		for {
			r, err := ads.Recv()
			if err != nil {
				t.Fatal(err)
			}
			if err := ads.Send(&discoverygrpc.DiscoveryRequest{Node: node, TypeUrl: r.GetTypeUrl(), VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce()}); err != nil {
				t.Fatal(err)
			}
			if r.GetTypeUrl() != resource.ListenerType {
				continue
			}
			m, err := r.GetResources()[0].UnmarshalNew()
			if err != nil {
				t.Fatal(err)
			}
			l := m.(*listenerv3.Listener)
			if err := l.ValidateAll(); err != nil {
				t.Fatalf("listener does not validate: %v", err)
			}
			v, _ := strconv.ParseUint(r.GetVersionInfo(), 10, 64)
			return l, v
		}
	}
	l1, v1 := next()
	js := protojson.Format(l1)
	if err := contains(js, "envoy.filters.http.ext_proc", "xds.node.metadata['WORKLOAD_NAME']", "destination.address"); err != nil {
		t.Fatalf("%v in the listener", err)
	}
	if strings.Contains(js, "envoy.filters.network.rbac") {
		t.Fatal("RBAC while the service learns")
	}

	ts.mustSetMode(t, "shop/checkout", "enforce")
	l2, v2 := next()
	if v2 <= v1 {
		t.Fatalf("version %d after %d: versions must rise", v2, v1)
	}
	js = protojson.Format(l2)
	if err := contains(js, "envoy.filters.network.rbac", "203.0.113.10"); err != nil {
		t.Fatalf("%v in the enforced listener", err)
	}
	_, body := ts.http(t, "GET", "/metrics", nil)
	if err := contains(body, "meshguard_xds_nodes 1", "meshguard_xds_pushes_total"); err != nil {
		t.Fatalf("%v in /metrics", err)
	}
}

// With mutual TLS on ext_proc (tls-client-ca), the Envoy configuration meshguard serves
// reaches ext_proc over TLS with the workload's certificate; without it, in plaintext.
func TestExtProcMutualTLSReachesServedConfig(t *testing.T) {
	dir := t.TempDir()
	files := []string{"--tls-cert", filepath.Join(dir, "c.pem"), "--tls-key", filepath.Join(dir, "k.pem")}
	for _, tc := range []struct {
		name string
		args []string
		want bool
	}{
		{"plaintext", nil, false},
		{"server TLS only", files, false},
		{"mutual TLS", append(append([]string{}, files...), "--tls-client-ca", filepath.Join(dir, "ca.pem")), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := parseServe(tc.args)
			if err != nil {
				t.Fatal(err)
			}
			if got := cfg.xds.cfg.UpstreamTLS.ExtProc; got != tc.want {
				t.Errorf("served ext_proc cluster over TLS: %v, want %v", got, tc.want)
			}
		})
	}
}
