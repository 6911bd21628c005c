package install

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestReadmes checks that every layout has a README and that their relative links resolve.
func TestReadmes(t *testing.T) {
	dirs := []string{".", "istio/sidecar", "istio/egress-gateway", "kubernetes", "helm/meshguard", "envoy"}
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
