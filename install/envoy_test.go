package install

import (
	"fmt"
	"slices"
	"testing"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	grpcalsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"github.com/meshguard/meshguard/extproc/contract"
	"google.golang.org/protobuf/proto"
	networkingapi "istio.io/api/networking/v1alpha3"
	istionetv1alpha3 "istio.io/client-go/pkg/apis/networking/v1alpha3"
)

// Names shared with meshguard's xDS server (controlplane/xds: ClusterExtProc,
// ClusterAccessLog, AccessLogName) and documented in the READMEs.
const (
	extprocCluster = "meshguard_ext_proc"
	alsCluster     = "meshguard_access_log"
	alsLogName     = "meshguard"
	extprocFilter  = contract.FilterName
	routerFilter   = "envoy.filters.http.router"
)

// filterConfig is what one EnvoyFilter adds to Envoy, every piece validated.
type filterConfig struct {
	clusters   map[string]*clusterv3.Cluster
	extProcs   []*extprocv3.ExternalProcessor
	accessLogs []*accesslogv3.AccessLog
}

// readEnvoyFilter decodes every patch value of an EnvoyFilter into its go-control-plane
// type and validates it. Complete values (an added cluster, an inserted HTTP filter) must
// pass ValidateAll with every Any inside them. A MERGE value is partial by nature (an
// HttpConnectionManager with only access_log set fails ValidateAll for its missing
// stat_prefix), so it is decoded strictly and the access loggers it adds are validated.
func readEnvoyFilter(ef *istionetv1alpha3.EnvoyFilter) (filterConfig, error) {
	fc := filterConfig{clusters: map[string]*clusterv3.Cluster{}}
	for i, p := range ef.Spec.GetConfigPatches() {
		if err := fc.add(p); err != nil {
			return fc, fmt.Errorf("configPatches[%d] (%s %s): %w", i, p.GetApplyTo(), p.GetPatch().GetOperation(), err)
		}
	}
	return fc, nil
}

func (fc *filterConfig) add(p *networkingapi.EnvoyFilter_EnvoyConfigObjectPatch) error {
	value := p.GetPatch().GetValue()
	op := p.GetPatch().GetOperation()
	switch {
	case p.GetApplyTo() == networkingapi.EnvoyFilter_CLUSTER && op == networkingapi.EnvoyFilter_Patch_ADD:
		c := &clusterv3.Cluster{}
		if err := envoyFromStruct(value, c); err != nil {
			return err
		}
		if err := validateDeep(c); err != nil {
			return err
		}
		if _, dup := fc.clusters[c.GetName()]; dup {
			return fmt.Errorf("cluster %q added twice", c.GetName())
		}
		fc.clusters[c.GetName()] = c
	case p.GetApplyTo() == networkingapi.EnvoyFilter_HTTP_FILTER && op == networkingapi.EnvoyFilter_Patch_INSERT_BEFORE:
		f := &hcmv3.HttpFilter{}
		if err := envoyFromStruct(value, f); err != nil {
			return err
		}
		if err := validateDeep(f); err != nil {
			return err
		}
		inner, err := f.GetTypedConfig().UnmarshalNew()
		if err != nil {
			return err
		}
		ep, ok := inner.(*extprocv3.ExternalProcessor)
		if !ok || f.GetName() != extprocFilter {
			return fmt.Errorf("HTTP filter %q of type %T, want %s", f.GetName(), inner, extprocFilter)
		}
		fc.extProcs = append(fc.extProcs, ep)
	case p.GetApplyTo() == networkingapi.EnvoyFilter_NETWORK_FILTER && op == networkingapi.EnvoyFilter_Patch_MERGE:
		f := &listenerv3.Filter{}
		if err := envoyFromStruct(value, f); err != nil {
			return err
		}
		inner, err := f.GetTypedConfig().UnmarshalNew()
		if err != nil {
			return err
		}
		var logs []*accesslogv3.AccessLog
		switch nf := inner.(type) {
		case *hcmv3.HttpConnectionManager:
			logs = nf.GetAccessLog()
			nf.AccessLog = nil
			if !proto.Equal(nf, &hcmv3.HttpConnectionManager{}) {
				return fmt.Errorf("merge sets more than access_log: %v", nf)
			}
		case *tcpproxyv3.TcpProxy:
			logs = nf.GetAccessLog()
			nf.AccessLog = nil
			if !proto.Equal(nf, &tcpproxyv3.TcpProxy{}) {
				return fmt.Errorf("merge sets more than access_log: %v", nf)
			}
		default:
			return fmt.Errorf("merge into %T is not checked by this test", inner)
		}
		if len(logs) == 0 {
			return fmt.Errorf("merge adds no access log")
		}
		for _, l := range logs {
			if err := validateDeep(l); err != nil {
				return err
			}
		}
		fc.accessLogs = append(fc.accessLogs, logs...)
	default:
		return fmt.Errorf("no validation written for this kind of patch")
	}
	return nil
}

