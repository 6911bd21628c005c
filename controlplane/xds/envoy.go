package xds

import (
	"errors"
	"net/netip"
	"slices"
	"strconv"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	grpcalsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	httpinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/http_inspector/v3"
	originaldstv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	tlsinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	netrbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshguard/meshguard/extproc/nodeid"
)

// Envoy extension names not in go-control-plane's wellknown.
const (
	extProcFilterName      = "envoy.filters.http.ext_proc"
	tcpGRPCAccessLogName   = "envoy.access_loggers.tcp_grpc"
	httpProtocolOptionsKey = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
)

const (
	// listenerFiltersTimeout bounds how long tls_inspector and http_inspector wait for a
	// client's first bytes; after it the connection continues on the default (plain TCP)
	// chain, which still carries the RBAC.
	listenerFiltersTimeout = time.Second
	// maxEarlyDataBytes is what tcp_proxy buffers from the client while it waits for the
	// RBAC to allow the connection before connecting upstream.
	maxEarlyDataBytes = 64 << 10
	// localConnectTimeout is the connect timeout of the clusters that reach meshguard.
	localConnectTimeout = time.Second
)

// Stat prefixes of the generated filters.
const (
	statHTTP    = "meshguard_http"
	statTCP     = "meshguard_tcp"
	statTLS     = "meshguard_tls"
	statShadow  = "meshguard_shadow_"
	statExtProc = "meshguard"
)

// builder assembles the resources of one node; it records the first error of anypb.New.
type builder struct {
	cfg *Config
	id  nodeid.Identity
	err error
}

// any packs m deterministically (map entries in order), so that equal configurations give
// equal bytes and the controller can tell a change from a rebuild.
func (b *builder) any(m proto.Message) *anypb.Any {
	a := new(anypb.Any)
	if err := anypb.MarshalFrom(a, m, proto.MarshalOptions{Deterministic: true}); err != nil && b.err == nil {
		b.err = err
	}
	return a
}

func (b *builder) listener(np nodePolicy) *listenerv3.Listener {
	var chains []*listenerv3.FilterChain
	if np.enforcing(pathTCP) {
		chains = append(chains, b.serverFirstChains(np)...)
	}
	var httpFilters []*listenerv3.Filter
	if b.cfg.RBACOnHTTP {
		httpFilters = append(httpFilters, b.rbacFilters(np, pathTCP, statHTTP+"_")...)
	}
	httpFilters = append(httpFilters, &listenerv3.Filter{
		Name:       wellknown.HTTPConnectionManager,
		ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: b.any(b.hcm())},
	})
	chains = append(chains,
		&listenerv3.FilterChain{
			Name: "http",
			FilterChainMatch: &listenerv3.FilterChainMatch{
				TransportProtocol:    "raw_buffer",
				ApplicationProtocols: []string{"http/1.1", "h2c"},
			},
			Filters: httpFilters,
		},
		&listenerv3.FilterChain{
			Name:             "tls",
			FilterChainMatch: &listenerv3.FilterChainMatch{TransportProtocol: "tls"},
			Filters:          append(b.rbacFilters(np, pathTLS, statTLS+"_"), b.tcpProxy(statTLS, np.enforcing(pathTLS))),
		},
	)
	disabled := b.serverFirstPredicate()
	return &listenerv3.Listener{
		Name:             ListenerName,
		Address:          socketAddress(b.cfg.listener.Addr().String(), uint32(b.cfg.listener.Port())),
		TrafficDirection: corev3.TrafficDirection_OUTBOUND,
		ListenerFilters: []*listenerv3.ListenerFilter{
			b.listenerFilter(wellknown.OriginalDestination, &originaldstv3.OriginalDst{}, nil),
			b.listenerFilter(wellknown.TLSInspector, &tlsinspectorv3.TlsInspector{}, disabled),
			b.listenerFilter(wellknown.HTTPInspector, &httpinspectorv3.HttpInspector{}, disabled),
		},
		ListenerFiltersTimeout:           durationpb.New(listenerFiltersTimeout),
		ContinueOnListenerFiltersTimeout: true,
		FilterChains:                     chains,
		DefaultFilterChain: &listenerv3.FilterChain{
			Name:    "tcp",
			Filters: append(b.rbacFilters(np, pathTCP, statTCP+"_"), b.tcpProxy(statTCP, np.enforcing(pathTCP))),
		},
	}
}

