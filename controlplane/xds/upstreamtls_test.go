package xds

import (
	"testing"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/meshguard/meshguard/extproc/nodeid"
)

func TestUpstreamTLS(t *testing.T) {
	side := nodeid.Identity{Role: nodeid.RoleSidecar, Service: "shop/checkout"}
	for _, tc := range []struct {
		name             string
		tls              UpstreamTLS
		extProc, accLog  bool
		wantSAN, wantSNI string
	}{
		{name: "off", tls: UpstreamTLS{}},
		{name: "access log", tls: UpstreamTLS{AccessLog: true}, accLog: true},
		{name: "both, pinned SPIFFE", tls: UpstreamTLS{AccessLog: true, ExtProc: true, ServerSAN: "spiffe://cluster.local/ns/meshguard/sa/meshguard"},
			extProc: true, accLog: true, wantSAN: "spiffe://cluster.local/ns/meshguard/sa/meshguard"},
		{name: "ext_proc, DNS name", tls: UpstreamTLS{ExtProc: true, ServerSAN: "meshguard.meshguard.svc", ServerName: "meshguard.meshguard.svc"},
			extProc: true, wantSAN: "meshguard.meshguard.svc", wantSNI: "meshguard.meshguard.svc"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := build(t, newGen(t, Config{UpstreamTLS: tc.tls}), side)
			for name, want := range map[string]bool{ClusterExtProc: tc.extProc, ClusterAccessLog: tc.accLog} {
				ts := cluster(t, res, name).GetTransportSocket()
				if (ts != nil) != want {
					t.Fatalf("%s: transport socket %v, want TLS %v", name, ts, want)
				}
				if ts == nil {
					continue
				}
				m, err := ts.GetTypedConfig().UnmarshalNew()
				if err != nil {
					t.Fatal(err)
				}
				ctx := m.(*tlsv3.UpstreamTlsContext)
				common := ctx.GetCommonTlsContext()
				if got := common.GetTlsCertificateSdsSecretConfigs()[0]; got.GetName() != DefaultCertificateSecret ||
					got.GetSdsConfig().GetApiConfigSource().GetGrpcServices()[0].GetEnvoyGrpc().GetClusterName() != DefaultSDSCluster {
					t.Errorf("%s: certificate secret %v", name, got)
				}
				val := common.GetValidationContextSdsSecretConfig()
				var san string
				if cv := common.GetCombinedValidationContext(); cv != nil {
					val = cv.GetValidationContextSdsSecretConfig()
					san = cv.GetDefaultValidationContext().GetMatchTypedSubjectAltNames()[0].GetMatcher().GetExact()
				}
				if val.GetName() != DefaultValidationSecret || san != tc.wantSAN || ctx.GetSni() != tc.wantSNI {
					t.Errorf("%s: validation %v, SAN %q, SNI %q", name, val, san, ctx.GetSni())
				}
			}
		})
	}
	if _, err := NewGenerator(Config{UpstreamTLS: UpstreamTLS{AccessLog: true, ServerSAN: "https://meshguard"}}); err == nil {
		t.Error("an https:// server SAN was accepted")
	}
}
