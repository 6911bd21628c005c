package install

import (
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/meshguard/meshguard/extproc/contract"
	networkingapi "istio.io/api/networking/v1alpha3"
	istionetv1 "istio.io/client-go/pkg/apis/networking/v1"
	istionetv1alpha3 "istio.io/client-go/pkg/apis/networking/v1alpha3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
)

var gatewayAttributes = []string{
	contract.AttrPeerURISAN,
	contract.AttrRequestedServer,
	contract.AttrSourceAddress,
}

func TestIstioEgressGateway(t *testing.T) {
	meshguard := decodeFile(t, "istio/egress-gateway/meshguard.yaml")
	egress := decodeFile(t, "istio/egress-gateway/egress.yaml")
	ef := one[*istionetv1alpha3.EnvoyFilter](t, decodeFile(t, "istio/egress-gateway/envoyfilter.yaml"))
	perNamespace := decodeFile(t, "istio/egress-gateway/namespace-policy.yaml")

	fc, err := readEnvoyFilter(ef)
	if err != nil {
		t.Fatal(err)
	}
	checkInsertedBeforeRouter(t, ef, networkingapi.EnvoyFilter_GATEWAY)
	if len(fc.extProcs) != 1 {
		t.Fatalf("%d ext_proc filters, want 1", len(fc.extProcs))
	}
	ep := fc.extProcs[0]
	checkExtProc(t, ep, gatewayAttributes)
	for _, a := range ep.GetRequestAttributes() {
		// In a gateway these describe the gateway, not the caller or the destination.
		if a == contract.AttrDestination || strings.HasPrefix(a, contract.AttrNodeMetadata) || a == contract.AttrNodeID {
			t.Errorf("gateway filter sends %s", a)
		}
	}
	if ep.GetFailureModeAllow() {
		t.Error("gateway filter fails open; the README documents fail-closed as its default")
	}
	checkAccessLogs(t, fc.accessLogs, []string{"envoy.access_loggers.http_grpc"})

	gwSelector := ef.Spec.GetWorkloadSelector().GetLabels()
	if len(gwSelector) == 0 {
		t.Fatal("gateway EnvoyFilter has no workloadSelector: it would apply to every proxy")
	}

	// The clusters reach the meshguard Service, which selects the Deployment.
	dep := one[*appsv1.Deployment](t, meshguard)
	svc := one[*corev1.Service](t, meshguard)
	if !subset(svc.Spec.Selector, dep.Spec.Template.Labels) {
		t.Errorf("Service selects %v, pods are labelled %v", svc.Spec.Selector, dep.Spec.Template.Labels)
	}
	svcHost := svc.Name + "." + svc.Namespace + ".svc.cluster.local"
	ports := map[string]uint32{}
	for _, name := range []string{extprocCluster, alsCluster} {
		c, ok := fc.clusters[name]
		if !ok {
			t.Fatalf("no cluster %s", name)
		}
		checkHTTP2(t, c)
		host, port := endpointOf(t, c)
		if host != svcHost {
			t.Errorf("cluster %s sends to %s, want %s", name, host, svcHost)
		}
		if !slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return uint32(p.Port) == port }) {
			t.Errorf("cluster %s sends to port %d, which Service %s does not expose", name, port, svc.Name)
		}
		ports[name] = port
	}
	cfg := checkConfigFile(t, &dep.Spec.Template.Spec, only[*corev1.ConfigMap](meshguard))
	if !cfg.flag("resolve-hosts") {
		t.Error("resolve-hosts is off: the gateway sends no destination.address, so the Host header alone would name the destination")
	}
	checkServedAddresses(t, cfg, svc)
	checkMeshguardPod(t, &dep.Spec.Template.Spec, cfg, podWant{
		listen: listenAddr("0.0.0.0", ports[extprocCluster]),
		xds:    listenAddr("0.0.0.0", ports[alsCluster]),
		probes: true,
	})
	if dep.Spec.Template.Labels["sidecar.istio.io/inject"] != "false" {
		t.Error("meshguard pod is not excluded from sidecar injection")
	}
	if dep.Spec.Replicas == nil || *dep.Spec.Replicas != 1 || dep.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
		t.Error("want one replica with the Recreate strategy (one baseline, a ReadWriteOnce claim)")
	}
	pvc := one[*corev1.PersistentVolumeClaim](t, meshguard)
	if !slices.ContainsFunc(dep.Spec.Template.Spec.Volumes, func(v corev1.Volume) bool {
		return v.PersistentVolumeClaim != nil && v.PersistentVolumeClaim.ClaimName == pvc.Name
	}) {
		t.Errorf("Deployment does not mount claim %s", pvc.Name)
	}
	if sa := one[*corev1.ServiceAccount](t, meshguard); dep.Spec.Template.Spec.ServiceAccountName != sa.Name {
		t.Errorf("Deployment runs as %q, want %q", dep.Spec.Template.Spec.ServiceAccountName, sa.Name)
	}

	// Only the gateway may talk to meshguard.
	np := one[*networkingv1.NetworkPolicy](t, meshguard)
	if !subset(np.Spec.PodSelector.MatchLabels, dep.Spec.Template.Labels) {
		t.Errorf("NetworkPolicy selects %v, not the meshguard pods", np.Spec.PodSelector.MatchLabels)
	}
	checkNetworkPolicy(t, np, dep.Spec.Template.Labels, cfg)
	if len(np.Spec.Ingress) == 0 || len(np.Spec.Ingress[0].From) != 1 || np.Spec.Ingress[0].From[0].PodSelector == nil ||
		!maps.Equal(np.Spec.Ingress[0].From[0].PodSelector.MatchLabels, gwSelector) || np.Spec.Ingress[0].From[0].NamespaceSelector != nil {
		t.Errorf("NetworkPolicy ingress %v, want ext_proc and access logs only from pods %v", np.Spec.Ingress, gwSelector)
	}
	for _, o := range meshguard {
		if ns := o.obj.(interface{ GetNamespace() string }).GetNamespace(); ns != "istio-system" {
			t.Errorf("%s: namespace %q, want istio-system beside the gateway", o.source, ns)
		}
	}

	// Routing: sidecars reach the gateway over ISTIO_MUTUAL, so the gateway sees the
	// caller's SPIFFE identity, and every routed host is in the registry.
	gw := one[*istionetv1.Gateway](t, egress)
	if !maps.Equal(gw.Spec.GetSelector(), gwSelector) {
		t.Errorf("Gateway selects %v, EnvoyFilter %v", gw.Spec.GetSelector(), gwSelector)
	}
	for _, s := range gw.Spec.GetServers() {
		if s.GetTls().GetMode().String() != "ISTIO_MUTUAL" {
			t.Errorf("Gateway server %s: TLS mode %s, want ISTIO_MUTUAL (identity comes from the peer certificate)", s.GetPort().GetName(), s.GetTls().GetMode())
		}
	}
	registered := map[string]bool{}
	for _, se := range only[*istionetv1.ServiceEntry](egress) {
		for _, h := range se.Spec.GetHosts() {
			registered[h] = true
		}
	}
	subsets := map[string]bool{}
	for _, dr := range only[*istionetv1.DestinationRule](egress) {
		for _, s := range dr.Spec.GetSubsets() {
			subsets[dr.Spec.GetHost()+"/"+s.GetName()] = true
		}
	}
	for _, vs := range only[*istionetv1.VirtualService](egress) {
		if !slices.Contains(vs.Spec.GetGateways(), "mesh") || !slices.Contains(vs.Spec.GetGateways(), gw.Name) {
			t.Errorf("VirtualService %s binds %v, want mesh and %s", vs.Name, vs.Spec.GetGateways(), gw.Name)
		}
		for _, h := range vs.Spec.GetHosts() {
			if !registered[h] {
				t.Errorf("VirtualService %s routes %s, which has no ServiceEntry (REGISTRY_ONLY would drop it)", vs.Name, h)
			}
		}
		for _, r := range vs.Spec.GetHttp() {
			for _, m := range r.GetMatch() {
				for _, g := range m.GetGateways() {
					if g != "mesh" && g != gw.Name {
						t.Errorf("VirtualService %s matches gateway %q, which is neither mesh nor %s", vs.Name, g, gw.Name)
					}
				}
			}
			for _, d := range r.GetRoute() {
				dst := d.GetDestination()
				if dst.GetSubset() != "" && !subsets[dst.GetHost()+"/"+dst.GetSubset()] {
					t.Errorf("VirtualService %s routes to subset %s of %s, which no DestinationRule defines", vs.Name, dst.GetSubset(), dst.GetHost())
				}
			}
		}
	}

	// Per namespace: REGISTRY_ONLY, and a NetworkPolicy that leaves no way out but DNS,
	// the mesh and istio-system.
	sc := one[*istionetv1.Sidecar](t, perNamespace)
	if got := sc.Spec.GetOutboundTrafficPolicy().GetMode().String(); got != "REGISTRY_ONLY" {
		t.Errorf("Sidecar outbound mode %s, want REGISTRY_ONLY", got)
	}
	backstop := one[*networkingv1.NetworkPolicy](t, perNamespace)
	if !slices.Contains(backstop.Spec.PolicyTypes, networkingv1.PolicyTypeEgress) || len(backstop.Spec.PodSelector.MatchLabels)+len(backstop.Spec.PodSelector.MatchExpressions) != 0 {
		t.Error("backstop must restrict the egress of every pod of the namespace")
	}
	for i, r := range backstop.Spec.Egress {
		if len(r.To) == 0 {
			t.Errorf("egress rule %d has no peers: it allows every destination", i)
		}
		for _, p := range r.To {
			if p.IPBlock != nil {
				t.Errorf("egress rule %d allows IP block %s around the gateway", i, p.IPBlock.CIDR)
			}
		}
	}
	for _, o := range perNamespace {
		if ns := o.obj.(interface{ GetNamespace() string }).GetNamespace(); ns != "" {
			t.Errorf("%s: namespace %q set; it is applied per namespace with kubectl -n", o.source, ns)
		}
	}
}