// endpointOf returns the one host:port a cluster sends to.
func endpointOf(t *testing.T, c *clusterv3.Cluster) (string, uint32) {
	t.Helper()
	if got := c.GetLoadAssignment().GetClusterName(); got != c.GetName() {
		t.Errorf("cluster %s: load_assignment names cluster %q", c.GetName(), got)
	}
	eps := c.GetLoadAssignment().GetEndpoints()
	if len(eps) != 1 || len(eps[0].GetLbEndpoints()) != 1 {
		t.Fatalf("cluster %s: want one endpoint, got %v", c.GetName(), eps)
	}
	sa := eps[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
	if sa == nil {
		t.Fatalf("cluster %s: endpoint is not a socket address", c.GetName())
	}
	return sa.GetAddress(), sa.GetPortValue()
}

// checkHTTP2 fails unless the cluster speaks HTTP/2, which gRPC needs.
func checkHTTP2(t *testing.T, c *clusterv3.Cluster) {
	t.Helper()
	a, ok := c.GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
	if !ok {
		t.Fatalf("cluster %s: no HttpProtocolOptions", c.GetName())
	}
	opts := &upstreamhttpv3.HttpProtocolOptions{}
	if err := a.UnmarshalTo(opts); err != nil {
		t.Fatalf("cluster %s: %v", c.GetName(), err)
	}
	if opts.GetExplicitHttpConfig().GetHttp2ProtocolOptions() == nil {
		t.Errorf("cluster %s: not HTTP/2, gRPC needs it", c.GetName())
	}
}

// checkExtProc checks the ext_proc settings every meshguard filter shares (DESIGN.md).
func checkExtProc(t *testing.T, ep *extprocv3.ExternalProcessor, wantAttrs []string) {
	t.Helper()
	if got := ep.GetGrpcService().GetEnvoyGrpc().GetClusterName(); got != extprocCluster {
		t.Errorf("ext_proc cluster = %q, want %q", got, extprocCluster)
	}
	pm := ep.GetProcessingMode()
	if pm.GetRequestHeaderMode() != extprocv3.ProcessingMode_SEND ||
		pm.GetResponseHeaderMode() != extprocv3.ProcessingMode_SEND ||
		pm.GetRequestBodyMode() != extprocv3.ProcessingMode_NONE ||
		pm.GetResponseBodyMode() != extprocv3.ProcessingMode_NONE ||
		pm.GetRequestTrailerMode() != extprocv3.ProcessingMode_SKIP ||
		pm.GetResponseTrailerMode() != extprocv3.ProcessingMode_SKIP {
		t.Errorf("processing_mode = %v, want headers SEND, bodies NONE, trailers SKIP", pm)
	}
	if got := ep.GetMessageTimeout().AsDuration(); got != 200*time.Millisecond {
		t.Errorf("message_timeout = %v, want 200ms", got)
	}
	if got := ep.GetRequestAttributes(); !slices.Equal(sorted(got), sorted(wantAttrs)) {
		t.Errorf("request_attributes = %q, want %q", got, wantAttrs)
	}
	if got, want := ep.GetResponseAttributes(), contract.ResponseAttributes(); !slices.Equal(got, want) {
		t.Errorf("response_attributes = %q, want %q", got, want)
	}
}

// checkAccessLogs checks that the access loggers are meshguard's gRPC loggers of the
// wanted names, all sending to meshguard_access_log under log_name meshguard.
func checkAccessLogs(t *testing.T, logs []*accesslogv3.AccessLog, wantNames []string) {
	t.Helper()
	var names []string
	for _, l := range logs {
		names = append(names, l.GetName())
		inner, err := l.GetTypedConfig().UnmarshalNew()
		if err != nil {
			t.Fatal(err)
		}
		var common *grpcalsv3.CommonGrpcAccessLogConfig
		switch c := inner.(type) {
		case *grpcalsv3.HttpGrpcAccessLogConfig:
			common = c.GetCommonConfig()
		case *grpcalsv3.TcpGrpcAccessLogConfig:
			common = c.GetCommonConfig()
		default:
			t.Fatalf("access log %s: unexpected config %T", l.GetName(), inner)
		}
		if common.GetLogName() != alsLogName {
			t.Errorf("access log %s: log_name %q, want %q", l.GetName(), common.GetLogName(), alsLogName)
		}
		if got := common.GetGrpcService().GetEnvoyGrpc().GetClusterName(); got != alsCluster {
			t.Errorf("access log %s: cluster %q, want %q", l.GetName(), got, alsCluster)
		}
	}
	if !slices.Equal(sorted(names), sorted(wantNames)) {
		t.Errorf("access loggers %q, want %q", names, wantNames)
	}
}

// checkInsertedBeforeRouter checks that the HTTP_FILTER patch sits right before the router.
func checkInsertedBeforeRouter(t *testing.T, ef *istionetv1alpha3.EnvoyFilter, context networkingapi.EnvoyFilter_PatchContext) {
	t.Helper()
	var found bool
	for _, p := range ef.Spec.GetConfigPatches() {
		if got := p.GetMatch().GetContext(); got != context {
			t.Errorf("patch %s applies to context %s, want %s", p.GetApplyTo(), got, context)
		}
		if p.GetApplyTo() != networkingapi.EnvoyFilter_HTTP_FILTER {
			continue
		}
		found = true
		f := p.GetMatch().GetListener().GetFilterChain().GetFilter()
		if f.GetName() != "envoy.filters.network.http_connection_manager" || f.GetSubFilter().GetName() != routerFilter {
			t.Errorf("ext_proc is not matched against the router of the HTTP connection manager: %v", f)
		}
	}
	if !found {
		t.Error("no HTTP_FILTER patch")
	}
}

func sorted(s []string) []string {
	c := slices.Clone(s)
	slices.Sort(c)
	return c
}
