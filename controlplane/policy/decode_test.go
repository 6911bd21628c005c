package policy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	istionet "istio.io/client-go/pkg/apis/networking/v1"
	istiosec "istio.io/client-go/pkg/apis/security/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"
)

// Strict decoding of every generated document with the official types:
//
//   - NetworkPolicy: k8s.io/api/networking/v1 with sigs.k8s.io/yaml.UnmarshalStrict (unknown
//     and duplicate fields fail).
//   - ServiceEntry, Sidecar, AuthorizationPolicy: istio.io/client-go v1 types. Their specs
//     are protobuf messages whose UnmarshalJSON is deliberately lenient (jsonpb with
//     AllowUnknownFields), so the spec is decoded a second time with protojson, which
//     rejects unknown fields and bad enum names, and the two results must agree.
//   - CiliumNetworkPolicy: see cilium_test.go.
//
// Then the checks the API server or the proxy would make that decoding cannot: object
// names and labels, CIDRs, and the rules of each format that a reviewer would otherwise
// learn about only when applying (Istio path templates, Cilium regular expressions).

// decoded is one document of an export.
type decoded struct {
	kind string
	obj  any
	raw  []byte // JSON
}

// splitDocuments returns the YAML documents of a stream that hold more than comments.
func splitDocuments(t *testing.T, out []byte) [][]byte {
	t.Helper()
	var docs [][]byte
	for i, part := range bytes.Split(out, []byte("\n---\n")) {
		if i == 0 {
			// The header: comments, then the first separator.
			if rest, ok := bytes.CutPrefix(part, []byte("---\n")); ok {
				part = rest
			} else if j := bytes.Index(part, []byte("\n---")); j < 0 && onlyComments(part) {
				continue
			}
		}
		if onlyComments(part) {
			t.Errorf("document %d has no content:\n%s", i, part)
			continue
		}
		docs = append(docs, part)
	}
	return docs
}

func onlyComments(b []byte) bool {
	for line := range bytes.SplitSeq(b, []byte("\n")) {
		if l := bytes.TrimSpace(line); len(l) > 0 && l[0] != '#' {
			return false
		}
	}
	return true
}

// decodeAll decodes every document strictly and checks it; a failure fails t.
func decodeAll(t *testing.T, out []byte) []decoded {
	t.Helper()
	if !bytes.HasSuffix(out, []byte("\n")) {
		t.Errorf("output does not end with a newline")
	}
	var all []decoded
	for i, doc := range splitDocuments(t, out) {
		d, err := decodeDocument(doc)
		if err != nil {
			t.Errorf("document %d: %v\n%s", i, err, doc)
			continue
		}
		all = append(all, d)
	}
	return all
}

func checkDocuments(t *testing.T, out []byte) { t.Helper(); decodeAll(t, out) }

type typeMeta struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
}

// istioEnvelope is an Istio resource with its spec left raw for protojson.
type istioEnvelope struct {
	typeMeta
	Metadata metav1.ObjectMeta `json:"metadata"`
	Spec     json.RawMessage   `json:"spec"`
}

func decodeDocument(doc []byte) (decoded, error) {
	raw, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return decoded{}, fmt.Errorf("YAML: %w", err)
	}
	var tm typeMeta
	if err := json.Unmarshal(raw, &tm); err != nil {
		return decoded{}, err
	}
	d := decoded{kind: tm.Kind, raw: raw}
	switch tm.APIVersion + " " + tm.Kind {
	case "networking.k8s.io/v1 NetworkPolicy":
		var np networkingv1.NetworkPolicy
		if err := yaml.UnmarshalStrict(doc, &np); err != nil {
			return d, err
		}
		d.obj = &np
		return d, checkNetworkPolicy(&np)
	case "networking.istio.io/v1 ServiceEntry":
		var se istionet.ServiceEntry
		if err := decodeIstio(doc, raw, &se, &se.ObjectMeta, &se.Spec); err != nil {
			return d, err
		}
		d.obj = &se
		return d, checkServiceEntry(&se)
	case "networking.istio.io/v1 Sidecar":
		var sc istionet.Sidecar
		if err := decodeIstio(doc, raw, &sc, &sc.ObjectMeta, &sc.Spec); err != nil {
			return d, err
		}
		d.obj = &sc
		return d, checkSidecar(&sc)
	case "security.istio.io/v1 AuthorizationPolicy":
		var ap istiosec.AuthorizationPolicy
		if err := decodeIstio(doc, raw, &ap, &ap.ObjectMeta, &ap.Spec); err != nil {
			return d, err
		}
		d.obj = &ap
		return d, checkAuthorizationPolicy(&ap)
	case "cilium.io/v2 CiliumNetworkPolicy":
		cnp, err := decodeCilium(raw)
		d.obj = cnp
		return d, err
	default:
		return d, fmt.Errorf("unexpected apiVersion %q kind %q", tm.APIVersion, tm.Kind)
	}
}

