package install

import (
	"net"
	"os"
	"slices"
	"strconv"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
)

// checkServedAddresses checks that the addresses meshguard's xDS hands to Envoys are its
// Service's DNS name and ports, not the 127.0.0.1 defaults (each Envoy's own loopback).
func checkServedAddresses(t *testing.T, cfg meshguardConfig, svc *corev1.Service) {
	t.Helper()
	svcHost := svc.Name + "." + svc.Namespace + ".svc.cluster.local"
	if svc.Namespace == "" {
		t.Fatalf("Service %s has no namespace", svc.Name)
	}
	for option, listen := range map[string]string{"xds-ext-proc-address": "listen", "xds-access-log-address": "xds-listen"} {
		_, wantPort, _, err := splitListen(cfg.str(listen))
		if err != nil {
			t.Fatalf("%s: %v", listen, err)
		}
		host, port, err := net.SplitHostPort(cfg.str(option))
		if err != nil {
			t.Errorf("%s %q: %v (the xDS would send Envoys to 127.0.0.1)", option, cfg.str(option), err)
			continue
		}
		if host != svcHost || port != wantPort {
			t.Errorf("%s %s:%s, want the Service %s:%s", option, host, port, svcHost, wantPort)
		}
		if !slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return strconv.Itoa(int(p.Port)) == port }) {
			t.Errorf("%s port %s is not a port of Service %s", option, port, svc.Name)
		}
	}
	if cfg.flag("xds-failure-mode-allow") {
		t.Error("xds-failure-mode-allow: the served filter would fail open")
	}
}

// checkNetworkPolicy checks that a NetworkPolicy selects the meshguard pods and admits to
// the ext_proc and xDS ports only listed peers, none of them "everyone".
func checkNetworkPolicy(t *testing.T, np *networkingv1.NetworkPolicy, podLabels map[string]string, cfg meshguardConfig) {
	t.Helper()
	if !subset(np.Spec.PodSelector.MatchLabels, podLabels) {
		t.Errorf("NetworkPolicy selects %v, not the meshguard pods %v", np.Spec.PodSelector.MatchLabels, podLabels)
	}
	guarded := map[string]bool{}
	for _, option := range []string{"listen", "xds-listen"} {
		if _, port, _, err := splitListen(cfg.str(option)); err == nil && port != "" {
			guarded[port] = true
		}
	}
	admitted := map[string]bool{}
	for i, rule := range np.Spec.Ingress {
		for _, p := range rule.Ports {
			if p.Port == nil {
				t.Errorf("ingress rule %d admits every port", i)
				continue
			}
			if !guarded[p.Port.String()] {
				continue
			}
			admitted[p.Port.String()] = true
			if len(rule.From) == 0 {
				t.Errorf("ingress rule %d admits everyone to port %s", i, p.Port.String())
			}
			for _, peer := range rule.From {
				if peer.IPBlock != nil || (peer.PodSelector == nil && peer.NamespaceSelector == nil) {
					t.Errorf("ingress rule %d admits %v to port %s", i, peer, p.Port.String())
				}
				if peer.NamespaceSelector != nil && len(peer.NamespaceSelector.MatchLabels)+len(peer.NamespaceSelector.MatchExpressions) == 0 && peer.PodSelector == nil {
					t.Errorf("ingress rule %d admits every namespace to port %s", i, p.Port.String())
				}
			}
		}
		if len(rule.Ports) == 0 {
			t.Errorf("ingress rule %d admits every port", i)
		}
	}
	for port := range guarded {
		if !admitted[port] {
			t.Errorf("port %s is not admitted by any rule", port)
		}
	}
}

func TestKubernetes(t *testing.T) {
	objs := decodeFile(t, "kubernetes/meshguard.yaml")
	ns := one[*corev1.Namespace](t, objs)
	for _, o := range objs[1:] {
		if got := o.obj.(interface{ GetNamespace() string }).GetNamespace(); got != ns.Name {
			t.Errorf("%s: namespace %q, want %q", o.source, got, ns.Name)
		}
	}
	dep := one[*appsv1.Deployment](t, objs)
	cfg := checkConfigFile(t, &dep.Spec.Template.Spec, only[*corev1.ConfigMap](objs))
	checkMeshguardPod(t, &dep.Spec.Template.Spec, cfg, podWant{listen: "0.0.0.0:9001", xds: "0.0.0.0:18000", probes: true})

	svc := one[*corev1.Service](t, objs)
	checkServedAddresses(t, cfg, svc)
	checkNetworkPolicy(t, one[*networkingv1.NetworkPolicy](t, objs), dep.Spec.Template.Labels, cfg)
	if !subset(svc.Spec.Selector, dep.Spec.Template.Labels) {
		t.Errorf("Service selects %v, pods are labelled %v", svc.Spec.Selector, dep.Spec.Template.Labels)
	}
	c := meshguardContainer(t, &dep.Spec.Template.Spec)
	for _, sp := range svc.Spec.Ports {
		if !slices.ContainsFunc(c.Ports, func(cp corev1.ContainerPort) bool { return cp.Name == sp.TargetPort.String() }) {
			t.Errorf("Service port %s targets %s, which the container does not name", sp.Name, sp.TargetPort.String())
		}
	}
	if env := containerOTel(t, c, only[*corev1.ConfigMap](objs)); env[envEndpoint] == "" {
		t.Error("no OTLP endpoint")
	}
	pvc := one[*corev1.PersistentVolumeClaim](t, objs)
	if !slices.ContainsFunc(dep.Spec.Template.Spec.Volumes, func(v corev1.Volume) bool {
		return v.PersistentVolumeClaim != nil && v.PersistentVolumeClaim.ClaimName == pvc.Name
	}) {
		t.Errorf("Deployment does not mount claim %s", pvc.Name)
	}
}

