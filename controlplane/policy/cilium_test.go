package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/kube-openapi/pkg/validation/spec"
	"k8s.io/kube-openapi/pkg/validation/strfmt"
	"k8s.io/kube-openapi/pkg/validation/validate"
	"sigs.k8s.io/yaml"
)

// CiliumNetworkPolicy documents are checked three ways (testdata/cilium/README.md says why
// not with Cilium's own Go module):
//
//  1. against the openAPIV3Schema of Cilium's CRD (a copy in testdata), with the validator
//     the API server uses for custom resources, plus an unknown-field walk that does what
//     the API server's strict field validation does, and the CRD's one CEL rule;
//  2. by strict decoding into ciliumNetworkPolicy, a local mirror of the JSON shape of
//     Cilium's cilium.io/v2 types (pkg/policy/api, v1.20.2);
//  3. by the checks of Cilium's Rule.Sanitize that concern what the export writes: one of
//     matchName or matchPattern, matchName characters, port numbers, L7 rules only on TCP
//     and never on port 0, DNS rules only with port 53, HTTP paths and methods that compile
//     as regular expressions, CIDRs that parse, and which peers may combine with toPorts.

type ciliumNetworkPolicy struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Metadata   metav1.ObjectMeta `json:"metadata"`
	Spec       *ciliumRule       `json:"spec,omitempty"`
	Specs      []ciliumRule      `json:"specs,omitempty"`
}

type ciliumRule struct {
	EndpointSelector  *metav1.LabelSelector `json:"endpointSelector,omitempty"`
	NodeSelector      *metav1.LabelSelector `json:"nodeSelector,omitempty"`
	Ingress           []json.RawMessage     `json:"ingress,omitempty"`
	IngressDeny       []json.RawMessage     `json:"ingressDeny,omitempty"`
	Egress            []ciliumEgressRule    `json:"egress,omitempty"`
	EgressDeny        []json.RawMessage     `json:"egressDeny,omitempty"`
	Labels            []json.RawMessage     `json:"labels,omitempty"`
	EnableDefaultDeny json.RawMessage       `json:"enableDefaultDeny,omitempty"`
	Description       string                `json:"description,omitempty"`
	Log               json.RawMessage       `json:"log,omitempty"`
}

type ciliumEgressRule struct {
	ToEndpoints    []metav1.LabelSelector `json:"toEndpoints,omitempty"`
	ToRequires     []string               `json:"toRequires,omitempty"`
	ToCIDR         []string               `json:"toCIDR,omitempty"`
	ToCIDRSet      []json.RawMessage      `json:"toCIDRSet,omitempty"`
	ToEntities     []string               `json:"toEntities,omitempty"`
	ToServices     []json.RawMessage      `json:"toServices,omitempty"`
	ToGroups       []json.RawMessage      `json:"toGroups,omitempty"`
	ToNodes        []metav1.LabelSelector `json:"toNodes,omitempty"`
	ToPorts        []ciliumPortRule       `json:"toPorts,omitempty"`
	ToFQDNs        []ciliumFQDN           `json:"toFQDNs,omitempty"`
	ICMPs          []json.RawMessage      `json:"icmps,omitempty"`
	Authentication json.RawMessage        `json:"authentication,omitempty"`
}

type ciliumPortRule struct {
	Ports          []ciliumPortProtocol `json:"ports,omitempty"`
	TerminatingTLS json.RawMessage      `json:"terminatingTLS,omitempty"`
	OriginatingTLS json.RawMessage      `json:"originatingTLS,omitempty"`
	ServerNames    []string             `json:"serverNames,omitempty"`
	Listener       json.RawMessage      `json:"listener,omitempty"`
	Rules          *ciliumL7Rules       `json:"rules,omitempty"`
}

type ciliumPortProtocol struct {
	Port     string `json:"port,omitempty"`
	EndPort  int32  `json:"endPort,omitempty"`
	Protocol string `json:"protocol,omitempty"`
}

type ciliumL7Rules struct {
	HTTP    []ciliumHTTP      `json:"http,omitempty"`
	Kafka   []json.RawMessage `json:"kafka,omitempty"`
	DNS     []ciliumFQDN      `json:"dns,omitempty"`
	L7Proto string            `json:"l7proto,omitempty"`
	L7      []json.RawMessage `json:"l7,omitempty"`
}

type ciliumHTTP struct {
	Path          string            `json:"path,omitempty"`
	Method        string            `json:"method,omitempty"`
	Host          string            `json:"host,omitempty"`
	Headers       []string          `json:"headers,omitempty"`
	HeaderMatches []json.RawMessage `json:"headerMatches,omitempty"`
}

type ciliumFQDN struct {
	MatchName    string `json:"matchName,omitempty"`
	MatchPattern string `json:"matchPattern,omitempty"`
}

