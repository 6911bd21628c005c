package install

import (
	"maps"
	"path"
	"slices"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
)

const chartDir = "helm/meshguard"

func loadChart(t *testing.T) *chart.Chart {
	t.Helper()
	c, err := loader.Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	return c
}

// renderChart renders the chart as helm install --dry-run would on the client, with
// values given as a values file, and returns the rendered manifests by template name.
func renderChart(c *chart.Chart, valuesYAML string) (map[string]string, error) {
	vals, err := chartutil.ReadValues([]byte(valuesYAML))
	if err != nil {
		return nil, err
	}
	top, err := chartutil.ToRenderValues(c, vals, chartutil.ReleaseOptions{
		Name: "mg", Namespace: "meshguard", Revision: 1, IsInstall: true,
	}, chartutil.DefaultCapabilities)
	if err != nil {
		return nil, err
	}
	// Strict: a template that names a value missing from values.yaml fails.
	return engine.Engine{Strict: true}.Render(c, top)
}

// decodeRendered decodes every rendered manifest strictly; NOTES.txt must be non-empty.
func decodeRendered(t *testing.T, rendered map[string]string) []object {
	t.Helper()
	var objs []object
	for _, name := range slices.Sorted(maps.Keys(rendered)) {
		text := rendered[name]
		switch {
		case path.Base(name) == "NOTES.txt":
			if strings.TrimSpace(text) == "" {
				t.Error("NOTES.txt renders empty")
			}
			continue
		case strings.HasPrefix(path.Base(name), "_"):
			continue
		}
		o, err := decodeStream(name, []byte(text))
		if err != nil {
			t.Fatal(err)
		}
		objs = append(objs, o...)
	}
	return objs
}

type helmCase struct {
	name      string
	values    string
	wantKinds []string
	pod       podWant
	check     func(t *testing.T, objs []object)
}