// decodeIstio decodes doc into obj (an istio client-go type) and then its spec again,
// strictly, with protojson; the two decodings must agree.
func decodeIstio(doc, raw []byte, obj any, meta *metav1.ObjectMeta, spec proto.Message) error {
	if err := yaml.UnmarshalStrict(doc, obj); err != nil {
		return err
	}
	var env istioEnvelope
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&env); err != nil {
		return fmt.Errorf("envelope: %w", err)
	}
	strict := spec.ProtoReflect().New().Interface()
	if err := protojson.Unmarshal(env.Spec, strict); err != nil {
		return fmt.Errorf("spec (protojson, strict): %w", err)
	}
	if !proto.Equal(strict, spec) {
		return fmt.Errorf("spec decodes differently: client-go %v, protojson %v", spec, strict)
	}
	return checkMeta(*meta)
}

func checkMeta(m metav1.ObjectMeta) error {
	var errs []string
	errs = append(errs, validation.IsDNS1123Subdomain(m.Name)...)
	errs = append(errs, validation.IsDNS1123Label(m.Namespace)...)
	if err := checkLabels(m.Labels); err != nil {
		errs = append(errs, err.Error())
	}
	if m.Labels["app.kubernetes.io/managed-by"] != "meshguard" {
		errs = append(errs, "no app.kubernetes.io/managed-by: meshguard label")
	}
	if len(errs) > 0 {
		return fmt.Errorf("metadata %s/%s: %s", m.Namespace, m.Name, strings.Join(errs, "; "))
	}
	return nil
}

func checkLabels(labels map[string]string) error {
	var errs []string
	for k, v := range labels {
		errs = append(errs, validation.IsQualifiedName(k)...)
		errs = append(errs, validation.IsValidLabelValue(v)...)
	}
	if len(errs) > 0 {
		return fmt.Errorf("labels %v: %s", labels, strings.Join(errs, "; "))
	}
	return nil
}

func checkSelector(s *metav1.LabelSelector) error {
	if s == nil {
		return nil
	}
	if _, err := metav1.LabelSelectorAsSelector(s); err != nil {
		return err
	}
	return nil
}

func checkNetworkPolicy(np *networkingv1.NetworkPolicy) error {
	if err := checkMeta(np.ObjectMeta); err != nil {
		return err
	}
	if !slices.Equal(np.Spec.PolicyTypes, []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}) {
		return fmt.Errorf("policyTypes %v, want [Egress]", np.Spec.PolicyTypes)
	}
	if err := checkSelector(&np.Spec.PodSelector); err != nil {
		return err
	}
	for i, r := range np.Spec.Egress {
		if len(r.To) == 0 {
			return fmt.Errorf("egress %d: no peer (would allow everything)", i)
		}
		for _, to := range r.To {
			if err := checkSelector(to.PodSelector); err != nil {
				return err
			}
			if err := checkSelector(to.NamespaceSelector); err != nil {
				return err
			}
			if to.IPBlock != nil {
				p, err := netip.ParsePrefix(to.IPBlock.CIDR)
				if err != nil || p.Bits() != p.Addr().BitLen() {
					return fmt.Errorf("egress %d: ipBlock %q is not a single address (%v)", i, to.IPBlock.CIDR, err)
				}
			}
		}
		for _, p := range r.Ports {
			if p.Port == nil || p.Port.IntValue() < 1 || p.Port.IntValue() > 65535 {
				return fmt.Errorf("egress %d: bad port %v", i, p.Port)
			}
		}
	}
	return nil
}