var (
	crdOnce   sync.Once
	crdSchema *spec.Schema
	crdErr    error
)

// cnpSchema returns the openAPIV3Schema of the v2 version of the copied CRD.
func cnpSchema() (*spec.Schema, error) {
	crdOnce.Do(func() {
		b, err := os.ReadFile(filepath.Join("testdata", "cilium", "ciliumnetworkpolicies.yaml"))
		if err != nil {
			crdErr = err
			return
		}
		var crd struct {
			Spec struct {
				Versions []struct {
					Name   string `json:"name"`
					Schema struct {
						OpenAPIV3Schema json.RawMessage `json:"openAPIV3Schema"`
					} `json:"schema"`
				} `json:"versions"`
			} `json:"spec"`
		}
		if err := yaml.Unmarshal(b, &crd); err != nil {
			crdErr = err
			return
		}
		for _, v := range crd.Spec.Versions {
			if v.Name == "v2" {
				crdSchema = new(spec.Schema)
				crdErr = json.Unmarshal(v.Schema.OpenAPIV3Schema, crdSchema)
				return
			}
		}
		crdErr = errors.New("CRD has no version v2")
	})
	return crdSchema, crdErr
}

// validateCNPSchema validates a CiliumNetworkPolicy (as JSON) against the CRD schema.
func validateCNPSchema(raw []byte) error {
	schema, err := cnpSchema()
	if err != nil {
		return fmt.Errorf("CRD: %w", err)
	}
	var obj map[string]any
	if err := json.Unmarshal(raw, &obj); err != nil {
		return err
	}
	var errs []error
	res := validate.NewSchemaValidator(schema, nil, "", strfmt.Default).Validate(obj)
	errs = append(errs, res.Errors...)
	errs = append(errs, unknownFields(schema, obj, "")...)
	// The CRD's one x-kubernetes-validations rule: has(self.spec) || has(self.specs).
	if _, ok := obj["spec"]; !ok {
		if _, ok := obj["specs"]; !ok {
			errs = append(errs, errors.New("spec or specs must be provided"))
		}
	}
	return errors.Join(errs...)
}

// unknownFields reports fields that the schema does not declare and list-type set or map
// lists with duplicates, as the API server's strict field validation and list-type checks
// do. metadata is checked by the ObjectMeta decoding instead, as the API server does.
func unknownFields(s *spec.Schema, v any, path string) []error {
	if preserve, _ := s.Extensions.GetBool("x-kubernetes-preserve-unknown-fields"); preserve {
		return nil
	}
	var errs []error
	switch v := v.(type) {
	case map[string]any:
		if path == ".metadata" {
			return nil
		}
		for k, val := range v {
			p := path + "." + k
			switch {
			case len(s.Properties) > 0:
				sub, ok := s.Properties[k]
				if !ok {
					errs = append(errs, fmt.Errorf("%s: unknown field", p))
					continue
				}
				errs = append(errs, unknownFields(&sub, val, p)...)
			case s.AdditionalProperties != nil && s.AdditionalProperties.Schema != nil:
				errs = append(errs, unknownFields(s.AdditionalProperties.Schema, val, p)...)
			case s.AdditionalProperties != nil && s.AdditionalProperties.Allows:
			default:
				errs = append(errs, fmt.Errorf("%s: unknown field (the schema declares no fields here)", p))
			}
		}
	case []any:
		if s.Items == nil || s.Items.Schema == nil {
			return nil
		}
		listType, _ := s.Extensions.GetString("x-kubernetes-list-type")
		seen := map[string]bool{}
		for i, item := range v {
			p := fmt.Sprintf("%s[%d]", path, i)
			errs = append(errs, unknownFields(s.Items.Schema, item, p)...)
			var key any = item
			if listType == "map" {
				keys, _ := s.Extensions.GetStringSlice("x-kubernetes-list-map-keys")
				m, _ := item.(map[string]any)
				var kv []any
				for _, k := range keys {
					kv = append(kv, m[k])
				}
				key = kv
			}
			if listType == "set" || listType == "map" {
				b, _ := json.Marshal(key)
				if seen[string(b)] {
					errs = append(errs, fmt.Errorf("%s: duplicate entry %s in a list of type %s", p, b, listType))
				}
				seen[string(b)] = true
			}
		}
	}
	return errs
}

// decodeCilium checks one CiliumNetworkPolicy as the comment at the top says.
func decodeCilium(raw []byte) (*ciliumNetworkPolicy, error) {
	if err := validateCNPSchema(raw); err != nil {
		return nil, fmt.Errorf("CRD schema: %w", err)
	}
	var cnp ciliumNetworkPolicy
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cnp); err != nil {
		return nil, fmt.Errorf("strict decode: %w", err)
	}
	if err := checkMeta(cnp.Metadata); err != nil {
		return &cnp, err
	}
	if cnp.Spec == nil || len(cnp.Specs) > 0 {
		return &cnp, errors.New("want exactly one spec")
	}
	return &cnp, sanitizeCilium(cnp.Spec)
}