func TestHelmChart(t *testing.T) {
	c := loadChart(t)
	if !chartutil.IsCompatibleRange(c.Metadata.KubeVersion, "v1.27.0") || chartutil.IsCompatibleRange(c.Metadata.KubeVersion, "v1.26.9") {
		t.Errorf("kubeVersion %q: gRPC probes need 1.27 and work from it", c.Metadata.KubeVersion)
	}
	tests := []helmCase{
		{
			name:      "defaults",
			values:    "",
			wantKinds: []string{"apps/v1/Deployment", "v1/ConfigMap", "v1/Service", "v1/ServiceAccount"},
			pod:       podWant{listen: "0.0.0.0:9001", xds: "0.0.0.0:18000", probes: true},
			check: func(t *testing.T, objs []object) {
				dep := one[*appsv1.Deployment](t, objs)
				if dep.Spec.Replicas == nil || *dep.Spec.Replicas != 1 {
					t.Errorf("replicas %v, want 1", dep.Spec.Replicas)
				}
				if v := dep.Spec.Template.Spec.Volumes[0]; v.EmptyDir == nil {
					t.Errorf("data volume %v, want an emptyDir without persistence", v)
				}
				if dep.Spec.Template.Labels["sidecar.istio.io/inject"] != "false" {
					t.Error("meshguard pod is not excluded from sidecar injection")
				}
				servicePorts(t, objs, 9001, 18000)
			},
		},
		{
			name:      "daemonset",
			values:    "kind: DaemonSet\n",
			wantKinds: []string{"apps/v1/DaemonSet", "v1/ConfigMap", "v1/Service", "v1/ServiceAccount"},
			pod:       podWant{listen: "0.0.0.0:9001", xds: "0.0.0.0:18000", probes: true},
			check: func(t *testing.T, objs []object) {
				svc := one[*corev1.Service](t, objs)
				got := "unset"
				if p := svc.Spec.InternalTrafficPolicy; p != nil {
					got = string(*p)
				}
				if got != string(corev1.ServiceInternalTrafficPolicyLocal) {
					t.Errorf("internalTrafficPolicy %s, want Local: each Envoy uses its node's meshguard", got)
				}
			},
		},
		{
			name: "persistent deployment with remote admin and network policy",
			values: `persistence:
  enabled: true
  storageClassName: fast
admin:
  allowRemote: true
networkPolicy:
  enabled: true
  from:
  - podSelector:
      matchLabels:
        istio: egressgateway
meshguard:
  defaultMode: monitor
  learnWindow: 168h
  learnMinRequests: 100
  afterLearning: enforce
  extraArgs: ["--log-level", "debug"]
otel:
  exporterEndpoint: http://otel-collector.observability:4317
  extraEnv:
    OTEL_TRACES_SAMPLER: parentbased_always_on
`,
			wantKinds: []string{"apps/v1/Deployment", "networking.k8s.io/v1/NetworkPolicy", "v1/ConfigMap", "v1/PersistentVolumeClaim", "v1/Service", "v1/ServiceAccount"},
			pod:       podWant{listen: "0.0.0.0:9001", xds: "0.0.0.0:18000", probes: true, adminRemote: true},
			check: func(t *testing.T, objs []object) {
				dep := one[*appsv1.Deployment](t, objs)
				pvc := one[*corev1.PersistentVolumeClaim](t, objs)
				if dep.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
					t.Errorf("strategy %s, want Recreate with a ReadWriteOnce claim", dep.Spec.Strategy.Type)
				}
				if v := dep.Spec.Template.Spec.Volumes[0]; v.PersistentVolumeClaim == nil || v.PersistentVolumeClaim.ClaimName != pvc.Name {
					t.Errorf("data volume %v, want claim %s", v, pvc.Name)
				}
				if pvc.Spec.StorageClassName == nil || *pvc.Spec.StorageClassName != "fast" {
					t.Errorf("storageClassName %v, want fast", pvc.Spec.StorageClassName)
				}
				args := meshguardContainer(t, &dep.Spec.Template.Spec).Args
				for flag, want := range map[string]string{
					"--admin-listen": "0.0.0.0:9002", "--default-mode": "monitor", "--learn-window": "168h",
					"--learn-min-requests": "100", "--after-learning": "enforce", "--log-level": "debug",
				} {
					if got, _ := flagValue(args, flag); got != want {
						t.Errorf("%s %q, want %q", flag, got, want)
					}
				}
				servicePorts(t, objs, 9001, 18000, 9002)
				np := one[*networkingv1.NetworkPolicy](t, objs)
				if !subset(np.Spec.PodSelector.MatchLabels, dep.Spec.Template.Labels) {
					t.Errorf("NetworkPolicy selects %v, not the meshguard pods", np.Spec.PodSelector.MatchLabels)
				}
				if len(np.Spec.Ingress) != 1 || len(np.Spec.Ingress[0].From) != 1 || len(np.Spec.Ingress[0].Ports) != 3 {
					t.Errorf("NetworkPolicy ingress %v, want the given peer on 3 ports", np.Spec.Ingress)
				}
				cm := one[*corev1.ConfigMap](t, objs)
				if cm.Data["OTEL_EXPORTER_OTLP_ENDPOINT"] != "http://otel-collector.observability:4317" || cm.Data["OTEL_TRACES_SAMPLER"] != "parentbased_always_on" {
					t.Errorf("OTel ConfigMap %v", cm.Data)
				}
			},
		},
		{
			name:      "no xds and an existing service account",
			values:    "xds:\n  enabled: false\nserviceAccount:\n  create: false\n  name: existing\n",
			wantKinds: []string{"apps/v1/Deployment", "v1/ConfigMap", "v1/Service"},
			pod:       podWant{listen: "0.0.0.0:9001", probes: true},
			check: func(t *testing.T, objs []object) {
				dep := one[*appsv1.Deployment](t, objs)
				if got := dep.Spec.Template.Spec.ServiceAccountName; got != "existing" {
					t.Errorf("serviceAccountName %q, want existing", got)
				}
				servicePorts(t, objs, 9001)
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rendered, err := renderChart(c, tt.values)
			if err != nil {
				t.Fatal(err)
			}
			objs := decodeRendered(t, rendered)
			var gotKinds []string
			for _, o := range objs {
				gotKinds = append(gotKinds, o.kind)
			}
			if !slices.Equal(sorted(gotKinds), sorted(tt.wantKinds)) {
				t.Fatalf("rendered %q, want %q", sorted(gotKinds), sorted(tt.wantKinds))
			}
			spec, selector, podLabels := workloadPod(t, objs)
			checkMeshguardPod(t, spec, tt.pod)
			if !subset(selector, podLabels) {
				t.Errorf("workload selects %v, pods are labelled %v", selector, podLabels)
			}
			svc := one[*corev1.Service](t, objs)
			if !subset(svc.Spec.Selector, podLabels) {
				t.Errorf("Service selects %v, pods are labelled %v", svc.Spec.Selector, podLabels)
			}
			mc := meshguardContainer(t, spec)
			for _, sp := range svc.Spec.Ports {
				if !slices.ContainsFunc(mc.Ports, func(cp corev1.ContainerPort) bool { return cp.Name == sp.TargetPort.String() }) {
					t.Errorf("Service port %s targets %s, which the container does not name", sp.Name, sp.TargetPort.String())
				}
			}
			cm := one[*corev1.ConfigMap](t, objs)
			if len(mc.EnvFrom) != 1 || mc.EnvFrom[0].ConfigMapRef == nil || mc.EnvFrom[0].ConfigMapRef.Name != cm.Name {
				t.Errorf("container does not load ConfigMap %s", cm.Name)
			}
			for _, sa := range only[*corev1.ServiceAccount](objs) {
				if spec.ServiceAccountName != sa.Name {
					t.Errorf("pod runs as %q, chart creates %q", spec.ServiceAccountName, sa.Name)
				}
			}
			tt.check(t, objs)
		})
	}
}