// serverFirstPredicate keeps the inspectors, which wait for the client to speak, off the
// server-first ports.
func (b *builder) serverFirstPredicate() *listenerv3.ListenerFilterChainMatchPredicate {
	var rules []*listenerv3.ListenerFilterChainMatchPredicate
	for _, p := range slices.Sorted(slices.Values(b.cfg.ServerFirstPorts)) {
		rules = append(rules, &listenerv3.ListenerFilterChainMatchPredicate{
			Rule: &listenerv3.ListenerFilterChainMatchPredicate_DestinationPortRange{
				DestinationPortRange: &typev3.Int32Range{Start: int32(p), End: int32(p) + 1},
			},
		})
	}
	switch len(rules) {
	case 0:
		return nil
	case 1:
		return rules[0]
	}
	return &listenerv3.ListenerFilterChainMatchPredicate{
		Rule: &listenerv3.ListenerFilterChainMatchPredicate_OrMatch{
			OrMatch: &listenerv3.ListenerFilterChainMatchPredicate_MatchSet{Rules: rules},
		},
	}
}

// serverFirstChains give the allowed IPs of each server-first port a chain that connects
// at once; other IPs on those ports fall to the default chain and stay refused.
func (b *builder) serverFirstChains(np nodePolicy) []*listenerv3.FilterChain {
	var out []*listenerv3.FilterChain
	for _, port := range slices.Sorted(slices.Values(b.cfg.ServerFirstPorts)) {
		ips := np.serverFirst[port]
		if len(ips) == 0 {
			continue
		}
		ranges := make([]*corev3.CidrRange, len(ips))
		for i, ip := range ips {
			ranges[i] = cidr(netip.PrefixFrom(ip, ip.BitLen()))
		}
		stat := statTCP + "_server_first"
		out = append(out, &listenerv3.FilterChain{
			Name: "server_first_" + strconv.FormatUint(uint64(port), 10),
			FilterChainMatch: &listenerv3.FilterChainMatch{
				DestinationPort: wrapperspb.UInt32(port),
				PrefixRanges:    ranges,
			},
			Filters: append(b.rbacFilters(np, pathTCP, stat+"_"), b.tcpProxy(stat, false)),
		})
	}
	return out
}

func (b *builder) listenerFilter(name string, m proto.Message, disabled *listenerv3.ListenerFilterChainMatchPredicate) *listenerv3.ListenerFilter {
	return &listenerv3.ListenerFilter{
		Name:           name,
		ConfigType:     &listenerv3.ListenerFilter_TypedConfig{TypedConfig: b.any(m)},
		FilterDisabled: disabled,
	}
}

// rbacFilters returns the network RBAC filter of a path, or none when the node has neither
// enforcing nor shadow rules there.
func (b *builder) rbacFilters(np nodePolicy, p path, statPrefix string) []*listenerv3.Filter {
	rules, shadow := np.rules[p], np.shadow[p]
	if rules == nil && shadow == nil {
		return nil
	}
	cfg := &netrbacv3.RBAC{
		StatPrefix:  statPrefix,
		Rules:       rules,
		ShadowRules: shadow,
	}
	if shadow != nil {
		cfg.ShadowRulesStatPrefix = statShadow
	}
	return []*listenerv3.Filter{{
		Name:       wellknown.RoleBasedAccessControl,
		ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: b.any(cfg)},
	}}
}

// tcpProxy proxies to the original destination. When enforcing, it connects only once the
// client's first bytes have passed the RBAC filter before it.
func (b *builder) tcpProxy(statPrefix string, enforcing bool) *listenerv3.Filter {
	tp := &tcpproxyv3.TcpProxy{
		StatPrefix:       statPrefix,
		ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: ClusterOriginalDst},
		AccessLog:        b.accessLogs(tcpGRPCAccessLogName),
	}
	if enforcing {
		tp.UpstreamConnectMode = tcpproxyv3.UpstreamConnectMode_ON_DOWNSTREAM_DATA
		tp.MaxEarlyDataBytes = wrapperspb.UInt32(maxEarlyDataBytes)
	}
	return &listenerv3.Filter{
		Name:       wellknown.TCPProxy,
		ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: b.any(tp)},
	}
}

func (b *builder) hcm() *hcmv3.HttpConnectionManager {
	return &hcmv3.HttpConnectionManager{
		StatPrefix: statHTTP,
		CodecType:  hcmv3.HttpConnectionManager_AUTO,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			RouteConfigName: RouteName,
			ConfigSource: &corev3.ConfigSource{
				ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
				ResourceApiVersion:    corev3.ApiVersion_V3,
			},
		}},
		HttpFilters: []*hcmv3.HttpFilter{
			{Name: extProcFilterName, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: b.any(b.extProc())}},
			{Name: wellknown.Router, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: b.any(&routerv3.Router{})}},
		},
		AccessLog: b.accessLogs(wellknown.HTTPGRPCAccessLog),
	}
}

// ExtProc returns the ext_proc filter configuration for a node: the one Build puts on the
// HTTP path, for install material that configures Envoy statically.
func (g *Generator) ExtProc(id nodeid.Identity) *extprocv3.ExternalProcessor {
	b := builder{cfg: &g.cfg, id: id}
	return b.extProc()
}

