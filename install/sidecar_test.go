package install

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"text/template"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"github.com/meshguard/meshguard/extproc/contract"
	networkingapi "istio.io/api/networking/v1alpha3"
	istionetv1alpha3 "istio.io/client-go/pkg/apis/networking/v1alpha3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
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

// sidecarSockets is where the sidecar layout puts ext_proc and the access-log service.
const sidecarSockets = "/var/run/meshguard"

// workloadAnnotations reads the pod annotations istio/sidecar/workload-patch.yaml adds.
func workloadAnnotations(t *testing.T) map[string]string {
	t.Helper()
	data, err := os.ReadFile("istio/sidecar/workload-patch.yaml")
	if err != nil {
		t.Fatal(err)
	}
	j, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		t.Fatal(err)
	}
	var patch appsv1.Deployment
	if err := strictJSON(j, &patch); err != nil {
		t.Fatal(err)
	}
	if len(patch.Spec.Template.Spec.Containers) != 0 || len(patch.Spec.Template.Spec.Volumes) != 0 {
		t.Error("the workload patch changes containers or volumes; it only annotates")
	}
	return patch.Spec.Template.Annotations
}

// proxyMounts decodes sidecar.istio.io/userVolumeMount, the mounts Istio's sidecar template
// gives istio-proxy, into volume mounts.
func proxyMounts(t *testing.T, annotations map[string]string) []corev1.VolumeMount {
	t.Helper()
	var m map[string]corev1.VolumeMount
	if err := strictJSON([]byte(annotations["sidecar.istio.io/userVolumeMount"]), &m); err != nil {
		t.Fatalf("sidecar.istio.io/userVolumeMount: %v", err)
	}
	var out []corev1.VolumeMount
	for _, name := range slices.Sorted(maps.Keys(m)) {
		vm := m[name]
		vm.Name = name
		out = append(out, vm)
	}
	return out
}

// injectedPod is a guarded pod as Istio builds it: the application's pod, the meshguard
// template merged in (strategic merge, as Istio merges templates), and istio-proxy with the
// mounts of the userVolumeMount annotation. Only the mounts matter here.
func injectedPod(t *testing.T) *corev1.Pod {
	t.Helper()
	annotations := workloadAnnotations(t)
	if got := annotations["inject.istio.io/templates"]; got != "sidecar,meshguard" {
		t.Errorf("inject.istio.io/templates %q, want sidecar,meshguard", got)
	}
	app := corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Annotations: annotations},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{{Name: "app", Image: "shop/checkout",
				VolumeMounts: []corev1.VolumeMount{{Name: "app-data", MountPath: "/data"}}}},
			Volumes: []corev1.Volume{{Name: "app-data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}},
		},
	}
	appJSON, err := json.Marshal(app)
	if err != nil {
		t.Fatal(err)
	}
	tmplJSON, err := json.Marshal(renderInjectionTemplate(t))
	if err != nil {
		t.Fatal(err)
	}
	merged, err := strategicpatch.StrategicMergePatch(appJSON, tmplJSON, corev1.Pod{})
	if err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{}
	if err := json.Unmarshal(merged, pod); err != nil {
		t.Fatal(err)
	}
	pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: "istio-proxy", VolumeMounts: proxyMounts(t, annotations)})
	return pod
}

// reachers returns the containers of pod that can open a unix socket at path: those that
// mount a volume at a directory above it.
func reachers(pod *corev1.Pod, socket string) []string {
	var out []string
	for _, c := range pod.Spec.Containers {
		for _, m := range c.VolumeMounts {
			if strings.HasPrefix(socket, strings.TrimSuffix(m.MountPath, "/")+"/") {
				out = append(out, c.Name)
				break
			}
		}
	}
	slices.Sort(out)
	return out
}

