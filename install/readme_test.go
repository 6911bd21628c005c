package install

import (
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestReadmes checks that every layout has a README and that their relative links resolve.
func TestReadmes(t *testing.T) {
	dirs := []string{"..", ".", "istio/sidecar", "istio/egress-gateway", "kubernetes", "helm/meshguard", "envoy"}
	link := regexp.MustCompile(`\]\(([^)\s]+)\)`)
	for _, dir := range dirs {
		t.Run(dir, func(t *testing.T) {
			path := filepath.Join(filepath.FromSlash(dir), "README.md")
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range link.FindAllStringSubmatch(string(data), -1) {
				target, _, _ := strings.Cut(m[1], "#")
				if target == "" || strings.Contains(target, "://") {
					continue
				}
				if _, err := os.Stat(filepath.Join(filepath.FromSlash(dir), filepath.FromSlash(target))); err != nil {
					t.Errorf("%s links to %s: %v", path, m[1], err)
				}
			}
		})
	}
}

// TestProjectReadmeEnvoyConfig decodes the Envoy configuration the project README shows
// into go-control-plane types and validates it, so that what a newcomer copies works.
func TestProjectReadmeEnvoyConfig(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	block := func(marker string) []byte {
		t.Helper()
		_, rest, ok := strings.Cut(string(data), "<!-- "+marker+" -->\n```yaml\n")
		if !ok {
			t.Fatalf("README.md has no yaml block after <!-- %s -->", marker)
		}
		body, _, ok := strings.Cut(rest, "```")
		if !ok {
			t.Fatalf("README.md: unterminated block after <!-- %s -->", marker)
		}
		return []byte(body)
	}
	var filter hcmv3.HttpFilter
	if err := envoyFromYAML(block("ext_proc filter"), &filter); err != nil {
		t.Fatalf("ext_proc filter: %v", err)
	}
	if err := validateDeep(&filter); err != nil {
		t.Fatalf("ext_proc filter: %v", err)
	}
	var ep extprocv3.ExternalProcessor
	if err := filter.GetTypedConfig().UnmarshalTo(&ep); err != nil {
		t.Fatal(err)
	}
	checkExtProc(t, &ep, sidecarAttributes)
	var cluster clusterv3.Cluster
	if err := envoyFromYAML(block("ext_proc cluster"), &cluster); err != nil {
		t.Fatalf("ext_proc cluster: %v", err)
	}
	if err := validateDeep(&cluster); err != nil {
		t.Fatalf("ext_proc cluster: %v", err)
	}
	checkHTTP2(t, &cluster)
	if host, port := endpointOf(t, &cluster); host != "127.0.0.1" || port != 9001 {
		t.Fatalf("cluster endpoint %s:%d, want meshguard's default 127.0.0.1:9001", host, port)
	}
}
