package nodeid

import (
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

func node(t *testing.T, id string, meta map[string]any) *corev3.Node {
	t.Helper()
	n := &corev3.Node{Id: id}
	if meta != nil {
		s, err := structpb.NewStruct(meta)
		if err != nil {
			t.Fatal(err)
		}
		n.Metadata = s
	}
	return n
}

func TestIdentify(t *testing.T) {
	tests := []struct {
		name string
		id   string
		meta map[string]any
		want Identity
	}{
		{"metadata", "anything", map[string]any{"NAMESPACE": "shop", "WORKLOAD_NAME": "checkout"}, Identity{RoleSidecar, "shop/checkout"}},
		{"metadata wins over istio id", "sidecar~10.0.0.1~cart-5d8f7b9c6d-x7k2p.shop~shop.svc.cluster.local",
			map[string]any{"NAMESPACE": "shop", "WORKLOAD_NAME": "checkout"}, Identity{RoleSidecar, "shop/checkout"}},
		{"istio deployment pod", "sidecar~10.0.0.1~cart-5d8f7b9c6d-x7k2p.shop~shop.svc.cluster.local", nil, Identity{RoleSidecar, "shop/cart"}},
		{"istio statefulset pod", "sidecar~10.0.0.2~db-0.data~data.svc.cluster.local", nil, Identity{RoleSidecar, "data/db"}},
		{"only namespace falls back to id", "sidecar~10.0.0.2~db-0.data~data.svc.cluster.local", map[string]any{"NAMESPACE": "x"}, Identity{RoleSidecar, "data/db"}},
		{"istio router is a gateway", "router~10.0.0.3~istio-egressgateway-7d9c8b6f5d-abcde.istio-system~istio-system.svc.cluster.local",
			map[string]any{"NAMESPACE": "istio-system", "WORKLOAD_NAME": "istio-egressgateway"}, Identity{Role: RoleGateway}},
		{"role metadata gateway", "egress-1", map[string]any{"MESHGUARD_ROLE": "gateway"}, Identity{Role: RoleGateway}},
		{"role metadata sidecar overrides router", "router~10.0.0.3~gw-0.ns~ns.svc.cluster.local", map[string]any{"MESHGUARD_ROLE": "sidecar"}, Identity{RoleSidecar, "ns/gw"}},
		{"unidentified", "envoy-1", nil, Identity{Role: RoleSidecar}},
		{"nil node", "", nil, Identity{Role: RoleSidecar}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := node(t, tt.id, tt.meta)
			if tt.name == "nil node" {
				n = nil
			}
			if got := Identify(n); got != tt.want {
				t.Errorf("Identify = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestParseIstioID(t *testing.T) {
	tests := []struct {
		id      string
		role    Role
		service string
		ok      bool
	}{
		{"sidecar~10.1.2.3~checkout-7d9f8c6b5-zx9wq.shop~shop.svc.cluster.local", RoleSidecar, "shop/checkout", true},
		{"router~10.1.2.3~gw-ds-4kq2x.ns~ns.svc.cluster.local", RoleGateway, "ns/gw-ds", true},
		{"sidecar~10.1.2.3~nodots~x", 0, "", false},
		{"sidecar~10.1.2.3~pod.~x", 0, "", false},
		{"ingress~10.1.2.3~a.b~b.svc", 0, "", false},
		{"sidecar~a~b", 0, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			role, svc, ok := ParseIstioID(tt.id)
			if role != tt.role || svc != tt.service || ok != tt.ok {
				t.Errorf("ParseIstioID = %v %q %v, want %v %q %v", role, svc, ok, tt.role, tt.service, tt.ok)
			}
		})
	}
}

func TestWorkloadFromPod(t *testing.T) {
	tests := map[string]string{
		"checkout-7d9f8c6b5-zx9wq":  "checkout",            // Deployment
		"my-app-v2-5c7b9d8f4-q2w4r": "my-app-v2",           // Deployment, dashes in name
		"fluentd-4kq2x":             "fluentd",             // DaemonSet
		"web-0":                     "web",                 // StatefulSet
		"web-12":                    "web",                 // StatefulSet
		"standalone":                "standalone",          // bare pod
		"cron-28391234-x7k2p":       "cron",                // CronJob's Job pod
		"cron-28391234-abcde":       "cron-28391234-abcde", // vowels: not a generated suffix
		"api-server":                "api-server",
		"x-bcdfg":                   "x",
	}
	for pod, want := range tests {
		if got := WorkloadFromPod(pod); got != want {
			t.Errorf("WorkloadFromPod(%q) = %q, want %q", pod, got, want)
		}
	}
}

func TestSPIFFE(t *testing.T) {
	tests := []struct {
		uri     string
		service string
		ok      bool
	}{
		{"spiffe://cluster.local/ns/shop/sa/checkout", "shop/checkout", true},
		{"spiffe://cluster.local/ns/shop/sa/", "", false},
		{"spiffe://cluster.local/ns/shop", "", false},
		{"https://cluster.local/ns/shop/sa/checkout", "", false},
		{"spiffe:///ns/shop/sa/checkout", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.uri, func(t *testing.T) {
			svc, ok := ServiceFromSPIFFE(tt.uri)
			if svc != tt.service || ok != tt.ok {
				t.Fatalf("ServiceFromSPIFFE = %q %v, want %q %v", svc, ok, tt.service, tt.ok)
			}
			if !ok {
				return
			}
			back, ok := SPIFFEID("cluster.local", svc)
			if !ok || back != tt.uri {
				t.Errorf("SPIFFEID round trip = %q %v, want %q", back, ok, tt.uri)
			}
		})
	}
	for _, bad := range []struct{ td, svc string }{{"", "a/b"}, {"td", "ab"}, {"td", "a/b/c"}, {"td", "/b"}} {
		if id, ok := SPIFFEID(bad.td, bad.svc); ok {
			t.Errorf("SPIFFEID(%q, %q) = %q, want failure", bad.td, bad.svc, id)
		}
	}
}

func FuzzParseIstioID(f *testing.F) {
	for _, s := range []string{
		"sidecar~10.1.2.3~checkout-7d9f8c6b5-zx9wq.shop~shop.svc.cluster.local",
		"router~10.1.2.3~gw-0.ns~ns.svc.cluster.local",
		"sidecar~~.~", "~~~", "sidecar~a~b-c-d.e.f~g",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		role, svc, ok := ParseIstioID(id)
		if !ok {
			if role != 0 || svc != "" {
				t.Fatalf("failed parse returned %v %q", role, svc)
			}
			return
		}
		ns, wl, found := strings.Cut(svc, "/")
		if !found || ns == "" || wl == "" || (role != RoleSidecar && role != RoleGateway) {
			t.Fatalf("ParseIstioID(%q) = %v %q", id, role, svc)
		}
	})
}

func FuzzWorkloadFromPod(f *testing.F) {
	for _, s := range []string{"checkout-7d9f8c6b5-zx9wq", "web-0", "a", "-", "--", "x-bcdfg", "a-bcdfgh-bcdfg"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, pod string) {
		wl := WorkloadFromPod(pod)
		if !strings.HasPrefix(pod, wl) {
			t.Fatalf("WorkloadFromPod(%q) = %q, not a prefix", pod, wl)
		}
		if pod != "" && wl == "" {
			t.Fatalf("WorkloadFromPod(%q) is empty", pod)
		}
	})
}
