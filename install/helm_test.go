package install

import (
	"encoding/json"
	"maps"
	"os"
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
	check     func(t *testing.T, objs []object, cfg meshguardConfig)
}

// helmService is the DNS name of the chart's Service in the test release.
const helmService = "mg-meshguard.meshguard.svc.cluster.local"

func TestHelmChart(t *testing.T) {
	c := loadChart(t)
	if !chartutil.IsCompatibleRange(c.Metadata.KubeVersion, "v1.27.0") || chartutil.IsCompatibleRange(c.Metadata.KubeVersion, "v1.26.9") {
		t.Errorf("kubeVersion %q: gRPC probes need 1.27 and work from it", c.Metadata.KubeVersion)
	}
	central := podWant{listen: "0.0.0.0:9001", xds: "0.0.0.0:18000", probes: true}
	tests := []helmCase{
		{
			name:      "defaults",
			values:    "",
			wantKinds: []string{"apps/v1/Deployment", "networking.k8s.io/v1/NetworkPolicy", "v1/ConfigMap", "v1/ConfigMap", "v1/Service", "v1/ServiceAccount"},
			pod:       central,
			check: func(t *testing.T, objs []object, cfg meshguardConfig) {
				dep := one[*appsv1.Deployment](t, objs)
				if dep.Spec.Replicas == nil || *dep.Spec.Replicas != 1 {
					t.Errorf("replicas %v, want 1", dep.Spec.Replicas)
				}
				if dep.Spec.Template.Labels["sidecar.istio.io/inject"] != "false" {
					t.Error("meshguard pod is not excluded from sidecar injection")
				}
				servicePorts(t, objs, 9001, 18000, 9003)
				if !cfg.flag("insecure-listen") || cfg.str("tls-cert") != "" {
					t.Error("without tls.secretName the chart must say insecure-listen: true")
				}
				// No from: only the mesh's namespace.
				np := one[*networkingv1.NetworkPolicy](t, objs)
				if from := np.Spec.Ingress[0].From; len(from) != 1 || from[0].NamespaceSelector == nil ||
					from[0].NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"] != "istio-system" || from[0].PodSelector != nil {
					t.Errorf("NetworkPolicy without from admits %v, want only namespace istio-system", from)
				}
				if env := containerOTel(t, meshguardContainer(t, &dep.Spec.Template.Spec), only[*corev1.ConfigMap](objs)); env[envEndpoint] != "" || env[envProtocol] != "" {
					t.Errorf("OTel environment %v without otel.exporterEndpoint", env)
				}
			},
		},
		{
			name:      "daemonset",
			values:    "kind: DaemonSet\n",
			wantKinds: []string{"apps/v1/DaemonSet", "networking.k8s.io/v1/NetworkPolicy", "v1/ConfigMap", "v1/ConfigMap", "v1/Service", "v1/ServiceAccount"},
			pod:       central,
			check: func(t *testing.T, objs []object, _ meshguardConfig) {
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
			name: "persistent deployment with remote admin, options and network peers",
			values: `persistence:
  enabled: true
  storageClassName: fast
config:
  admin-listen: 0.0.0.0:9002
  admin-allow-remote: true
  default-mode: monitor
  learn-window: 168h
  learn-min-requests: 100
  after-learning: enforce
  log-level: debug
  max-message-bytes: 1048576
  rate-probation: 72h
  seasonal-utc-offset: -5h
  seasonal-warmup-days: 7
networkPolicy:
  from:
  - podSelector:
      matchLabels:
        istio: egressgateway
otel:
  exporterEndpoint: http://otel-collector.observability:4317
  extraEnv:
    OTEL_TRACES_SAMPLER: parentbased_always_on
`,
			wantKinds: []string{"apps/v1/Deployment", "networking.k8s.io/v1/NetworkPolicy", "v1/ConfigMap", "v1/ConfigMap", "v1/PersistentVolumeClaim", "v1/Service", "v1/ServiceAccount"},
			pod:       podWant{listen: "0.0.0.0:9001", xds: "0.0.0.0:18000", probes: true, adminRemote: true},
			check: func(t *testing.T, objs []object, cfg meshguardConfig) {
				dep := one[*appsv1.Deployment](t, objs)
				pvc := one[*corev1.PersistentVolumeClaim](t, objs)
				if dep.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
					t.Errorf("strategy %s, want Recreate with a ReadWriteOnce claim", dep.Spec.Strategy.Type)
				}
				if !slices.ContainsFunc(dep.Spec.Template.Spec.Volumes, func(v corev1.Volume) bool {
					return v.PersistentVolumeClaim != nil && v.PersistentVolumeClaim.ClaimName == pvc.Name
				}) {
					t.Errorf("Deployment does not mount claim %s", pvc.Name)
				}
				if pvc.Spec.StorageClassName == nil || *pvc.Spec.StorageClassName != "fast" {
					t.Errorf("storageClassName %v, want fast", pvc.Spec.StorageClassName)
				}
				// The Helm value name is the option name, and the value arrives as it was given.
				for option, want := range map[string]any{
					"admin-listen": "0.0.0.0:9002", "default-mode": "monitor", "learn-window": "168h",
					"learn-min-requests": float64(100), "after-learning": "enforce", "log-level": "debug",
					"max-message-bytes": float64(1048576), "listen": "0.0.0.0:9001",
					"rate-probation": "72h", "seasonal-utc-offset": "-5h", "seasonal-warmup-days": float64(7),
				} {
					if got := cfg[option]; got != want {
						t.Errorf("%s %v (%T), want %v", option, got, got, want)
					}
				}
				servicePorts(t, objs, 9001, 18000, 9002, 9003)
				np := one[*networkingv1.NetworkPolicy](t, objs)
				if len(np.Spec.Ingress[0].From) != 1 || np.Spec.Ingress[0].From[0].PodSelector.MatchLabels["istio"] != "egressgateway" || len(np.Spec.Ingress[0].Ports) != 3 {
					t.Errorf("NetworkPolicy ingress %v, want the given peer on ext_proc, xDS and admin", np.Spec.Ingress[0])
				}
				env := containerOTel(t, meshguardContainer(t, &dep.Spec.Template.Spec), only[*corev1.ConfigMap](objs))
				if env[envEndpoint] != "http://otel-collector.observability:4317" || env[envProtocol] != "grpc" || env["OTEL_TRACES_SAMPLER"] != "parentbased_always_on" {
					t.Errorf("OTel environment %v", env)
				}
			},
		},
		{
			name:      "no xds and an existing service account",
			values:    "config:\n  xds-listen: \"off\"\nserviceAccount:\n  create: false\n  name: existing\n",
			wantKinds: []string{"apps/v1/Deployment", "networking.k8s.io/v1/NetworkPolicy", "v1/ConfigMap", "v1/ConfigMap", "v1/Service"},
			pod:       podWant{listen: "0.0.0.0:9001", probes: true},
			check: func(t *testing.T, objs []object, cfg meshguardConfig) {
				dep := one[*appsv1.Deployment](t, objs)
				if got := dep.Spec.Template.Spec.ServiceAccountName; got != "existing" {
					t.Errorf("serviceAccountName %q, want existing", got)
				}
				servicePorts(t, objs, 9001, 9003)
				if _, ok := cfg["xds-ext-proc-address"]; ok {
					t.Error("xds-ext-proc-address set without xDS")
				}
			},
		},
		{
			name:      "mutual TLS from a Secret",
			values:    "tls:\n  secretName: meshguard-tls\n",
			wantKinds: []string{"apps/v1/Deployment", "networking.k8s.io/v1/NetworkPolicy", "v1/ConfigMap", "v1/ConfigMap", "v1/Service", "v1/ServiceAccount"},
			pod:       central,
			check: func(t *testing.T, objs []object, cfg meshguardConfig) {
				if _, ok := cfg["insecure-listen"]; ok {
					t.Error("insecure-listen set although TLS is configured")
				}
				want := map[string]string{
					"tls-cert": "/etc/meshguard/tls/tls.crt", "tls-key": "/etc/meshguard/tls/tls.key", "tls-client-ca": "/etc/meshguard/tls/ca.crt",
					"xds-tls-cert": "/etc/meshguard/tls/tls.crt", "xds-tls-key": "/etc/meshguard/tls/tls.key", "xds-tls-client-ca": "/etc/meshguard/tls/ca.crt",
				}
				for option, path := range want {
					if got := cfg.str(option); got != path {
						t.Errorf("%s %q, want %q", option, got, path)
					}
				}
				spec := &one[*appsv1.Deployment](t, objs).Spec.Template.Spec
				mc := meshguardContainer(t, spec)
				if !slices.ContainsFunc(mc.VolumeMounts, func(m corev1.VolumeMount) bool { return m.MountPath == "/etc/meshguard/tls" && m.ReadOnly }) ||
					!slices.ContainsFunc(spec.Volumes, func(v corev1.Volume) bool { return v.Secret != nil && v.Secret.SecretName == "meshguard-tls" }) {
					t.Error("Secret meshguard-tls is not mounted read-only at /etc/meshguard/tls")
				}
			},
		},
		{
			name:      "served addresses given explicitly, network policy off",
			values:    "config:\n  xds-ext-proc-address: meshguard.example.internal:9001\n  xds-access-log-address: meshguard.example.internal:18000\nnetworkPolicy:\n  enabled: false\n",
			wantKinds: []string{"apps/v1/Deployment", "v1/ConfigMap", "v1/ConfigMap", "v1/Service", "v1/ServiceAccount"},
			pod:       central,
			check: func(t *testing.T, _ []object, cfg meshguardConfig) {
				if got := cfg.str("xds-ext-proc-address"); got != "meshguard.example.internal:9001" {
					t.Errorf("xds-ext-proc-address %q: the chart overrode the given value", got)
				}
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
			cfg := checkConfigFile(t, spec, only[*corev1.ConfigMap](objs))
			checkMeshguardPod(t, spec, cfg, tt.pod)
			if !subset(selector, podLabels) {
				t.Errorf("workload selects %v, pods are labelled %v", selector, podLabels)
			}
			svc := one[*corev1.Service](t, objs)
			if !subset(svc.Spec.Selector, podLabels) {
				t.Errorf("Service selects %v, pods are labelled %v", svc.Spec.Selector, podLabels)
			}
			mc := meshguardContainer(t, spec)
			for _, sp := range svc.Spec.Ports {
				if !slices.ContainsFunc(mc.Ports, func(cp corev1.ContainerPort) bool {
					return cp.Name == sp.TargetPort.String() && cp.ContainerPort == sp.Port
				}) {
					t.Errorf("Service port %s (%d) targets %s, which the container does not name on that port", sp.Name, sp.Port, sp.TargetPort.String())
				}
			}
			if cfg.str("xds-listen") != "off" && cfg.str("xds-ext-proc-address") != "meshguard.example.internal:9001" {
				svc.Namespace = "meshguard" // rendered objects carry no namespace; the release's is meshguard
				checkServedAddresses(t, cfg, svc)
				if got := cfg.str("xds-ext-proc-address"); !strings.HasPrefix(got, helmService+":") {
					t.Errorf("xds-ext-proc-address %q, want the Service %s", got, helmService)
				}
			}
			if nps := only[*networkingv1.NetworkPolicy](objs); len(nps) == 1 {
				checkNetworkPolicy(t, nps[0], podLabels, cfg)
			}
			for _, sa := range only[*corev1.ServiceAccount](objs) {
				if spec.ServiceAccountName != sa.Name {
					t.Errorf("pod runs as %q, chart creates %q", spec.ServiceAccountName, sa.Name)
				}
			}
			tt.check(t, objs, cfg)
		})
	}
}

