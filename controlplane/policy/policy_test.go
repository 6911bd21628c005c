package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshguard/meshguard/flowmodel"
	istionet "istio.io/client-go/pkg/apis/networking/v1"
	istiosec "istio.io/client-go/pkg/apis/security/v1"
	networkingv1 "k8s.io/api/networking/v1"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

var t0 = time.Date(2026, 1, 2, 15, 4, 5, 0, time.UTC)

func at(h int) time.Time { return t0.Add(time.Duration(h) * time.Hour) }

func dest(d string, count int64, first, last int, source string) flowmodel.DestinationRecord {
	return flowmodel.DestinationRecord{Destination: d, Count: count, FirstSeen: at(first), LastSeen: at(last), Source: source}
}

func shape(d, method, path string, count int64, first, last int) flowmodel.ShapeRecord {
	return flowmodel.ShapeRecord{
		Destination: d, Shape: method + " " + path + " q:[] h:[] ct:- b:0",
		Method: method, Path: path, Count: count, FirstSeen: at(first), LastSeen: at(last), Source: "ext_proc",
	}
}

// sampleServices covers every kind of destination and every mode.
func sampleServices() []flowmodel.ServiceRecord {
	return []flowmodel.ServiceRecord{
		{
			Name: "shop/checkout", Mode: flowmodel.ModeEnforce, Requests: 5000,
			Destinations: []flowmodel.DestinationRecord{
				dest("api.stripe.com:443", 1200, 0, 90, "ext_proc"),
				dest("hooks.example.com:80", 300, 1, 80, "ext_proc"),
				dest("HOOKS.example.com:80", 5, 2, 3, "replay"), // same destination, other spelling
				dest("payments.shop.svc.cluster.local:8080", 2500, 0, 95, "ext_proc"),
				dest("ledger:9090", 40, 5, 60, "ext_proc"),
				dest("cache.data.svc:6379", 70, 5, 60, "accesslog"),
				dest("203.0.113.7:5432", 12, 10, 20, "accesslog"),
				dest("[2001:db8::7]:443", 3, 11, 12, "pcap"),
				dest("10.0.0.12:6379", 9, 13, 14, "accesslog"),
				dest("*.cdn.example.net:443", 30, 15, 16, "ext_proc"),
				dest("mystery.example.org:0", 2, 17, 17, "pcap"),
				dest("mq.example.com:5671", 8, 18, 19, "accesslog"),
				dest("pod-0.db.shop.pod.cluster.local:5432", 1, 20, 20, "accesslog"),
			},
			Shapes: []flowmodel.ShapeRecord{
				shape("hooks.example.com:80", "GET", "/v1/items/{id}", 150, 1, 80),
				shape("hooks.example.com:80", "POST", "/v1/orders", 100, 1, 70),
				shape("hooks.example.com:80", "GET", "/v1/orders/{uuid}/lines", 20, 2, 60),
				shape("hooks.example.com:80", "GET", "/files/invoice-{id}.pdf", 10, 3, 50),
				shape("hooks.example.com:80", "GET", "/a/{hex}", 4, 4, 5),
				shape("hooks.example.com:80", "GET", "/a/{id}", 6, 6, 7),
				shape("hooks.example.com:80", "GET", "/search", 5, 8, 9),
				shape("hooks.example.com:80", "GET", "/search", 7, 7, 10), // another query/header set
				shape("hooks.example.com:80", "OPTIONS", "*", 1, 9, 9),
				shape("hooks.example.com:80", "GET /x HTTP/1.1\r\nHost:", "/y", 1, 9, 9), // not a method
				shape("payments.shop.svc.cluster.local:8080", "POST", "/charge/{id}/capture", 2400, 0, 95),
				shape("api.stripe.com:443", "POST", "/v1/charges", 1200, 0, 90), // TLS port: L4 only
				shape("gone.example.com:80", "GET", "/", 1, 0, 0),               // not in the baseline
			},
		},
		{
			Name: "shop/cart", Mode: flowmodel.ModeMonitor,
			Destinations: []flowmodel.DestinationRecord{
				dest("api.stripe.com:443", 50, 3, 40, "ext_proc"),
				dest("api.stripe.com:80", 2, 4, 5, "ext_proc"),
				dest("API.STRIPE.COM:80", 1, 4, 4, "replay"), // same first sighting: the source is chosen by name
				dest("203.0.113.7:5432", 1, 30, 30, "accesslog"),
			},
		},
		{
			Name: "ops/reaper", Mode: flowmodel.ModeQuarantine,
			QuarantineAllow: []string{"backup.example.com:443", "vault.ops.svc.cluster.local:8200"},
			Destinations: []flowmodel.DestinationRecord{
				dest("backup.example.com:443", 70, 0, 50, "ext_proc"),
				dest("evil.example.com:443", 900, 48, 50, "ext_proc"),
			},
		},
		{
			Name: "ops/idle", Mode: flowmodel.ModeEnforce,
		},
		{
			Name: "shop/newcomer", Mode: flowmodel.ModeLearn, LearnRequests: 12, LearnStart: at(100),
			Destinations: []flowmodel.DestinationRecord{dest("api.new.example:443", 12, 100, 101, "ext_proc")},
		},
		{
			Name: "10.1.2.3", Mode: flowmodel.ModeEnforce,
			Destinations: []flowmodel.DestinationRecord{dest("example.com:443", 1, 0, 0, "ext_proc")},
		},
	}
}