func TestEnvoyBootstrap(t *testing.T) {
	data, err := os.ReadFile("envoy/bootstrap.yaml")
	if err != nil {
		t.Fatal(err)
	}
	b := &bootstrapv3.Bootstrap{}
	if err := envoyFromYAML(data, b); err != nil {
		t.Fatal(err)
	}
	if err := validateDeep(b); err != nil {
		t.Fatal(err)
	}

	ads := b.GetDynamicResources().GetAdsConfig()
	if ads.GetApiType() != corev3.ApiConfigSource_GRPC || ads.GetTransportApiVersion() != corev3.ApiVersion_V3 {
		t.Errorf("ADS %s %s, want GRPC V3", ads.GetApiType(), ads.GetTransportApiVersion())
	}
	if len(ads.GetGrpcServices()) != 1 {
		t.Fatalf("ADS has %d gRPC services, want 1", len(ads.GetGrpcServices()))
	}
	xdsCluster := ads.GetGrpcServices()[0].GetEnvoyGrpc().GetClusterName()
	for name, src := range map[string]*corev3.ConfigSource{"lds": b.GetDynamicResources().GetLdsConfig(), "cds": b.GetDynamicResources().GetCdsConfig()} {
		if src.GetAds() == nil || src.GetResourceApiVersion() != corev3.ApiVersion_V3 {
			t.Errorf("%s does not come from ADS v3", name)
		}
	}
	if n := len(b.GetStaticResources().GetListeners()); n != 0 {
		t.Errorf("%d static listeners; listeners come from meshguard's xDS", n)
	}
	clusters := b.GetStaticResources().GetClusters()
	if len(clusters) != 1 || clusters[0].GetName() != xdsCluster || xdsCluster != "meshguard_xds" {
		t.Fatalf("static clusters %v, want only meshguard_xds used by ADS", clusters)
	}
	checkHTTP2(t, clusters[0])

	// meshguard's config beside it: every control-plane path is a unix socket, and the
	// bootstrap reaches xds-listen.
	data, err = os.ReadFile("envoy/config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := parseConfig(string(data))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := "unix://"+pipeOf(t, clusters[0]), cfg.str("xds-listen"); got != want {
		t.Errorf("xDS cluster sends to %s, meshguard's xds-listen is %s", got, want)
	}
	for option, want := range map[string]string{"xds-ext-proc-address": cfg.str("listen"), "xds-access-log-address": cfg.str("xds-listen")} {
		if got := cfg.str(option); got != want {
			t.Errorf("%s %q, want what meshguard listens on, %q", option, got, want)
		}
	}
	for _, option := range []string{"listen", "xds-listen", "admin-listen"} {
		if _, _, socket, err := splitListen(cfg.str(option)); err != nil || socket == "" {
			t.Errorf("%s %q is not a unix socket: on a host, loopback is open to the workloads (%v)", option, cfg.str(option), err)
		}
	}
	if host, _, _, err := splitListen(cfg.str("health-listen")); err != nil || !isLoopback(host) {
		t.Errorf("health-listen %q, want loopback", cfg.str("health-listen"))
	}
	if b.GetAdmin().GetAddress().GetPipe() == nil {
		t.Error("Envoy's admin interface is not on a unix socket: every local process could drain or stop Envoy")
	}

	md := b.GetNode().GetMetadata().GetFields()
	if role := md["MESHGUARD_ROLE"].GetStringValue(); role != "sidecar" {
		t.Errorf("node metadata MESHGUARD_ROLE %q, want sidecar: a gateway has no service of its own", role)
	}
	for _, k := range []string{"NAMESPACE", "WORKLOAD_NAME"} {
		if md[k].GetStringValue() == "" {
			t.Errorf("node metadata %s is empty: meshguard would name the service by node id", k)
		}
	}
	if b.GetNode().GetId() == "" {
		t.Error("node id is empty")
	}
}