func checkServiceEntry(se *istionet.ServiceEntry) error {
	s := &se.Spec
	if len(s.Hosts) != 1 || len(s.Ports) == 0 {
		return fmt.Errorf("want one host and some ports: %v", s)
	}
	if s.Location.String() != "MESH_EXTERNAL" || !slices.Equal(s.ExportTo, []string{"."}) {
		return fmt.Errorf("location %v exportTo %v", s.Location, s.ExportTo)
	}
	if strings.Contains(s.Hosts[0], "*") && s.Resolution.String() == "DNS" {
		return fmt.Errorf("wildcard host %q with DNS resolution", s.Hosts[0])
	}
	for _, a := range s.Addresses {
		if _, err := netip.ParsePrefix(a); err != nil {
			return err
		}
	}
	names := map[string]bool{}
	numbers := map[uint32]bool{}
	for _, p := range s.Ports {
		if p.Number < 1 || p.Number > 65535 || names[p.Name] || numbers[p.Number] || p.Name == "" {
			return fmt.Errorf("bad or duplicate port %v", p)
		}
		switch p.Protocol {
		case "HTTP", "TLS", "TCP":
		default:
			return fmt.Errorf("protocol %q", p.Protocol)
		}
		names[p.Name], numbers[p.Number] = true, true
	}
	return checkMeta(se.ObjectMeta)
}

func checkSidecar(sc *istionet.Sidecar) error {
	s := &sc.Spec
	if s.OutboundTrafficPolicy.GetMode().String() != "REGISTRY_ONLY" {
		return fmt.Errorf("outboundTrafficPolicy %v", s.OutboundTrafficPolicy)
	}
	if err := checkLabels(s.WorkloadSelector.GetLabels()); err != nil {
		return err
	}
	if len(s.WorkloadSelector.GetLabels()) == 0 {
		return fmt.Errorf("no workload selector")
	}
	if len(s.Egress) != 1 || len(s.Egress[0].Hosts) == 0 {
		return fmt.Errorf("want one egress listener with hosts: %v", s.Egress)
	}
	for _, h := range s.Egress[0].Hosts {
		ns, host, ok := strings.Cut(h, "/")
		if !ok || ns == "" || host == "" {
			return fmt.Errorf("egress host %q is not namespace/host", h)
		}
	}
	return checkMeta(sc.ObjectMeta)
}

func checkAuthorizationPolicy(ap *istiosec.AuthorizationPolicy) error {
	s := &ap.Spec
	if s.Action.String() != "ALLOW" || len(s.Rules) == 0 {
		return fmt.Errorf("action %v with %d rules", s.Action, len(s.Rules))
	}
	if len(s.Selector.GetMatchLabels()) == 0 {
		return fmt.Errorf("no selector: the policy would apply to the whole namespace")
	}
	for i, r := range s.Rules {
		if len(r.From) != 1 || len(r.From[0].Source.GetPrincipals()) != 1 {
			return fmt.Errorf("rule %d: want one principal: %v", i, r.From)
		}
		if len(r.To) == 0 && len(r.When) == 0 {
			return fmt.Errorf("rule %d: neither to nor when: allows the principal anything", i)
		}
		for _, to := range r.To {
			op := to.Operation
			if len(op.Hosts) == 0 {
				return fmt.Errorf("rule %d: operation without hosts", i)
			}
			if len(op.Ports) > 0 {
				return fmt.Errorf("rule %d: ports at the gateway are the gateway's", i)
			}
			for _, p := range op.Paths {
				if err := checkIstioPath(p); err != nil {
					return fmt.Errorf("rule %d: %w", i, err)
				}
			}
		}
		for _, c := range r.When {
			if c.Key != "connection.sni" || len(c.Values) == 0 {
				return fmt.Errorf("rule %d: condition %v", i, c)
			}
		}
	}
	return nil
}

