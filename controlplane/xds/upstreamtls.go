package xds

import (
	"errors"
	"fmt"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
)

// Defaults of UpstreamTLS: the SDS cluster and secret names of Istio's sidecar bootstrap
// (istio-agent serves the workload certificate as "default" and the mesh root as "ROOTCA").
const (
	DefaultSDSCluster        = "sds-grpc"
	DefaultCertificateSecret = "default"
	DefaultValidationSecret  = "ROOTCA"
)

// UpstreamTLS makes Envoy reach meshguard's gRPC servers over mutual TLS, presenting its
// workload certificate: the access-log service needs it when the control plane's listener
// has a client CA (controlplane.Config.TLS), and ext_proc when its listener does. Certificates
// come over SDS, so that they rotate with the mesh's; meshguard's server certificate must
// chain to the validation secret (the mesh root by default). The zero value: plaintext.
type UpstreamTLS struct {
	// ExtProc and AccessLog turn TLS on for the ext_proc and the access-log cluster.
	ExtProc   bool `json:"ext_proc,omitempty" yaml:"ext_proc,omitempty"`
	AccessLog bool `json:"access_log,omitempty" yaml:"access_log,omitempty"`
	// SDSCluster is the bootstrap cluster of the SDS server. Default DefaultSDSCluster.
	SDSCluster string `json:"sds_cluster,omitempty" yaml:"sds_cluster,omitempty"`
	// CertificateSecret and ValidationSecret name the SDS secrets of Envoy's certificate and
	// of the CAs meshguard's certificate must chain to. Defaults DefaultCertificateSecret and
	// DefaultValidationSecret.
	CertificateSecret string `json:"certificate_secret,omitempty" yaml:"certificate_secret,omitempty"`
	ValidationSecret  string `json:"validation_secret,omitempty" yaml:"validation_secret,omitempty"`
	// ServerName is the SNI Envoy sends; "" sends none.
	ServerName string `json:"server_name,omitempty" yaml:"server_name,omitempty"`
	// ServerSAN, when set, is a subject alternative name meshguard's certificate must carry
	// exactly: a spiffe:// URI or a DNS name. Without it any certificate of the validation
	// CAs is accepted.
	ServerSAN string `json:"server_san,omitempty" yaml:"server_san,omitempty"`
}

func (u UpstreamTLS) check() (UpstreamTLS, error) {
	if !u.ExtProc && !u.AccessLog {
		return u, nil
	}
	def := func(s *string, d string) {
		if *s == "" {
			*s = d
		}
	}
	def(&u.SDSCluster, DefaultSDSCluster)
	def(&u.CertificateSecret, DefaultCertificateSecret)
	def(&u.ValidationSecret, DefaultValidationSecret)
	var errs []error
	for _, s := range []string{u.SDSCluster, u.CertificateSecret, u.ValidationSecret, u.ServerName, u.ServerSAN} {
		if strings.ContainsAny(s, " \t\n") {
			errs = append(errs, fmt.Errorf("upstream TLS: %q contains white space", s))
		}
	}
	if u.ServerSAN != "" && strings.Contains(u.ServerSAN, "://") && !strings.HasPrefix(u.ServerSAN, "spiffe://") {
		errs = append(errs, fmt.Errorf("upstream TLS: server SAN %q: want a spiffe:// URI or a DNS name", u.ServerSAN))
	}
	return u, errors.Join(errs...)
}

// transportSocket is the TLS transport socket of a cluster that reaches meshguard.
func (b *builder) transportSocket() *corev3.TransportSocket {
	u := b.cfg.UpstreamTLS
	sds := func(name string) *tlsv3.SdsSecretConfig {
		return &tlsv3.SdsSecretConfig{Name: name, SdsConfig: &corev3.ConfigSource{
			ResourceApiVersion: corev3.ApiVersion_V3,
			ConfigSourceSpecifier: &corev3.ConfigSource_ApiConfigSource{ApiConfigSource: &corev3.ApiConfigSource{
				ApiType:                   corev3.ApiConfigSource_GRPC,
				TransportApiVersion:       corev3.ApiVersion_V3,
				SetNodeOnFirstMessageOnly: true,
				GrpcServices: []*corev3.GrpcService{{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
					EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: u.SDSCluster},
				}}},
			}},
		}}
	}
	common := &tlsv3.CommonTlsContext{
		AlpnProtocols:                  []string{"h2"},
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{sds(u.CertificateSecret)},
	}
	if u.ServerSAN == "" {
		common.ValidationContextType = &tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig{
			ValidationContextSdsSecretConfig: sds(u.ValidationSecret),
		}
	} else {
		typ := tlsv3.SubjectAltNameMatcher_DNS
		if strings.HasPrefix(u.ServerSAN, "spiffe://") {
			typ = tlsv3.SubjectAltNameMatcher_URI
		}
		common.ValidationContextType = &tlsv3.CommonTlsContext_CombinedValidationContext{
			CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
				DefaultValidationContext: &tlsv3.CertificateValidationContext{
					MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{{
						SanType: typ,
						Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: u.ServerSAN}},
					}},
				},
				ValidationContextSdsSecretConfig: sds(u.ValidationSecret),
			},
		}
	}
	ctx := &tlsv3.UpstreamTlsContext{Sni: u.ServerName, CommonTlsContext: common}
	return &corev3.TransportSocket{
		Name:       wellknown.TransportSocketTLS,
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: b.any(ctx)},
	}
}
