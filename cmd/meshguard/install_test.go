package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestInstallSchemaKnowsEveryOption keeps the install layouts in step with serve's option
// table. The Helm chart's values.schema.json lists every option a config file may hold, with
// its type, and install's own tests check every layout's config file against that schema
// (install.TestHelmSchemaKnowsEveryOption, parseConfig); here the schema is checked against
// the one declaration of the options, so a layout cannot name an option serve does not know,
// nor miss one it gained.
func TestInstallSchemaKnowsEveryOption(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "install", "helm", "meshguard", "values.schema.json"))
	if err != nil {
		t.Fatal(err)
	}
	var schema struct {
		Properties struct {
			Config struct {
				Properties map[string]struct {
					Type string `json:"type"`
					Ref  string `json:"$ref"`
				} `json:"properties"`
			} `json:"config"`
		} `json:"properties"`
	}
	if err := json.Unmarshal(b, &schema); err != nil {
		t.Fatal(err)
	}
	inSchema := schema.Properties.Config.Properties
	var f serveFlags
	fs := newServeFlagSet(&f)
	var names []string
	for _, o := range f.options() {
		names = append(names, o.name)
		p, ok := inSchema[o.name]
		if !ok {
			t.Errorf("option %q is missing from install/helm/meshguard/values.schema.json (and install's knownOptions)", o.name)
			continue
		}
		want := map[string]string{"bool": "boolean", "int": "integer", "int64": "integer", "float64": "number",
			"duration": "#/definitions/duration"}[fs.Lookup(o.name).Value.Type()]
		if want == "" {
			want = "string"
		}
		if got := p.Type + p.Ref; got != want && !(want == "#/definitions/duration" && got == "#/definitions/signedDuration") {
			t.Errorf("option %q: schema type %q, want %q", o.name, got, want)
		}
	}
	for name := range inSchema {
		if !slices.Contains(names, name) {
			t.Errorf("values.schema.json names %q, which is not an option of meshguard serve", name)
		}
	}
}