// checkIstioPath applies the documented rules of AuthorizationPolicy paths: a path with
// {*} or {**} is a URI template, with no '*', '{' or '}' outside an operator, nothing
// else in an operator's segment, and {**} only last; a path without is an exact match
// (no '*' at either end, which would make it a prefix or suffix match).
func checkIstioPath(p string) error {
	if !strings.HasPrefix(p, "/") {
		return fmt.Errorf("path %q is not absolute", p)
	}
	if !strings.Contains(p, "{*}") && !strings.Contains(p, "{**}") {
		if strings.ContainsAny(p, "*") {
			return fmt.Errorf("path %q: '*' makes a prefix, suffix or presence match", p)
		}
		return nil
	}
	segs := strings.Split(p, "/")
	for i, s := range segs {
		switch s {
		case "{*}":
		case "{**}":
			if strings.Contains(strings.Join(segs[i+1:], "/"), "{") {
				return fmt.Errorf("path %q: {**} is not the last operator", p)
			}
		default:
			if strings.ContainsAny(s, "*{}") {
				return fmt.Errorf("path %q: segment %q mixes an operator with text, or has '*', '{' or '}' outside one", p, s)
			}
		}
	}
	return nil
}

// TestDecodeRejects makes sure the strict decoding rejects what it should (the client-go
// Istio types alone accept the unknown spec fields below).
func TestDecodeRejects(t *testing.T) {
	const meta = "metadata:\n  name: x\n  namespace: shop\n  labels:\n    app.kubernetes.io/managed-by: meshguard\n"
	se := "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n" + meta +
		"spec:\n  hosts: [api.example.com]\n  ports: [{number: 443, protocol: TLS, name: tls-443}]\n  location: MESH_EXTERNAL\n  resolution: DNS\n  exportTo: [\".\"]\n"
	ap := "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n" + meta +
		"spec:\n  selector: {matchLabels: {istio: egressgateway}}\n  action: ALLOW\n  rules:\n  - from: [{source: {principals: [cluster.local/ns/shop/sa/x]}}]\n    to: [{operation: {hosts: [a.example], paths: [\"/v1/{*}\"]}}]\n"
	np := "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n" + meta +
		"spec:\n  podSelector: {matchLabels: {app: x}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{ipBlock: {cidr: 203.0.113.7/32}}]\n    ports: [{protocol: TCP, port: 443}]\n"
	tests := []struct {
		name, doc, old, new, want string
	}{
		{"ServiceEntry unknown spec field", se, "  resolution: DNS\n", "  resolution: DNS\n  resolve: DNS\n", "unknown field"},
		{"ServiceEntry bad enum", se, "resolution: DNS", "resolution: DNSX", "enum"},
		{"ServiceEntry unknown port field", se, "name: tls-443}", "name: tls-443, tarjetPort: 8443}", "unknown field"},
		{"ServiceEntry unknown top-level field", se, "spec:\n", "status: {}\nspec:\n", "unknown field"},
		{"ServiceEntry wildcard with DNS", se, "hosts: [api.example.com]", `hosts: ["*.example.com"]`, "wildcard host"},
		{"AuthorizationPolicy unknown operation field", ap, "hosts: [a.example]", "hosts: [a.example], pathz: [/x]", "unknown field"},
		{"AuthorizationPolicy operator beside text", ap, `"/v1/{*}"`, `"/v1/x{*}"`, "mixes an operator"},
		{"AuthorizationPolicy {**} not last", ap, `"/v1/{*}"`, `"/{**}/v1/{*}"`, "not the last operator"},
		{"AuthorizationPolicy star path", ap, `"/v1/{*}"`, `"/v1/*"`, "prefix, suffix or presence"},
		{"AuthorizationPolicy without selector", ap, "  selector: {matchLabels: {istio: egressgateway}}\n", "", "no selector"},
		{"NetworkPolicy unknown field", np, "policyTypes: [Egress]", "policyTypes: [Egress]\n  egres: []", "unknown field"},
		{"NetworkPolicy wide ipBlock", np, "203.0.113.7/32", "203.0.113.0/24", "not a single address"},
		{"NetworkPolicy duplicate key", np, "policyTypes: [Egress]", "policyTypes: [Egress]\n  policyTypes: [Egress]", "already set"},
		{"bad name", np, "name: x", "name: X_Y", "metadata"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := decodeDocument([]byte(tt.doc)); err != nil {
				t.Fatalf("the valid document fails: %v", err)
			}
			doc := strings.Replace(tt.doc, tt.old, tt.new, 1)
			if doc == tt.doc {
				t.Fatalf("replacement %q not found", tt.old)
			}
			_, err := decodeDocument([]byte(doc))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error containing %q\n%s", err, tt.want, doc)
			}
		})
	}
}
