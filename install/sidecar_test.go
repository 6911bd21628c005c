package install

import (
	"bytes"
	"fmt"
	"maps"
	"os"
	"slices"
	"testing"
	"text/template"

	"github.com/meshguard/meshguard/extproc/contract"
	networkingapi "istio.io/api/networking/v1alpha3"
	istionetv1alpha3 "istio.io/client-go/pkg/apis/networking/v1alpha3"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// renderInjectionTemplate renders the meshguard injection template of
// istio/sidecar/injection-values.yaml as Istio's injector does (a Go text template
// producing a Pod overlay) and decodes the overlay strictly as a Pod.
func renderInjectionTemplate(t *testing.T) *corev1.Pod {
	t.Helper()
	data, err := os.ReadFile("istio/sidecar/injection-values.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var values struct {
		SidecarInjectorWebhook struct {
			Templates map[string]string `json:"templates"`
		} `json:"sidecarInjectorWebhook"`
	}
	j, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		t.Fatal(err)
	}
	if err := strictJSON(j, &values); err != nil {
		t.Fatal(err)
	}
	text, ok := values.SidecarInjectorWebhook.Templates["meshguard"]
	if !ok || len(values.SidecarInjectorWebhook.Templates) != 1 {
		t.Fatalf("want exactly the template meshguard, got %v", slices.Collect(maps.Keys(values.SidecarInjectorWebhook.Templates)))
	}
	tmpl, err := template.New("meshguard").Option("missingkey=error").Parse(text)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := tmpl.Execute(&out, map[string]any{}); err != nil {
		t.Fatal(err)
	}
	pj, err := yaml.YAMLToJSONStrict(out.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{}
	if err := strictJSON(pj, pod); err != nil {
		t.Fatalf("injection template: %v", err)
	}
	return pod
}

// listenAddr joins host and port the way meshguard's --listen flags spell them.
func listenAddr(host string, port uint32) string { return fmt.Sprintf("%s:%d", host, port) }

var sidecarAttributes = []string{
	contract.AttrNodeID,
	contract.AttrNodeNamespace,
	contract.AttrNodeWorkload,
	contract.AttrDestination,
	contract.AttrSourceAddress,
	contract.AttrRequestedServer,
}

func TestIstioSidecar(t *testing.T) {
	objs := decodeFile(t, "istio/sidecar/envoyfilter.yaml")
	ef := one[*istionetv1alpha3.EnvoyFilter](t, objs)
	if ef.Namespace != "" {
		t.Errorf("namespace %q set: the filter is applied per namespace with kubectl -n", ef.Namespace)
	}
	fc, err := readEnvoyFilter(ef)
	if err != nil {
		t.Fatal(err)
	}
	checkInsertedBeforeRouter(t, ef, networkingapi.EnvoyFilter_SIDECAR_OUTBOUND)
	if len(fc.extProcs) != 1 {
		t.Fatalf("%d ext_proc filters, want 1", len(fc.extProcs))
	}
	ep := fc.extProcs[0]
	checkExtProc(t, ep, sidecarAttributes)
	if !ep.GetFailureModeAllow() {
		t.Error("sidecar filter fails closed; the README documents fail-open as its default")
	}
	checkAccessLogs(t, fc.accessLogs, []string{"envoy.access_loggers.http_grpc", "envoy.access_loggers.tcp_grpc"})
	if len(fc.clusters) != 2 {
		t.Errorf("clusters %v, want %s and %s", slices.Collect(maps.Keys(fc.clusters)), extprocCluster, alsCluster)
	}

	pod := renderInjectionTemplate(t)
	if sel := ef.Spec.GetWorkloadSelector().GetLabels(); !subset(sel, pod.Labels) {
		t.Errorf("EnvoyFilter selects %v, but the injection template labels pods %v", sel, pod.Labels)
	}
	var want podWant
	for name, flag := range map[string]*string{extprocCluster: &want.listen, alsCluster: &want.xds} {
		c, ok := fc.clusters[name]
		if !ok {
			t.Fatalf("no cluster %s", name)
		}
		checkHTTP2(t, c)
		host, port := endpointOf(t, c)
		if host != "127.0.0.1" {
			t.Errorf("cluster %s sends to %s, want meshguard on 127.0.0.1 in the same pod", name, host)
		}
		*flag = listenAddr(host, port)
	}
	if want.listen != "127.0.0.1:9001" || want.xds != "127.0.0.1:18000" {
		t.Errorf("clusters send to %s and %s, want meshguard's ports 9001 and 18000", want.listen, want.xds)
	}
	checkMeshguardPod(t, &pod.Spec, want)
}
