package policy

import (
	"bytes"
	"testing"

	"sigs.k8s.io/yaml"
)

// TestScalarsReadBack: every string written reads back as the same string, and ints as
// numbers, through the YAML library that Kubernetes tools use.
func TestScalarsReadBack(t *testing.T) {
	values := []string{
		"", "plain", "api.example.com", "/v1/items/{*}", "{*}", "*", "*.example.com", "^/v1/[0-9]+(\\?.*)?$",
		"yes", "No", "on", "OFF", "y", "null", "~", "true", "443", "0x1F", "1e3", "-1", ".5",
		"a: b", "a #b", "#a", "- a", "? a", "!tag", "&anchor", "*alias", "|", ">", "%x", "@x", "`x",
		"'quoted'", `"dq"`, "back\\slash", "tab\there", "new\nline", "ü", "🙂", "\x7f", " lead", "trail ",
		"k8s:io.kubernetes.pod.namespace", "app.kubernetes.io/managed-by", "2001:db8::7/128",
	}
	for _, v := range values {
		var b bytes.Buffer
		doc := mapping().set(v, str(v)).set("list", list(str(v), num(7))).set("n", num(65535))
		if err := writeDocuments(&b, []string{"a comment\nwith a newline"}, []document{{comment: []string{v}, body: doc}}); err != nil {
			t.Fatal(err)
		}
		var got map[string]any
		if err := yaml.UnmarshalStrict(b.Bytes(), &got); err != nil {
			t.Fatalf("%q: %v\n%s", v, err, b.String())
		}
		if got[v] != v {
			t.Errorf("%q read back as %#v\n%s", v, got[v], b.String())
		}
		l, _ := got["list"].([]any)
		if len(l) != 2 || l[0] != v || l[1] != float64(7) || got["n"] != float64(65535) {
			t.Errorf("%q: list %#v n %#v\n%s", v, got["list"], got["n"], b.String())
		}
	}
}

func TestEmptyCollectionsAndItemComments(t *testing.T) {
	var b bytes.Buffer
	doc := mapping().
		set("empty", mapping()).
		set("none", list()).
		set("items", list(
			mapping().note("above the dash").set("a", str("1")).set("b", num(2).note("above b")),
			mapping().set("c", str("3").note("above the first key")).set("d", list(str("x").note("above x"))),
		))
	if err := writeDocuments(&b, nil, []document{{body: doc}}); err != nil {
		t.Fatal(err)
	}
	want := `---
empty: {}
none: []
items:
  # above the dash
  - a: "1"
    # above b
    b: 2
  -
    # above the first key
    c: "3"
    d:
      # above x
      - x
`
	if b.String() != want {
		t.Fatalf("got:\n%s\nwant:\n%s", b.String(), want)
	}
	var got map[string]any
	if err := yaml.UnmarshalStrict(b.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	items := got["items"].([]any)
	if items[1].(map[string]any)["c"] != "3" || len(got["empty"].(map[string]any)) != 0 {
		t.Fatalf("read back %#v", got)
	}
}