// workloadPod returns the pod template of the one Deployment or DaemonSet.
func workloadPod(t *testing.T, objs []object) (*corev1.PodSpec, map[string]string, map[string]string) {
	t.Helper()
	deps, dss := only[*appsv1.Deployment](objs), only[*appsv1.DaemonSet](objs)
	switch {
	case len(deps) == 1 && len(dss) == 0:
		d := deps[0]
		return &d.Spec.Template.Spec, d.Spec.Selector.MatchLabels, d.Spec.Template.Labels
	case len(dss) == 1 && len(deps) == 0:
		d := dss[0]
		return &d.Spec.Template.Spec, d.Spec.Selector.MatchLabels, d.Spec.Template.Labels
	}
	t.Fatalf("%d Deployments and %d DaemonSets, want one workload", len(deps), len(dss))
	return nil, nil, nil
}

func servicePorts(t *testing.T, objs []object, want ...int32) {
	t.Helper()
	var got []int32
	for _, p := range one[*corev1.Service](t, objs).Spec.Ports {
		got = append(got, p.Port)
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("Service ports %v, want %v", got, want)
	}
}

func TestHelmChartRejects(t *testing.T) {
	c := loadChart(t)
	tests := []struct {
		name    string
		values  string
		wantErr string
	}{
		{name: "unknown workload kind", values: "kind: StatefulSet\n", wantErr: "kind"},
		{name: "port out of range", values: "ports:\n  extproc: 70000\n", wantErr: "extproc"},
		{name: "unknown mode", values: "meshguard:\n  defaultMode: block\n", wantErr: "defaultMode"},
		{name: "persistence with a DaemonSet", values: "kind: DaemonSet\npersistence:\n  enabled: true\n", wantErr: "persistence.enabled needs kind: Deployment"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := renderChart(c, tt.values)
			if err == nil {
				t.Fatal("rendered")
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %q does not mention %q", err, tt.wantErr)
			}
		})
	}
}