// pipeOf returns the unix socket path a cluster sends to.
func pipeOf(t *testing.T, c *clusterv3.Cluster) string {
	t.Helper()
	eps := c.GetLoadAssignment().GetEndpoints()
	if len(eps) != 1 || len(eps[0].GetLbEndpoints()) != 1 {
		t.Fatalf("cluster %s: want one endpoint, got %v", c.GetName(), eps)
	}
	p := eps[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetPipe()
	if p == nil {
		t.Fatalf("cluster %s: endpoint is not a pipe (unix socket) address", c.GetName())
	}
	return p.GetPath()
}

// sidecarLayouts are the two variants of the sidecar layout.
var sidecarLayouts = []struct {
	name, filter, config string
	failOpen             bool
}{
	{name: "enforcing", filter: "istio/sidecar/envoyfilter.yaml", config: "istio/sidecar/config.yaml"},
	{name: "observe-only", filter: "istio/sidecar/envoyfilter-observe.yaml", config: "istio/sidecar/config-observe.yaml", failOpen: true},
}

func TestIstioSidecar(t *testing.T) {
	pod := renderInjectionTemplate(t)
	if len(pod.Spec.Containers) != 1 || len(pod.Spec.InitContainers) != 0 {
		t.Fatalf("the injection template adds %d containers and %d init containers, want only meshguard: it must not touch the application's", len(pod.Spec.Containers), len(pod.Spec.InitContainers))
	}
	var sockets *corev1.Volume
	for i, v := range pod.Spec.Volumes {
		if v.Name == "meshguard-sockets" {
			sockets = &pod.Spec.Volumes[i]
		}
	}
	if sockets == nil || sockets.EmptyDir == nil {
		t.Fatal("no emptyDir meshguard-sockets")
	}
	mounts := proxyMounts(t, workloadAnnotations(t))
	if len(mounts) != 1 || mounts[0].Name != sockets.Name || mounts[0].MountPath != sidecarSockets {
		t.Errorf("istio-proxy mounts %v, want only %s at %s", mounts, sockets.Name, sidecarSockets)
	}

	for _, tt := range sidecarLayouts {
		t.Run(tt.name, func(t *testing.T) {
			objs := decodeFile(t, tt.filter)
			ef := one[*istionetv1alpha3.EnvoyFilter](t, objs)
			if ef.Namespace != "" {
				t.Errorf("namespace %q set: the filter is applied per namespace with kubectl -n", ef.Namespace)
			}
			if ef.Name != "meshguard-sidecar" {
				t.Errorf("EnvoyFilter %s: both variants are named meshguard-sidecar, so that one replaces the other", ef.Name)
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
			if ep.GetFailureModeAllow() != tt.failOpen {
				t.Errorf("failure_mode_allow %v, want %v", ep.GetFailureModeAllow(), tt.failOpen)
			}
			checkAccessLogs(t, fc.accessLogs, []string{"envoy.access_loggers.http_grpc", "envoy.access_loggers.tcp_grpc"})
			if len(fc.clusters) != 2 {
				t.Errorf("clusters %v, want %s and %s", slices.Collect(maps.Keys(fc.clusters)), extprocCluster, alsCluster)
			}
			if sel := ef.Spec.GetWorkloadSelector().GetLabels(); !subset(sel, pod.Labels) {
				t.Errorf("EnvoyFilter selects %v, but the injection template labels pods %v", sel, pod.Labels)
			}

			cms := only[*corev1.ConfigMap](decodeFile(t, tt.config))
			if len(cms) != 1 || cms[0].Namespace != "" {
				t.Fatalf("%s: want one ConfigMap without a namespace (applied with kubectl -n)", tt.config)
			}
			cfg := checkConfigFile(t, &pod.Spec, cms)
			want := podWant{probes: true}
			for name, option := range map[string]*string{extprocCluster: &want.listen, alsCluster: &want.xds} {
				c, ok := fc.clusters[name]
				if !ok {
					t.Fatalf("no cluster %s", name)
				}
				checkHTTP2(t, c)
				path := pipeOf(t, c)
				if dir := filepath.Dir(path); dir != sidecarSockets {
					t.Errorf("cluster %s sends to %s, outside the socket volume %s", name, path, sidecarSockets)
				}
				*option = "unix://" + path
			}
			checkMeshguardPod(t, &pod.Spec, cfg, want)

			labels := ef.Labels
			switch {
			case tt.failOpen && labels["meshguard.io/layout"] != "observe-only":
				t.Error("a fail-open filter is not labelled meshguard.io/layout=observe-only")
			case !tt.failOpen && labels["meshguard.io/layout"] == "observe-only":
				t.Error("the enforcing filter is labelled observe-only")
			}
			if tt.failOpen {
				for _, option := range []string{"default-mode", "after-learning"} {
					if m := cfg.str(option); m == "enforce" || m == "quarantine" {
						t.Errorf("%s %s in an observe-only layout: it would block only while meshguard is up", option, m)
					}
				}
				if cfg.str("after-learning") != "monitor" {
					t.Errorf("after-learning %q, want monitor: observe-only alerts, never blocks", cfg.str("after-learning"))
				}
			}
		})
	}
}

// TestAdversarySidecarControlPlaneOutOfReach plays the compromised application container of
// a guarded pod (issue 10, cases 4 and 8): it shares the pod's network namespace, so
// everything on loopback or the pod IP is within its reach, but not the volumes it does not
// mount. ext_proc and the access-log service must be reachable only by meshguard and
// istio-proxy, the admin API and the admin token only by meshguard, and the only TCP
// listener must be the read-only health listener.
func TestAdversarySidecarControlPlaneOutOfReach(t *testing.T) {
	pod := injectedPod(t)
	for _, tt := range sidecarLayouts {
		t.Run(tt.name, func(t *testing.T) {
			cfg := checkConfigFile(t, &pod.Spec, only[*corev1.ConfigMap](decodeFile(t, tt.config)))
			wantReach := map[string][]string{
				"listen":       {"istio-proxy", "meshguard"},
				"xds-listen":   {"istio-proxy", "meshguard"},
				"admin-listen": {"meshguard"},
			}
			for option, want := range wantReach {
				addr := cfg.str(option)
				_, _, socket, err := splitListen(addr)
				if err != nil || socket == "" {
					t.Errorf("%s %q is not a unix socket: the application shares the pod's loopback and IP", option, addr)
					continue
				}
				if got := reachers(pod, socket); !slices.Equal(got, want) {
					t.Errorf("%s %s is reachable by %v, want only %v", option, socket, got, want)
				}
			}
			if got := reachers(pod, cfg.str("data-dir")+"/admin-token"); !slices.Equal(got, []string{"meshguard"}) {
				t.Errorf("the admin token in %s is readable by %v, want only meshguard", cfg.str("data-dir"), got)
			}
			for option := range knownOptions {
				if !strings.HasSuffix(option, "listen") || option == "insecure-listen" || option == "health-listen" {
					continue
				}
				if host, _, _, err := splitListen(cfg.str(option)); err == nil && host != "" {
					t.Errorf("%s %s listens on TCP, within the application's reach", option, cfg.str(option))
				}
			}
			if cfg.flag("insecure-listen") {
				t.Error("insecure-listen in the sidecar layout: nothing but the health listener may use TCP")
			}
			if cfg.flag("health-metrics") {
				t.Error("health-metrics in the sidecar layout: the application reaches the health listener, and decision counts would tell it which requests alerted")
			}
			// Memory (issue 10): the sidecar serves one pod; whatever services its requests
			// claim, the model stays far below the container's limit.
			if n, ok := cfg["max-services"].(float64); !ok || n <= 0 || n > 1000 { // JSON numbers
				t.Errorf("max-services %v: the sidecar layout bounds it (at most 1000) to stay within its memory limit", cfg["max-services"])
			}
			if cfg.flag("pprof") {
				t.Error("pprof on: it serves on the admin listener only, keep it off in production layouts")
			}
		})
	}
}