func export(t *testing.T, services []flowmodel.ServiceRecord, opts Options) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := Export(&b, services, opts); err != nil {
		t.Fatalf("Export(%+v): %v", opts, err)
	}
	return b.Bytes()
}

func TestGolden(t *testing.T) {
	for _, f := range Formats {
		t.Run(string(f), func(t *testing.T) {
			got := export(t, sampleServices(), Options{Format: f})
			path := filepath.Join("testdata", string(f)+".golden.yaml")
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("output differs from %s (run go test -update and review the diff):\n%s", path, got)
			}
			checkDocuments(t, got)
		})
	}
}

// shuffled returns a deep copy of services with every list in random order.
func shuffled(r *rand.Rand, services []flowmodel.ServiceRecord) []flowmodel.ServiceRecord {
	out := slices.Clone(services)
	for i := range out {
		out[i].Destinations = slices.Clone(out[i].Destinations)
		out[i].Shapes = slices.Clone(out[i].Shapes)
		out[i].QuarantineAllow = slices.Clone(out[i].QuarantineAllow)
		r.Shuffle(len(out[i].Destinations), func(a, b int) {
			out[i].Destinations[a], out[i].Destinations[b] = out[i].Destinations[b], out[i].Destinations[a]
		})
		r.Shuffle(len(out[i].Shapes), func(a, b int) { out[i].Shapes[a], out[i].Shapes[b] = out[i].Shapes[b], out[i].Shapes[a] })
		r.Shuffle(len(out[i].QuarantineAllow), func(a, b int) {
			out[i].QuarantineAllow[a], out[i].QuarantineAllow[b] = out[i].QuarantineAllow[b], out[i].QuarantineAllow[a]
		})
	}
	r.Shuffle(len(out), func(a, b int) { out[a], out[b] = out[b], out[a] })
	return out
}

func TestDeterministic(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, f := range Formats {
		t.Run(string(f), func(t *testing.T) {
			want := export(t, sampleServices(), Options{Format: f})
			for i := range 20 {
				in := shuffled(r, sampleServices())
				if got := export(t, in, Options{Format: f}); !bytes.Equal(got, want) {
					t.Fatalf("shuffle %d: output differs:\n%s", i, got)
				}
			}
		})
	}
}