// TestHelmSchemaKnowsEveryOption keeps values.schema.json's config properties, which reject
// a misspelt option at install time, equal to the known options and their types.
func TestHelmSchemaKnowsEveryOption(t *testing.T) {
	data, err := os.ReadFile(chartDir + "/values.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	var schema struct {
		Properties struct {
			Config struct {
				AdditionalProperties *bool `json:"additionalProperties"`
				Properties           map[string]struct {
					Type string `json:"type"`
					Ref  string `json:"$ref"`
				} `json:"properties"`
			} `json:"config"`
		} `json:"properties"`
	}
	if err := json.Unmarshal(data, &schema); err != nil {
		t.Fatal(err)
	}
	cfg := schema.Properties.Config
	if cfg.AdditionalProperties == nil || *cfg.AdditionalProperties {
		t.Error("config allows additional properties: a misspelt option would render")
	}
	want := map[optionKind]string{kindString: "string", kindBool: "boolean", kindInt: "integer", kindFloat: "number", kindDuration: "#/definitions/duration",
		kindSignedDuration: "#/definitions/signedDuration"}
	for name, kind := range knownOptions {
		p, ok := cfg.Properties[name]
		if !ok {
			t.Errorf("schema lacks option %s", name)
			continue
		}
		if got := p.Type + p.Ref; got != want[kind] {
			t.Errorf("schema types %s as %q, want %q", name, got, want[kind])
		}
	}
	for name := range cfg.Properties {
		if _, ok := knownOptions[name]; !ok {
			t.Errorf("schema allows %s, which is not an option", name)
		}
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
		{name: "misspelt option", values: "config:\n  resolve-host: true\n", wantErr: "resolve-host"},
		{name: "flag spelling", values: "config:\n  --listen: 0.0.0.0:1\n", wantErr: "--listen"},
		{name: "option of the wrong type", values: "config:\n  resolve-hosts: \"yes\"\n", wantErr: "resolve-hosts"},
		{name: "unknown mode", values: "config:\n  default-mode: block\n", wantErr: "default-mode"},
		{name: "learning after learning", values: "config:\n  after-learning: learn\n", wantErr: "after-learning"},
		{name: "bad duration", values: "config:\n  learn-window: 7d\n", wantErr: "learn-window"},
		{name: "negative interval", values: "config:\n  rate-interval: -5m\n", wantErr: "rate-interval"},
		{name: "no seasonal warm-up", values: "config:\n  seasonal-warmup-days: 0\n", wantErr: "seasonal-warmup-days"},
		{name: "seasonal threshold of zero", values: "config:\n  seasonal-threshold: 0\n", wantErr: "seasonal-threshold"},
		{name: "seasonal offset in days", values: "config:\n  seasonal-utc-offset: -1d\n", wantErr: "seasonal-utc-offset"},
		{name: "no health listener", values: "config:\n  health-listen: null\n", wantErr: "health-listen"},
		{name: "unix socket behind a Service", values: "config:\n  listen: unix:///run/meshguard/extproc.sock\n", wantErr: "needs host:port"},
		{name: "persistence with a DaemonSet", values: "kind: DaemonSet\npersistence:\n  enabled: true\n", wantErr: "persistence.enabled needs kind: Deployment"},
		{name: "replicas sharing one ReadWriteOnce claim", values: "replicaCount: 2\npersistence:\n  enabled: true\n", wantErr: "one ReadWriteOnce claim"},
		{name: "network policy admitting everyone", values: "networkPolicy:\n  enabled: true\n  meshNamespace: \"\"\n", wantErr: "would admit everyone"},
		{name: "OTLP gRPC port with http/protobuf", values: "otel:\n  exporterEndpoint: http://c:4317\n  exporterProtocol: http/protobuf\n", wantErr: "every span would be lost"},
		{name: "OTLP HTTP port with grpc", values: "otel:\n  exporterEndpoint: http://c:4318\n  exporterProtocol: grpc\n", wantErr: "every span would be lost"},
		{name: "OTLP own port without protocol", values: "otel:\n  exporterEndpoint: https://otlp.example.com\n", wantErr: "otel.exporterProtocol"},
		{name: "OTLP protocol through extraEnv", values: "otel:\n  extraEnv:\n    OTEL_EXPORTER_OTLP_PROTOCOL: grpc\n", wantErr: "otel.extraEnv.OTEL_EXPORTER_OTLP_PROTOCOL"},
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
