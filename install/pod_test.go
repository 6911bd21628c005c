package install

import (
	"os"
	"slices"
	"strconv"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

const (
	imageRepo = "ghcr.io/meshguard/meshguard"
	dataDir   = "/var/lib/meshguard"
	nonroot   = 65532
)

// appVersion is the chart's appVersion, the image tag every manifest must use.
func appVersion(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile("helm/meshguard/Chart.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		AppVersion string `json:"appVersion"`
	}
	if err := yaml.Unmarshal(data, &c); err != nil {
		t.Fatal(err)
	}
	if c.AppVersion == "" {
		t.Fatal("Chart.yaml has no appVersion")
	}
	return c.AppVersion
}

// podWant is what a meshguard pod must look like in one layout.
type podWant struct {
	listen      string // listen option
	xds         string // xds-listen option, "" for none
	probes      bool   // HTTP probes on the health-listen port
	adminRemote bool   // admin-allow-remote
}

func meshguardContainer(t *testing.T, spec *corev1.PodSpec) *corev1.Container {
	t.Helper()
	for i := range spec.Containers {
		if spec.Containers[i].Name == "meshguard" {
			return &spec.Containers[i]
		}
	}
	t.Fatal("no container named meshguard")
	return nil
}

// checkMeshguardPod checks the meshguard container of a pod spec against its config file
// cfg: image, listeners, non-root security context, resources, data volume and probes.
func checkMeshguardPod(t *testing.T, spec *corev1.PodSpec, cfg meshguardConfig, w podWant) {
	t.Helper()
	c := meshguardContainer(t, spec)

	if want := imageRepo + ":" + appVersion(t); c.Image != want {
		t.Errorf("image %q, want %q", c.Image, want)
	}
	if len(c.Command) != 0 {
		t.Errorf("command %q overrides the image's /meshguard entrypoint", c.Command)
	}
	if got := cfg.str("listen"); got != w.listen {
		t.Errorf("listen %q, want %q", got, w.listen)
	}
	if got := cfg.str("xds-listen"); got != w.xds && !(w.xds == "" && got == "off") {
		t.Errorf("xds-listen %q, want %q", got, w.xds)
	}
	if got := cfg.str("data-dir"); got != dataDir {
		t.Errorf("data-dir %q, want %q", got, dataDir)
	}
	remote := cfg.flag("admin-allow-remote")
	if remote != w.adminRemote {
		t.Errorf("admin-allow-remote = %v, want %v", remote, w.adminRemote)
	}
	if admin := cfg.str("admin-listen"); admin == "" {
		t.Error("admin-listen unset: the built-in default is for a laptop, a layout names it")
	} else if host, _, _, err := splitListen(admin); err != nil {
		t.Errorf("admin-listen %q: %v", admin, err)
	} else if host != "" && !isLoopback(host) && !remote {
		t.Errorf("admin-listen %q is not loopback and admin-allow-remote is not set", admin)
	}
	// A TCP listener beyond loopback needs TLS (mutual TLS for xDS, as controlplane
	// demands) or an explicit insecure-listen.
	for _, l := range []struct {
		addr string
		tls  []string
	}{
		{cfg.str("listen"), []string{"tls-cert", "tls-key"}},
		{cfg.str("xds-listen"), []string{"xds-tls-cert", "xds-tls-key", "xds-tls-client-ca"}},
		{cfg.str("admin-listen"), []string{"admin-tls-cert", "admin-tls-key"}},
	} {
		host, _, _, err := splitListen(l.addr)
		if l.addr == "" || l.addr == "off" || err != nil || host == "" || isLoopback(host) || cfg.flag("insecure-listen") {
			continue
		}
		for _, option := range l.tls {
			if cfg.str(option) == "" {
				t.Errorf("%s is not loopback, has no %s and no insecure-listen: meshguard refuses to start", l.addr, option)
			}
		}
	}

	checkSecurity(t, spec.SecurityContext, c.SecurityContext)

	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		if q, ok := c.Resources.Limits[r]; !ok || q.IsZero() {
			t.Errorf("no %s limit", r)
		}
		if q, ok := c.Resources.Requests[r]; !ok || q.IsZero() {
			t.Errorf("no %s request", r)
		}
	}

	var mount *corev1.VolumeMount
	for i := range c.VolumeMounts {
		if c.VolumeMounts[i].MountPath == dataDir {
			mount = &c.VolumeMounts[i]
		}
	}
	if mount == nil || mount.ReadOnly {
		t.Fatalf("no writable volume mounted at %s", dataDir)
	}
	var vol *corev1.Volume
	for i := range spec.Volumes {
		if spec.Volumes[i].Name == mount.Name {
			vol = &spec.Volumes[i]
		}
	}
	if vol == nil || (vol.EmptyDir == nil && vol.PersistentVolumeClaim == nil) {
		t.Errorf("data volume %q is neither an emptyDir nor a claim", mount.Name)
	}

	if !w.probes {
		if c.LivenessProbe != nil || c.ReadinessProbe != nil || c.StartupProbe != nil {
			t.Error("probes set on a meshguard without a health listener")
		}
		return
	}
	health := cfg.str("health-listen")
	host, port, _, err := splitListen(health)
	if err != nil || port == "" || isLoopback(host) {
		t.Fatalf("health-listen %q: the kubelet dials the pod IP, want host:port beyond loopback (%v)", health, err)
	}
	var portName string
	for _, p := range c.Ports {
		if strconv.Itoa(int(p.ContainerPort)) == port {
			portName = p.Name
		}
	}
	for name, p := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
		if p == nil || p.HTTPGet == nil {
			t.Errorf("no HTTP %s probe", name)
			continue
		}
		want := map[string]string{"liveness": "/healthz", "readiness": "/readyz"}[name]
		if p.HTTPGet.Path != want {
			t.Errorf("%s probe path %q, want %q", name, p.HTTPGet.Path, want)
		}
		if got := p.HTTPGet.Port.String(); got != port && (portName == "" || got != portName) {
			t.Errorf("%s probe on port %s, want the health-listen port %s", name, got, port)
		}
		if p.HTTPGet.Scheme != "" && p.HTTPGet.Scheme != corev1.URISchemeHTTP {
			t.Errorf("%s probe scheme %s: the health listener is plain HTTP", name, p.HTTPGet.Scheme)
		}
	}
}

