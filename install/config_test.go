package install

import (
	"fmt"
	"maps"
	"net"
	"path"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// optionKind is the YAML type an option's value must have in the config file.
type optionKind int

const (
	kindString optionKind = iota
	kindBool
	kindInt
	kindFloat
	kindDuration       // a string that Go's time.ParseDuration reads, not negative
	kindSignedDuration // the same, negative or not (an offset)
)

// knownOptions are the option names of `meshguard serve` and the YAML type of each. The
// option table itself lives in cmd/meshguard (package main, not importable): this list is
// kept equal to values.schema.json here (TestHelmSchemaKnowsEveryOption), and the schema to
// the option table there (cmd/meshguard TestInstallSchemaKnowsEveryOption), so a layout
// naming an option serve does not know fails a test.
var knownOptions = map[string]optionKind{
	// Existing options.
	"listen":                  kindString,
	"admin-hosts":             kindString,
	"admin-cert-roles":        kindString,
	"admin-cert-default-role": kindString,
	"backup-keep":             kindInt,
	"health-metrics":          kindBool,
	"admin-listen":            kindString,
	"admin-allow-remote":      kindBool,
	"data-dir":                kindString,
	"default-mode":            kindString,
	"learn-window":            kindDuration,
	"alert-episode-gap":       kindDuration,
	"learn-min-requests":      kindInt,
	"after-learning":          kindString,
	"max-destinations":        kindInt,
	"max-services":            kindInt,
	"alert-budget":            kindFloat,
	"block-reasons":           kindString,
	"disable":                 kindString,
	"probation":               kindInt,
	"probation-interval":      kindDuration,
	"host-prefix-v4":          kindInt,
	"host-prefix-v6":          kindInt,
	"xds-listen":              kindString,
	"xds-ext-proc-address":    kindString,
	"xds-access-log-address":  kindString,
	"xds-envoy-listener":      kindString,
	"xds-message-timeout":     kindDuration,
	"xds-failure-mode-allow":  kindBool,
	"xds-deny-all-when-empty": kindBool,
	"xds-rbac-on-http":        kindBool,
	"on-missing":              kindString,
	"decision-log-rate":       kindInt,
	"identity-order":          kindString,
	"decision-budget":         kindDuration,
	"on-budget":               kindString,
	"max-streams":             kindInt,
	"tls-cert":                kindString,
	"tls-key":                 kindString,
	"tls-client-ca":           kindString,
	"admin-tls-cert":          kindString,
	"admin-tls-key":           kindString,
	"admin-tls-client-ca":     kindString,
	"tls-reload-interval":     kindDuration,
	"pprof":                   kindBool,
	"flush-interval":          kindDuration,
	"lameduck":                kindDuration,
	"drain-timeout":           kindDuration,
	"resolve-hosts":           kindBool,
	"dns-servers":             kindString,
	"log-level":               kindString,
	"log-format":              kindString,
	// New options (options.md).
	"insecure-listen":            kindBool,
	"health-listen":              kindString,
	"admin-token-file":           kindString,
	"xds-tls-cert":               kindString,
	"xds-tls-key":                kindString,
	"xds-tls-client-ca":          kindString,
	"xds-trust-domain":           kindString,
	"first-message-timeout":      kindDuration,
	"max-streams-per-connection": kindInt,
	"max-message-bytes":          kindInt,
	"max-services-action":        kindString,
	"backup-interval":            kindDuration,
	"max-body-bytes":             kindInt,
	// The rate detectors (issue 11).
	"rate-interval":          kindDuration,
	"rate-probation":         kindDuration,
	"seasonal-warmup-days":   kindInt,
	"seasonal-threshold":     kindFloat,
	"seasonal-min-rate":      kindFloat,
	"seasonal-utc-offset":    kindSignedDuration,
	"seasonal-same-weekends": kindBool,
}

const (
	configDir  = "/etc/meshguard"
	configFile = configDir + "/config.yaml"
	configKey  = "config.yaml"
)

// meshguardConfig is a parsed meshguard config file: a flat map of option names.
type meshguardConfig map[string]any

// parseConfig reads a config file strictly (no duplicate keys) and checks that every key
// is a known option whose value has the option's type.
func parseConfig(text string) (meshguardConfig, error) {
	j, err := yaml.YAMLToJSONStrict([]byte(text))
	if err != nil {
		return nil, err
	}
	var c meshguardConfig
	if err := yaml.Unmarshal(j, &c); err != nil {
		return nil, err
	}
	if len(c) == 0 {
		return nil, fmt.Errorf("empty config file")
	}
	var errs []string
	for _, k := range slices.Sorted(maps.Keys(c)) {
		kind, ok := knownOptions[k]
		if !ok {
			errs = append(errs, fmt.Sprintf("%q is not an option of meshguard serve", k))
			continue
		}
		if err := checkKind(c[k], kind); err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", k, err))
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("config file: %s", strings.Join(errs, "; "))
	}
	return c, nil
}

func checkKind(v any, kind optionKind) error {
	switch kind {
	case kindBool:
		if _, ok := v.(bool); !ok {
			return fmt.Errorf("%v (%T) is not a boolean", v, v)
		}
	case kindInt, kindFloat:
		f, ok := v.(float64)
		if !ok {
			return fmt.Errorf("%v (%T) is not a number", v, v)
		}
		if kind == kindInt && f != float64(int64(f)) {
			return fmt.Errorf("%v is not an integer", v)
		}
	case kindDuration, kindSignedDuration:
		s, ok := v.(string)
		if !ok {
			return fmt.Errorf("%v (%T) is not a duration string", v, v)
		}
		d, err := time.ParseDuration(s)
		if err != nil {
			return err
		}
		if d < 0 && kind == kindDuration {
			return fmt.Errorf("%s is negative", s)
		}
	default:
		if _, ok := v.(string); !ok {
			return fmt.Errorf("%v (%T) is not a string", v, v)
		}
	}
	return nil
}

// str returns the string value of an option, "" when unset.
func (c meshguardConfig) str(name string) string {
	s, _ := c[name].(string)
	return s
}

// flag returns the boolean value of an option, false when unset.
func (c meshguardConfig) flag(name string) bool {
	b, _ := c[name].(bool)
	return b
}

// checkConfigFile checks that the meshguard container of a pod reads its configuration
// from a config file: args exactly serve --config FILE, FILE in a ConfigMap volume mounted
// read-only; it returns the parsed file.
func checkConfigFile(t *testing.T, spec *corev1.PodSpec, configMaps []*corev1.ConfigMap) meshguardConfig {
	t.Helper()
	c := meshguardContainer(t, spec)
	if want := []string{"serve", "--config", configFile}; !slices.Equal(c.Args, want) {
		t.Errorf("args %q, want %q: options belong in the config file", c.Args, want)
	}
	var mount *corev1.VolumeMount
	for i := range c.VolumeMounts {
		if c.VolumeMounts[i].MountPath == configDir {
			mount = &c.VolumeMounts[i]
		}
	}
	if mount == nil {
		t.Fatalf("nothing mounted at %s", configDir)
	}
	if !mount.ReadOnly {
		t.Errorf("config volume mounted writable")
	}
	var cmName string
	for _, v := range spec.Volumes {
		if v.Name == mount.Name && v.ConfigMap != nil {
			cmName = v.ConfigMap.Name
			if v.ConfigMap.Optional != nil && *v.ConfigMap.Optional {
				t.Errorf("config ConfigMap %s is optional: meshguard would start on built-in defaults", cmName)
			}
		}
	}
	if cmName == "" {
		t.Fatalf("volume %s is not a ConfigMap", mount.Name)
	}
	for _, cm := range configMaps {
		if cm.Name != cmName {
			continue
		}
		text, ok := cm.Data[configKey]
		if !ok {
			t.Fatalf("ConfigMap %s has no %s", cm.Name, configKey)
		}
		cfg, err := parseConfig(text)
		if err != nil {
			t.Fatalf("ConfigMap %s: %v", cm.Name, err)
		}
		for _, e := range c.Env {
			if strings.HasPrefix(e.Name, "MESHGUARD_") {
				t.Errorf("env %s: options belong in the config file", e.Name)
			}
		}
		return cfg
	}
	t.Fatalf("no ConfigMap %s among %d", cmName, len(configMaps))
	return nil
}

// splitListen splits a listen address into TCP host and port, or a unix socket path.
func splitListen(addr string) (host, port, socket string, err error) {
	if p, ok := strings.CutPrefix(addr, "unix://"); ok {
		if !path.IsAbs(p) {
			return "", "", "", fmt.Errorf("unix socket %q is not an absolute path", p)
		}
		return "", "", p, nil
	}
	host, port, err = net.SplitHostPort(addr)
	return host, port, "", err
}

// isLoopback reports whether a TCP listen host is a loopback address.
func isLoopback(host string) bool {
	ip := net.ParseIP(host)
	return host == "localhost" || (ip != nil && ip.IsLoopback())
}

func TestParseConfigRejects(t *testing.T) {
	tests := []struct {
		name, text, wantErr string
	}{
		{name: "valid", text: "listen: 0.0.0.0:9001\nresolve-hosts: true\nlearn-window: 168h\nmax-streams: 100\n"},
		{name: "unknown option", text: "listen: 0.0.0.0:9001\nxds-listen-address: x\n", wantErr: `"xds-listen-address" is not an option`},
		{name: "flag spelling", text: "--listen: 0.0.0.0:9001\n", wantErr: "not an option"},
		{name: "camel case", text: "dataDir: /var/lib/meshguard\n", wantErr: "not an option"},
		{name: "quoted boolean", text: "resolve-hosts: \"true\"\n", wantErr: "not a boolean"},
		{name: "bad duration", text: "learn-window: 7d\n", wantErr: "learn-window"},
		{name: "fractional int", text: "max-streams: 1.5\n", wantErr: "not an integer"},
		{name: "duplicate key", text: "listen: a:1\nlisten: b:2\n", wantErr: "already set"},
		{name: "nested", text: "xds:\n  listen: x\n", wantErr: "not an option"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseConfig(tt.text)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("valid control failed: %v", err)
			case tt.wantErr != "" && err == nil:
				t.Fatal("accepted")
			case tt.wantErr != "" && !strings.Contains(err.Error(), tt.wantErr):
				t.Fatalf("error %q does not mention %q", err, tt.wantErr)
			}
		})
	}
}