func (b *builder) extProc() *extprocv3.ExternalProcessor {
	return &extprocv3.ExternalProcessor{
		GrpcService:        b.grpcService(ClusterExtProc),
		FailureModeAllow:   b.cfg.FailureModeAllow,
		ProcessingMode:     proto.Clone(b.cfg.mode).(*extprocv3.ProcessingMode),
		RequestAttributes:  slices.Clone(b.cfg.RequestAttributes),
		ResponseAttributes: slices.Clone(b.cfg.ResponseAttributes),
		MessageTimeout:     durationpb.New(b.cfg.MessageTimeout),
		StatPrefix:         statExtProc,
	}
}

// grpcService reaches a meshguard cluster; a sidecar's streams name its service.
func (b *builder) grpcService(cluster string) *corev3.GrpcService {
	gs := &corev3.GrpcService{
		TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: cluster}},
	}
	if b.id.Role == nodeid.RoleSidecar && b.id.Service != "" {
		gs.InitialMetadata = []*corev3.HeaderValue{{Key: ServiceMetadataKey, Value: b.id.Service}}
	}
	return gs
}

func (b *builder) accessLogs(name string) []*accesslogv3.AccessLog {
	if b.cfg.DisableAccessLog {
		return nil
	}
	common := &grpcalsv3.CommonGrpcAccessLogConfig{
		LogName:             AccessLogName,
		GrpcService:         b.grpcService(ClusterAccessLog),
		TransportApiVersion: corev3.ApiVersion_V3,
	}
	var cfg proto.Message
	switch name {
	case wellknown.HTTPGRPCAccessLog:
		cfg = &grpcalsv3.HttpGrpcAccessLogConfig{CommonConfig: common}
	case tcpGRPCAccessLogName:
		cfg = &grpcalsv3.TcpGrpcAccessLogConfig{CommonConfig: common}
	default:
		if b.err == nil {
			b.err = errors.New("unknown access logger " + name)
		}
		return nil
	}
	return []*accesslogv3.AccessLog{{
		Name:       name,
		ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: b.any(cfg)},
	}}
}

func (b *builder) routes() *routev3.RouteConfiguration {
	return &routev3.RouteConfiguration{
		Name: RouteName,
		VirtualHosts: []*routev3.VirtualHost{{
			Name:    "original_destination",
			Domains: []string{"*"},
			Routes: []*routev3.Route{{
				Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{
					ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: ClusterOriginalDst},
					// Egress traffic includes long downloads and streams: no route timeout.
					Timeout: durationpb.New(0),
				}},
			}},
		}},
	}
}

func (b *builder) clusters() []*clusterv3.Cluster {
	out := []*clusterv3.Cluster{
		{
			Name:                 ClusterOriginalDst,
			ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_ORIGINAL_DST},
			LbPolicy:             clusterv3.Cluster_CLUSTER_PROVIDED,
			ConnectTimeout:       durationpb.New(b.cfg.UpstreamConnectTimeout),
		},
		b.grpcCluster(ClusterExtProc, b.cfg.extProc, b.cfg.UpstreamTLS.ExtProc),
	}
	if !b.cfg.DisableAccessLog {
		out = append(out, b.grpcCluster(ClusterAccessLog, b.cfg.accessLog, b.cfg.UpstreamTLS.AccessLog))
	}
	return out
}

// grpcCluster reaches a meshguard gRPC server over HTTP/2, over TLS when tls is set (see
// UpstreamTLS).
func (b *builder) grpcCluster(name string, ep endpoint, tls bool) *clusterv3.Cluster {
	typ := clusterv3.Cluster_STATIC
	var addr *corev3.Address
	switch {
	case ep.pipe != "":
		addr = &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: ep.pipe}}}
	case ep.dns:
		typ = clusterv3.Cluster_STRICT_DNS
		addr = socketAddress(ep.host, ep.port)
	default:
		addr = socketAddress(ep.host, ep.port)
	}
	h2 := &upstreamhttpv3.HttpProtocolOptions{
		UpstreamProtocolOptions: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_{
			ExplicitHttpConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig{
				ProtocolConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{
					Http2ProtocolOptions: &corev3.Http2ProtocolOptions{},
				},
			},
		},
	}
	var ts *corev3.TransportSocket
	if tls {
		ts = b.transportSocket()
	}
	return &clusterv3.Cluster{
		Name:                 name,
		TransportSocket:      ts,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: typ},
		ConnectTimeout:       durationpb.New(localConnectTimeout),
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: name,
			Endpoints: []*endpointv3.LocalityLbEndpoints{{
				LbEndpoints: []*endpointv3.LbEndpoint{{
					HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: addr}},
				}},
			}},
		},
		TypedExtensionProtocolOptions: map[string]*anypb.Any{httpProtocolOptionsKey: b.any(h2)},
	}
}

func socketAddress(host string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Protocol:      corev3.SocketAddress_TCP,
		Address:       host,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}