var (
	ciliumMatchName    = regexp.MustCompile(`^([-a-zA-Z0-9_]+[.]?)+$`)
	ciliumMatchPattern = regexp.MustCompile(`^([-a-zA-Z0-9_*]+[.]?)+$`)
)

func sanitizeCilium(r *ciliumRule) error {
	if r.EndpointSelector == nil || len(r.EndpointSelector.MatchLabels) == 0 {
		return errors.New("no endpointSelector: the policy would select every pod of the namespace")
	}
	if err := checkCiliumSelector(*r.EndpointSelector); err != nil {
		return err
	}
	if len(r.Egress) == 0 || len(r.Ingress)+len(r.IngressDeny)+len(r.EgressDeny) > 0 {
		return errors.New("want egress rules only")
	}
	for i, e := range r.Egress {
		if err := sanitizeCiliumEgress(e); err != nil {
			return fmt.Errorf("egress %d: %w", i, err)
		}
	}
	return nil
}

func sanitizeCiliumEgress(e ciliumEgressRule) error {
	peers := 0
	for _, n := range []int{len(e.ToEndpoints), len(e.ToCIDR), len(e.ToFQDNs), len(e.ToEntities), len(e.ToCIDRSet),
		len(e.ToServices), len(e.ToGroups), len(e.ToNodes), len(e.ToRequires)} {
		if n > 0 {
			peers++
		}
	}
	if peers != 1 {
		return fmt.Errorf("want exactly one kind of peer per rule, got %d", peers)
	}
	if len(e.ToPorts) > 0 && (len(e.ToServices) > 0 || len(e.ToGroups) > 0 || len(e.ToNodes) > 0) {
		return errors.New("combining toServices, toGroups or toNodes with toPorts is not supported")
	}
	for _, s := range e.ToEndpoints {
		if err := checkCiliumSelector(s); err != nil {
			return err
		}
	}
	for _, c := range e.ToCIDR {
		p, err := netip.ParsePrefix(c)
		if err != nil || p.Masked() != p {
			return fmt.Errorf("toCIDR %q: %v", c, err)
		}
	}
	for _, f := range e.ToFQDNs {
		if err := sanitizeFQDN(f); err != nil {
			return err
		}
	}
	for _, pr := range e.ToPorts {
		if len(pr.Ports) == 0 {
			return errors.New("toPorts entry without ports")
		}
		zero := false
		for _, p := range pr.Ports {
			n, err := strconv.ParseUint(p.Port, 0, 16)
			if err != nil {
				return fmt.Errorf("port %q: %w", p.Port, err)
			}
			zero = zero || n == 0
			switch p.Protocol {
			case "TCP", "UDP", "SCTP", "ANY":
			default:
				return fmt.Errorf("protocol %q", p.Protocol)
			}
		}
		if pr.Rules == nil {
			continue
		}
		if zero {
			return errors.New("L7 rules can not be used when a port is 0")
		}
		if len(pr.Rules.HTTP) > 0 && len(pr.Rules.DNS) > 0 {
			return errors.New("multiple L7 protocol rule types specified in single rule")
		}
		for _, h := range pr.Rules.HTTP {
			for _, p := range pr.Ports {
				if p.Protocol != "TCP" {
					return fmt.Errorf("L7 rules can only apply to TCP (not %s) except for DNS rules", p.Protocol)
				}
			}
			for _, expr := range []string{h.Path, h.Method} {
				if _, err := regexp.Compile(expr); err != nil {
					return fmt.Errorf("HTTP rule %+v: %w", h, err)
				}
			}
		}
		for _, d := range pr.Rules.DNS {
			if !slices.ContainsFunc(pr.Ports, func(p ciliumPortProtocol) bool { return p.Port == "53" }) {
				return errors.New("port 53 must be specified for DNS rules")
			}
			if err := sanitizeFQDN(d); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkCiliumSelector checks an endpoint selector: Cilium label keys may carry a source
// prefix ("k8s:", "any:", ...) before a Kubernetes label key.
func checkCiliumSelector(s metav1.LabelSelector) error {
	if len(s.MatchExpressions) > 0 {
		return errors.New("unexpected matchExpressions")
	}
	plain := map[string]string{}
	for k, v := range s.MatchLabels {
		if src, key, ok := strings.Cut(k, ":"); ok {
			switch src {
			case "k8s", "any", "reserved", "container", "unspec":
			default:
				return fmt.Errorf("label %q: unknown source %q", k, src)
			}
			k = key
		}
		plain[k] = v
	}
	return checkLabels(plain)
}

func sanitizeFQDN(f ciliumFQDN) error {
	switch {
	case f.MatchName != "" && f.MatchPattern != "":
		return errors.New("only one of MatchName or MatchPattern is allowed in an FQDNSelector")
	case f.MatchName != "" && !ciliumMatchName.MatchString(f.MatchName):
		return fmt.Errorf("invalid characters in MatchName %q", f.MatchName)
	case f.MatchPattern != "" && !ciliumMatchPattern.MatchString(f.MatchPattern):
		return fmt.Errorf("invalid characters in MatchPattern %q", f.MatchPattern)
	case f.MatchName == "" && f.MatchPattern == "":
		return errors.New("empty FQDN selector")
	}
	return nil
}

// TestCiliumChecksCatchMistakes makes sure the checks above reject what Cilium rejects: a
// test of the test, since a lenient check would let every export pass.
func TestCiliumChecksCatchMistakes(t *testing.T) {
	valid := `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: x
  namespace: shop
  labels:
    app.kubernetes.io/managed-by: meshguard
spec:
  endpointSelector:
    matchLabels:
      app: x
  egress:
  - toFQDNs:
    - matchName: api.example.com
    toPorts:
    - ports:
      - port: "80"
        protocol: TCP
      rules:
        http:
        - method: GET
          path: "^/v1/[0-9]+$"
`
	if _, err := decodeDocument([]byte(valid)); err != nil {
		t.Fatalf("the valid policy fails: %v", err)
	}
	tests := []struct {
		name, old, new, want string
	}{
		{"unknown field", "    toPorts:", "    toPortz:", "unknown field"},
		{"unknown nested field", "        - method: GET", "        - verb: GET", "unknown field"},
		{"bad protocol enum", "protocol: TCP", "protocol: HTTP", "protocol"},
		{"port out of range", `port: "80"`, `port: "70000"`, "port"},
		{"bad regex", `path: "^/v1/[0-9]+$"`, `path: "^/v1/(x$"`, "missing closing )"},
		{"bad matchName", "matchName: api.example.com", "matchName: api.example.com/x", "matchName"},
		{"no selector", "  endpointSelector:\n    matchLabels:\n      app: x\n", "", "endpointSelector"},
		{"L7 on UDP", "protocol: TCP", "protocol: UDP", "L7 rules can only apply to TCP"},
		{"L7 on port 0", `port: "80"`, `port: "0"`, "port is 0"},
		{"bad CIDR", "  - toFQDNs:\n    - matchName: api.example.com\n", "  - toCIDR:\n    - 10.0.0.1/33\n", "toCIDR"},
		{"duplicate set entry", "      rules:\n        http:\n        - method: GET\n          path: \"^/v1/[0-9]+$\"\n",
			"      serverNames:\n      - a.example.com\n      - a.example.com\n", "duplicate entry"},
		{"no spec", "spec:", "specz:", "spec or specs must be provided"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc := strings.Replace(valid, tt.old, tt.new, 1)
			if doc == valid {
				t.Fatalf("replacement %q not found", tt.old)
			}
			_, err := decodeDocument([]byte(doc))
			if err == nil {
				t.Fatalf("accepted:\n%s", doc)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q lacks %q", err, tt.want)
			}
		})
	}
}

// TestCNPSchemaRejects checks the schema layer on its own: the copied CRD and the
// validator reject what the API server would.
func TestCNPSchemaRejects(t *testing.T) {
	const head = `{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{"name":"x"},"spec":{"endpointSelector":{},"egress":[`
	tests := []struct{ name, egress, want string }{
		{"valid", `{"toFQDNs":[{"matchName":"a.example"}],"toPorts":[{"ports":[{"port":"443","protocol":"TCP"}]}]}`, ""},
		{"protocol enum", `{"toPorts":[{"ports":[{"port":"80","protocol":"HTTP"}]}]}`, "protocol in body should be one of"},
		{"port pattern", `{"toPorts":[{"ports":[{"port":"-1","protocol":"TCP"}]}]}`, "port in body should match"}, // the pattern lets "70000" through: Sanitize catches that
		{"cidr format", `{"toCIDR":["10.0.0.1/33"]}`, "must be of type cidr"},
		{"matchName pattern", `{"toFQDNs":[{"matchName":"a/b"}]}`, "matchName in body should match"},
		{"unknown field", `{"toFQDN":[{"matchName":"a.example"}]}`, ".spec.egress[0].toFQDN: unknown field"},
		{"duplicate in a set", `{"toPorts":[{"ports":[{"port":"443"}],"serverNames":["a.example","a.example"]}]}`, "duplicate entry"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := validateCNPSchema([]byte(head + tt.egress + "]}}"))
			switch {
			case tt.want == "" && err != nil:
				t.Fatal(err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
}
