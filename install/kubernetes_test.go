package install

import (
	"os"
	"slices"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

func TestKubernetes(t *testing.T) {
	objs := decodeFile(t, "kubernetes/meshguard.yaml")
	ns := one[*corev1.Namespace](t, objs)
	for _, o := range objs[1:] {
		if got := o.obj.(interface{ GetNamespace() string }).GetNamespace(); got != ns.Name {
			t.Errorf("%s: namespace %q, want %q", o.source, got, ns.Name)
		}
	}
	dep := one[*appsv1.Deployment](t, objs)
	checkMeshguardPod(t, &dep.Spec.Template.Spec, podWant{listen: "0.0.0.0:9001", xds: "0.0.0.0:18000", probes: true})

	svc := one[*corev1.Service](t, objs)
	if !subset(svc.Spec.Selector, dep.Spec.Template.Labels) {
		t.Errorf("Service selects %v, pods are labelled %v", svc.Spec.Selector, dep.Spec.Template.Labels)
	}
	c := meshguardContainer(t, &dep.Spec.Template.Spec)
	for _, sp := range svc.Spec.Ports {
		if !slices.ContainsFunc(c.Ports, func(cp corev1.ContainerPort) bool { return cp.Name == sp.TargetPort.String() }) {
			t.Errorf("Service port %s targets %s, which the container does not name", sp.Name, sp.TargetPort.String())
		}
	}
	cm := one[*corev1.ConfigMap](t, objs)
	if len(c.EnvFrom) != 1 || c.EnvFrom[0].ConfigMapRef == nil || c.EnvFrom[0].ConfigMapRef.Name != cm.Name {
		t.Errorf("container does not load ConfigMap %s", cm.Name)
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
	if _, port := endpointOf(t, clusters[0]); port != 18000 {
		t.Errorf("xDS cluster port %d, want meshguard's --xds-listen port 18000", port)
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