// checkSecurity checks the effective security context: the container's settings, else
// the pod's.
func checkSecurity(t *testing.T, pod *corev1.PodSecurityContext, c *corev1.SecurityContext) {
	t.Helper()
	if pod == nil {
		pod = &corev1.PodSecurityContext{}
	}
	if c == nil {
		t.Fatal("no container securityContext")
	}
	pick64 := func(cv, pv *int64) *int64 {
		if cv != nil {
			return cv
		}
		return pv
	}
	nonRoot := c.RunAsNonRoot
	if nonRoot == nil {
		nonRoot = pod.RunAsNonRoot
	}
	if nonRoot == nil || !*nonRoot {
		t.Error("runAsNonRoot is not true")
	}
	if u := pick64(c.RunAsUser, pod.RunAsUser); u == nil || *u != nonroot {
		t.Errorf("runAsUser %s, want %d", deref(u), nonroot)
	}
	if g := pick64(c.RunAsGroup, pod.RunAsGroup); g == nil || *g != nonroot {
		t.Errorf("runAsGroup %s, want %d", deref(g), nonroot)
	}
	if c.AllowPrivilegeEscalation == nil || *c.AllowPrivilegeEscalation {
		t.Error("allowPrivilegeEscalation is not false")
	}
	if c.ReadOnlyRootFilesystem == nil || !*c.ReadOnlyRootFilesystem {
		t.Error("readOnlyRootFilesystem is not true")
	}
	if c.Capabilities == nil || !slices.Equal(c.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(c.Capabilities.Add) != 0 {
		t.Errorf("capabilities %v, want drop [ALL] and add none", c.Capabilities)
	}
	seccomp := c.SeccompProfile
	if seccomp == nil {
		seccomp = pod.SeccompProfile
	}
	if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("seccompProfile %v, want RuntimeDefault", seccomp)
	}
}

func deref(p *int64) string {
	if p == nil {
		return "unset"
	}
	return strconv.FormatInt(*p, 10)
}

// subset reports whether every label of sel is in labels.
func subset(sel, labels map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}