func TestExportDoesNotModifyInput(t *testing.T) {
	in := shuffled(rand.New(rand.NewPCG(3, 4)), sampleServices())
	snapshot := shuffled(rand.New(rand.NewPCG(3, 4)), sampleServices()) // the same shuffle, separate slices
	for _, f := range Formats {
		export(t, in, Options{Format: f})
	}
	if !reflect.DeepEqual(in, snapshot) {
		t.Fatal("Export changed its input")
	}
}

func TestServiceSelection(t *testing.T) {
	tests := []struct {
		name      string
		opts      Options
		want      []string // services with a policy
		skipped   []string // "Skipped NAME" lines in the header
		incomplet bool
	}{
		{
			name:    "default skips learning and unselectable names",
			opts:    Options{},
			want:    []string{"ops/idle", "ops/reaper", "shop/cart", "shop/checkout"},
			skipped: []string{"10.1.2.3", "shop/newcomer"},
		},
		{
			name:      "include learning",
			opts:      Options{IncludeLearning: true},
			want:      []string{"ops/idle", "ops/reaper", "shop/cart", "shop/checkout", "shop/newcomer"},
			skipped:   []string{"10.1.2.3"},
			incomplet: true,
		},
		{
			name:      "a learning service named explicitly",
			opts:      Options{Service: "shop/newcomer"},
			want:      []string{"shop/newcomer"},
			incomplet: true,
		},
		{
			name: "one service",
			opts: Options{Service: "shop/cart"},
			want: []string{"shop/cart"},
		},
		{
			name:    "an unselectable service named explicitly",
			opts:    Options{Service: "10.1.2.3"},
			skipped: []string{"10.1.2.3"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.opts.Format = FormatNetworkPolicy
			out := string(export(t, sampleServices(), tt.opts))
			var got, skipped []string
			for line := range strings.SplitSeq(out, "\n") {
				if s, ok := strings.CutPrefix(line, "# NetworkPolicy for "); ok {
					got = append(got, strings.Fields(s)[0])
				}
				if s, ok := strings.CutPrefix(line, "# Skipped "); ok {
					skipped = append(skipped, strings.TrimSuffix(strings.Fields(s)[0], ":"))
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("policies for %q, want %q", got, tt.want)
			}
			if !slices.Equal(skipped, tt.skipped) {
				t.Errorf("skipped %q, want %q", skipped, tt.skipped)
			}
			if has := strings.Contains(out, "INCOMPLETE"); has != tt.incomplet {
				t.Errorf("INCOMPLETE marked: %v, want %v", has, tt.incomplet)
			}
			checkDocuments(t, []byte(out))
		})
	}
}

func TestUnknownService(t *testing.T) {
	err := Export(&bytes.Buffer{}, sampleServices(), Options{Format: FormatIstio, Service: "shop/nobody"})
	if !errors.Is(err, ErrUnknownService) {
		t.Fatalf("got %v, want ErrUnknownService", err)
	}
}

// TestQuarantineExportsAllowListOnly: the baseline's other destinations stay closed.
func TestQuarantineExportsAllowListOnly(t *testing.T) {
	for _, f := range Formats {
		out := string(export(t, sampleServices(), Options{Format: f, Service: "ops/reaper"}))
		if strings.Contains(out, "evil.example.com") {
			t.Errorf("%s: quarantined service's non-allowed destination exported:\n%s", f, out)
		}
		if !strings.Contains(out, "backup.example.com") || !strings.Contains(out, "vault.ops.svc.cluster.local") {
			t.Errorf("%s: allow list missing:\n%s", f, out)
		}
		if !strings.Contains(out, "70 request(s), first seen 2026-01-02T15:04:05Z") {
			t.Errorf("%s: allow-list entry lacks the baseline's evidence:\n%s", f, out)
		}
		checkDocuments(t, []byte(out))
	}
}

func TestOptionsCheck(t *testing.T) {
	tests := []struct {
		name string
		opts Options
		want []string // substrings of the error; none for a valid Options
	}{
		{"defaults", Options{Format: FormatCilium}, nil},
		{"no format", Options{}, []string{`unknown format ""`}},
		{"everything wrong", Options{
			Format:               "yaml",
			WorkloadLabel:        "bad label!",
			ClusterDomain:        "Bad_Domain",
			DNS:                  Selector{Namespace: "Kube System", Labels: map[string]string{"k": "v v"}},
			EgressGateway:        Selector{Namespace: "istio-system"},
			EgressGatewayService: "Gate.Way",
			TrustDomain:          "td/x",
		}, []string{
			`unknown format "yaml"`, `workload label "bad label!"`, `cluster domain "bad_domain"`,
			`namespace "Kube System"`, `label value "v v"`, "egress gateway: selector istio-system/: no labels",
			`egress gateway service "Gate.Way"`, `trust domain "td/x"`,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.opts.Check()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				if got.WorkloadLabel != "app" || got.ClusterDomain != "cluster.local" || got.DNS.String() != "kube-system/k8s-app=kube-dns" ||
					got.EgressGateway.String() != "istio-system/istio=egressgateway" || got.TrustDomain != "cluster.local" {
					t.Errorf("defaults not applied: %+v", got)
				}
				return
			}
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

// parseTest is a case of a parser: the input, and what the result prints as or the error
// says.
type parseTest struct{ in, want, err string }

// testParse runs parse on each case: an error containing err, or else a result whose String
// is want.
func testParse[T fmt.Stringer](t *testing.T, parse func(string) (T, error), tests []parseTest) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parse(tt.in)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("got %v, want error containing %q", err, tt.err)
				}
				return
			}
			if err != nil || got.String() != tt.want {
				t.Fatalf("got %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestParseSelector(t *testing.T) {
	testParse(t, ParseSelector, []parseTest{
		{"istio-system/istio=egressgateway", "istio-system/istio=egressgateway", ""},
		{"kube-system/k8s-app=kube-dns,app.kubernetes.io/part-of=dns", "kube-system/app.kubernetes.io/part-of=dns,k8s-app=kube-dns", ""},
		{"kube-system", "", "want namespace/key=value"},
		{"/a=b", "", "want namespace/key=value"},
		{"ns/a", "", `label "a": want key=value`},
		{"ns/=b", "", `label "=b": want key=value`},
		{"NS/a=b", "", `namespace "NS"`},
	})
}

func TestClusterService(t *testing.T) {
	tests := []struct {
		host          string
		name, ns      string
		inCluster     bool
		callerNS      string
		clusterDomain string
	}{
		{host: "ledger", name: "ledger", ns: "shop", inCluster: true},
		{host: "payments.shop.svc.cluster.local", name: "payments", ns: "shop", inCluster: true},
		{host: "cache.data.svc", name: "cache", ns: "data", inCluster: true},
		{host: "pod-0.db.shop.svc.cluster.local", name: "db", ns: "shop", inCluster: true},
		{host: "payments.shop.svc.corp.example", name: "payments", ns: "shop", inCluster: true, clusterDomain: "corp.example"},
		{host: "payments.shop.svc.cluster.local", clusterDomain: "corp.example"},
		{host: "payments.shop"},
		{host: "api.example.com"},
		{host: "shop.svc.cluster.local"},
		{host: "a.b.c.d.svc.cluster.local"},
		{host: "under_score"},
	}
	for _, tt := range tests {
		t.Run(tt.host, func(t *testing.T) {
			domain := cmpOr(tt.clusterDomain, "cluster.local")
			name, ns, ok := clusterService(tt.host, cmpOr(tt.callerNS, "shop"), domain)
			if ok != tt.inCluster || name != tt.name && ok || ns != tt.ns && ok {
				t.Errorf("clusterService(%q) = %q, %q, %v; want %q, %q, %v", tt.host, name, ns, ok, tt.name, tt.ns, tt.inCluster)
			}
		})
	}
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func TestObjectName(t *testing.T) {
	tests := []struct{ parts []string }{
		{[]string{"meshguard", "api.stripe.com"}},
		{[]string{"meshguard", "a_b.example.com"}},
		{[]string{"meshguard", "a-b.example.com"}},
		{[]string{"meshguard", "wildcard.cdn.example.net"}},
		{[]string{"meshguard", "*.cdn.example.net"}},
		{[]string{"meshguard-egress", strings.Repeat("x", 300)}},
		{[]string{"meshguard-egress", "Upper"}},
		{[]string{"meshguard-egress", strings.Repeat(strings.Repeat("y", 63)+".", 5)}},
		{[]string{"meshguard-egress", strings.Repeat(strings.Repeat("y", 63)+".", 4) + "z"}},
		{[]string{"meshguard", "a..b.-c-"}},
	}
	seen := map[string]string{}
	for _, tt := range tests {
		name := objectName(tt.parts...)
		if !isDNSSubdomain(name) {
			t.Errorf("objectName(%q) = %q: not a DNS subdomain", tt.parts, name)
		}
		orig := strings.Join(tt.parts, "-")
		if prev, ok := seen[name]; ok {
			t.Errorf("objectName: %q and %q both give %q", prev, orig, name)
		}
		seen[name] = orig
	}
	if got := objectName("meshguard", "api.stripe.com"); got != "meshguard-api.stripe.com" {
		t.Errorf("a valid name changed: %q", got)
	}
	// A wildcard host and the host spelt like its name must not share a ServiceEntry.
	if a, b := serviceEntryName("*.cdn.example.net"), serviceEntryName("wildcard.cdn.example.net"); a == b {
		t.Errorf("*.cdn.example.net and wildcard.cdn.example.net share the ServiceEntry name %q", a)
	}
}

func TestParsePeer(t *testing.T) {
	testParse(t, ParsePeer, []parseTest{
		{"istio-system/app=istiod:15012", "istio-system/app=istiod:15012", ""},
		{"meshguard/app=meshguard,tier=guard:9001,9002", "meshguard/app=meshguard,tier=guard:9001,9002", ""},
		{"istio-system/app=istiod", "", "want namespace/key=value"},
		{"istio-system/app=istiod:0", "", "want 1-65535"},
		{"istio-system/app=istiod:http", "", "want 1-65535"},
		{"istio-system:15012", "", "want namespace/key=value"},
	})
}

// objects decodes an export and returns its objects by kind and name.
func objects(t *testing.T, out []byte) map[string]any {
	t.Helper()
	m := map[string]any{}
	for _, d := range decodeAll(t, out) {
		var meta struct {
			Metadata struct{ Name, Namespace string } `json:"metadata"`
		}
		if err := json.Unmarshal(d.raw, &meta); err != nil {
			t.Fatal(err)
		}
		m[d.kind+" "+meta.Metadata.Namespace+"/"+meta.Metadata.Name] = d.obj
	}
	return m
}

// TestSemantics reads the sample export back through the official types (and the local
// Cilium mirror) and checks what each workload is allowed, and that requests meshguard saw
// pass the exported rules while others do not.
func TestSemantics(t *testing.T) {
	t.Run("networkpolicy", func(t *testing.T) {
		objs := objects(t, export(t, sampleServices(), Options{Format: FormatNetworkPolicy}))
		np := objs["NetworkPolicy shop/meshguard-egress-checkout"].(*networkingv1.NetworkPolicy)
		if np.Spec.PodSelector.MatchLabels["app"] != "checkout" {
			t.Errorf("podSelector %v", np.Spec.PodSelector)
		}
		var blocks []string
		for _, r := range np.Spec.Egress {
			for _, to := range r.To {
				if to.IPBlock != nil {
					blocks = append(blocks, fmt.Sprintf("%s:%d", to.IPBlock.CIDR, r.Ports[0].Port.IntValue()))
				}
			}
		}
		want := []string{"10.0.0.12/32:6379", "203.0.113.7/32:5432", "2001:db8::7/128:443"}
		if !slices.Equal(blocks, want) {
			t.Errorf("ipBlocks %q, want %q", blocks, want)
		}
	})
	t.Run("cilium", func(t *testing.T) {
		objs := objects(t, export(t, sampleServices(), Options{Format: FormatCilium}))
		cnp := objs["CiliumNetworkPolicy shop/meshguard-egress-checkout"].(*ciliumNetworkPolicy)
		var http []ciliumHTTP
		for _, e := range cnp.Spec.Egress {
			if len(e.ToFQDNs) == 1 && e.ToFQDNs[0].MatchName == "hooks.example.com" {
				http = e.ToPorts[0].Rules.HTTP
			}
		}
		allowed := func(method, path string) bool {
			for _, h := range http {
				if regexp.MustCompile(h.Method).MatchString(method) && regexp.MustCompile(h.Path).MatchString(path) {
					return true
				}
			}
			return false
		}
		for _, ok := range [][2]string{{"GET", "/v1/items/42"}, {"GET", "/v1/items/7?expand=x"}, {"POST", "/v1/orders"},
			{"GET", "/v1/orders/550e8400-e29b-41d4-a716-446655440000/lines"}, {"GET", "/files/invoice-12.pdf"}, {"GET", "/a/beef"}} {
			if !allowed(ok[0], ok[1]) {
				t.Errorf("%s %s denied", ok[0], ok[1])
			}
		}
		for _, no := range [][2]string{{"DELETE", "/v1/orders"}, {"GET", "/v1/items/abc"}, {"GET", "/admin"}, {"GET", "/v1/orders/1/lines"}} {
			if allowed(no[0], no[1]) {
				t.Errorf("%s %s allowed", no[0], no[1])
			}
		}
	})
	t.Run("istio", func(t *testing.T) {
		objs := objects(t, export(t, sampleServices(), Options{Format: FormatIstio}))
		se := objs["ServiceEntry shop/meshguard-api.stripe.com"].(*istionet.ServiceEntry)
		if got := se.Spec.Ports; len(got) != 2 || got[0].Number != 80 || got[0].Protocol != "HTTP" || got[1].Number != 443 || got[1].Protocol != "TLS" {
			t.Errorf("api.stripe.com ports %v", got)
		}
		sc := objs["Sidecar shop/meshguard-egress-cart"].(*istionet.Sidecar)
		if got := sc.Spec.Egress[0].Hosts; !slices.Contains(got, "shop/api.stripe.com") || slices.Contains(got, "shop/hooks.example.com") {
			t.Errorf("cart's egress hosts %q", got)
		}
		ap := objs["AuthorizationPolicy istio-system/meshguard-egress-shop-checkout"].(*istiosec.AuthorizationPolicy)
		var getPaths []string
		for _, r := range ap.Spec.Rules {
			if got := r.From[0].Source.Principals; !slices.Equal(got, []string{"cluster.local/ns/shop/sa/checkout"}) {
				t.Errorf("principals %q", got)
			}
			for _, to := range r.To {
				if slices.Equal(to.Operation.Methods, []string{"GET"}) {
					getPaths = to.Operation.Paths
				}
			}
		}
		want := []string{"/a/{*}", "/files/{*}", "/search", "/v1/items/{*}", "/v1/orders/{*}/lines"}
		if !slices.Equal(getPaths, want) {
			t.Errorf("GET paths %q, want %q", getPaths, want)
		}
		if _, ok := objs["AuthorizationPolicy istio-system/meshguard-egress-ops-idle"]; ok {
			t.Error("AuthorizationPolicy for a workload without external hosts")
		}
	})
}

func TestOptionsEffects(t *testing.T) {
	t.Run("direct egress", func(t *testing.T) {
		out := export(t, sampleServices(), Options{Format: FormatIstio, DirectEgress: true})
		for k, o := range objects(t, out) {
			if strings.HasPrefix(k, "AuthorizationPolicy") {
				t.Errorf("%s written with DirectEgress", k)
			}
			if sc, ok := o.(*istionet.Sidecar); ok && slices.ContainsFunc(sc.Spec.Egress[0].Hosts, func(h string) bool { return strings.Contains(h, "egressgateway") }) {
				t.Errorf("%s lists the egress gateway", k)
			}
		}
		out = export(t, sampleServices(), Options{Format: FormatNetworkPolicy, DirectEgress: true})
		np := objects(t, out)["NetworkPolicy shop/meshguard-egress-checkout"].(*networkingv1.NetworkPolicy)
		for _, r := range np.Spec.Egress {
			if r.To[0].NamespaceSelector != nil && r.To[0].NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"] == "istio-system" &&
				r.To[0].PodSelector.MatchLabels["istio"] == "egressgateway" {
				t.Error("egress gateway allowed with DirectEgress")
			}
		}
		if !bytes.Contains(out, []byte("# - hooks.example.com:80: 305 request(s)")) {
			t.Errorf("uncovered hosts not listed:\n%s", out)
		}
	})
	t.Run("selectors, gateway, trust domain, peers", func(t *testing.T) {
		opts := Options{
			WorkloadLabel: "app.kubernetes.io/name",
			EgressGateway: Selector{Namespace: "egress", Labels: map[string]string{"gateway": "out"}},
			TrustDomain:   "corp.example",
			MeshPeers:     []Peer{},
		}
		opts.Format = FormatIstio
		objs := objects(t, export(t, sampleServices(), opts))
		ap := objs["AuthorizationPolicy egress/meshguard-egress-shop-cart"].(*istiosec.AuthorizationPolicy)
		if ap.Spec.Selector.MatchLabels["gateway"] != "out" || ap.Spec.Rules[0].From[0].Source.Principals[0] != "corp.example/ns/shop/sa/cart" {
			t.Errorf("AuthorizationPolicy %v", &ap.Spec)
		}
		sc := objs["Sidecar shop/meshguard-egress-cart"].(*istionet.Sidecar)
		if sc.Spec.WorkloadSelector.Labels["app.kubernetes.io/name"] != "cart" ||
			!slices.Contains(sc.Spec.Egress[0].Hosts, "egress/istio-egressgateway.egress.svc.cluster.local") {
			t.Errorf("Sidecar %v", &sc.Spec)
		}
		opts.Format = FormatNetworkPolicy
		out := export(t, sampleServices(), opts)
		np := objects(t, out)["NetworkPolicy shop/meshguard-egress-cart"].(*networkingv1.NetworkPolicy)
		if np.Spec.PodSelector.MatchLabels["app.kubernetes.io/name"] != "cart" || bytes.Contains(out, []byte("istiod")) {
			t.Errorf("NetworkPolicy %v", &np.Spec)
		}
		opts.Format = FormatCilium
		cnp := objects(t, export(t, sampleServices(), opts))["CiliumNetworkPolicy shop/meshguard-egress-checkout"].(*ciliumNetworkPolicy)
		if cnp.Spec.EndpointSelector.MatchLabels["app.kubernetes.io/name"] != "checkout" {
			t.Errorf("endpointSelector %v", cnp.Spec.EndpointSelector)
		}
		found := false
		for _, e := range cnp.Spec.Egress {
			for _, s := range e.ToEndpoints {
				found = found || s.MatchLabels["k8s:app.kubernetes.io/name"] == "payments"
			}
		}
		if !found {
			t.Error("in-cluster Service not selected by the workload label")
		}
	})
}

func TestEmptyInput(t *testing.T) {
	for _, f := range Formats {
		out := export(t, nil, Options{Format: f})
		if !bytes.HasPrefix(out, []byte("# meshguard policy export, format "+string(f)+": 0 service(s).\n")) || bytes.Contains(out, []byte("---")) {
			t.Errorf("%s: empty export:\n%s", f, out)
		}
		if len(decodeAll(t, out)) != 0 {
			t.Errorf("%s: documents in an empty export", f)
		}
	}
}
