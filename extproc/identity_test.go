package extproc

import (
	"net/netip"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/meshguard/meshguard/extproc/envoysim"
	"github.com/meshguard/meshguard/flowmodel"
	"google.golang.org/grpc/metadata"
)

func attrsOf(kv map[string]string) *attrs {
	a := &attrs{}
	a.merge(envoysim.Attributes(kv))
	return a
}

func TestIdentify(t *testing.T) {
	istioID := "sidecar~10.1.2.3~checkout-7d4b9c8f6d-x2x9z.shop~shop.svc.cluster.local"
	tests := []struct {
		name   string
		order  []IdentitySource
		md     metadata.MD
		attrs  map[string]string
		want   string
		source IdentitySource
		other  string // the disagreeing identity
	}{
		{"metadata wins, and the node disagrees", nil, metadata.Pairs(ServiceMetadataKey, "explicit/svc"),
			map[string]string{AttrNodeNamespace: "shop", AttrNodeWorkload: "checkout"}, "explicit/svc", IdentityMetadata, "shop/checkout"},
		{"metadata and node agree", nil, metadata.Pairs(ServiceMetadataKey, "shop/checkout"),
			map[string]string{AttrNodeNamespace: "shop", AttrNodeWorkload: "checkout"}, "shop/checkout", IdentityMetadata, ""},
		{"node first, metadata disagrees", []IdentitySource{IdentityNode, IdentityMetadata}, metadata.Pairs(ServiceMetadataKey, "x/y"),
			map[string]string{AttrNodeNamespace: "shop", AttrNodeWorkload: "checkout"}, "shop/checkout", IdentityNode, "x/y"},
		{"metadata without a node", nil, metadata.Pairs(ServiceMetadataKey, "x/y"),
			map[string]string{AttrSourceAddress: "10.0.0.1:1"}, "x/y", IdentityMetadata, ""},
		{"peer san not cross-checked", []IdentitySource{IdentityPeerSAN, IdentityMetadata, IdentityNode}, metadata.Pairs(ServiceMetadataKey, "x/y"),
			map[string]string{AttrPeerURISAN: "spiffe://cluster.local/ns/billing/sa/invoices", AttrNodeNamespace: "a", AttrNodeWorkload: "b"},
			"billing/invoices", IdentityPeerSAN, ""},
		{"node metadata", nil, nil,
			map[string]string{AttrNodeNamespace: "shop", AttrNodeWorkload: "checkout", AttrNodeID: "sidecar~1.1.1.1~x.y~y.svc"}, "shop/checkout", IdentityNode, ""},
		{"node metadata in double quotes", nil, nil,
			map[string]string{`xds.node.metadata["NAMESPACE"]`: "shop", `xds.node.metadata["WORKLOAD_NAME"]`: "cart"}, "shop/cart", IdentityNode, ""},
		{"istio node id", nil, nil, map[string]string{AttrNodeID: istioID}, "shop/checkout", IdentityNode, ""},
		{"only namespace falls back to node id", nil, nil,
			map[string]string{AttrNodeNamespace: "shop", AttrNodeID: istioID}, "shop/checkout", IdentityNode, ""},
		{"spiffe peer", nil, nil, map[string]string{AttrPeerURISAN: "spiffe://cluster.local/ns/billing/sa/invoices"}, "billing/invoices", IdentityPeerSAN, ""},
		{"bad spiffe falls through to source", nil, nil,
			map[string]string{AttrPeerURISAN: "spiffe://cluster.local/ns/billing", AttrSourceAddress: "10.1.2.3:5555"}, "10.1.2.3", IdentitySourceAddress, ""},
		{"source address ipv6 mapped", nil, nil, map[string]string{AttrSourceAddress: "[::ffff:10.1.2.3]:5555"}, "10.1.2.3", IdentitySourceAddress, ""},
		{"nothing", nil, nil, map[string]string{AttrDestination: "1.2.3.4:80"}, "", "", ""},
		{"configured order", []IdentitySource{IdentitySourceAddress, IdentityNode}, metadata.Pairs(ServiceMetadataKey, "x/y"),
			map[string]string{AttrNodeID: istioID, AttrSourceAddress: "10.9.9.9:1"}, "10.9.9.9", IdentitySourceAddress, ""},
		{"metadata not in order is ignored", []IdentitySource{IdentityNode}, metadata.Pairs(ServiceMetadataKey, "x/y"),
			map[string]string{}, "", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			order := tt.order
			if order == nil {
				order = DefaultIdentityOrder
			}
			id := identify(order, tt.md, attrsOf(tt.attrs))
			if id.service != tt.want || id.source != tt.source || id.other != tt.other {
				t.Fatalf("identify = %q (%s, other %q), want %q (%s, other %q)", id.service, id.source, id.other, tt.want, tt.source, tt.other)
			}
		})
	}
}

func TestDestination(t *testing.T) {
	hdr := func(kv ...string) headers {
		var h headers
		for i := 0; i < len(kv); i += 2 {
			h = append(h, &corev3.HeaderValue{Key: kv[i], RawValue: []byte(kv[i+1])})
		}
		return h
	}
	tests := []struct {
		name  string
		attrs map[string]string
		h     headers
		want  flowmodel.Destination
		ok    bool
	}{
		{"sidecar original destination and authority", map[string]string{AttrDestination: "203.0.113.7:443"},
			hdr(":authority", "API.Example.com", ":scheme", "https"),
			flowmodel.Destination{IP: netip.MustParseAddr("203.0.113.7"), Port: 443, Host: "api.example.com"}, true},
		{"gateway: host and port from authority", nil, hdr(":authority", "api.example.com:8443"),
			flowmodel.Destination{Host: "api.example.com", Port: 8443}, true},
		{"port from scheme", nil, hdr(":authority", "api.example.com", ":scheme", "https"),
			flowmodel.Destination{Host: "api.example.com", Port: 443}, true},
		{"ip literal authority", nil, hdr(":authority", "[2001:db8::1]:8080"),
			flowmodel.Destination{IP: netip.MustParseAddr("2001:db8::1"), Port: 8080}, true},
		{"mapped destination", map[string]string{AttrDestination: "[::ffff:10.0.0.1]:80"}, nil,
			flowmodel.Destination{IP: netip.MustParseAddr("10.0.0.1"), Port: 80}, true},
		{"sni when no authority", map[string]string{AttrRequestedServer: "db.example.com", AttrDestination: "10.0.0.1:5432"}, nil,
			flowmodel.Destination{IP: netip.MustParseAddr("10.0.0.1"), Port: 5432, Host: "db.example.com"}, true},
		{"value instead of raw_value", nil, headers{{Key: ":authority", Value: "old.example.com:80"}},
			flowmodel.Destination{Host: "old.example.com", Port: 80}, true},
		{"garbage authority", nil, hdr(":authority", "a b c"), flowmodel.Destination{}, false},
		{"mixed case and trailing dot", nil, hdr(":authority", "API.Example.COM.:443"),
			flowmodel.Destination{Host: "api.example.com", Port: 443}, true},
		{"mapped ipv6 authority is ipv4", nil, hdr(":authority", "[::ffff:203.0.113.9]:80"),
			flowmodel.Destination{IP: netip.MustParseAddr("203.0.113.9"), Port: 80}, true},
		{"host header alone", nil, hdr("host", "api.example.com"), flowmodel.Destination{Host: "api.example.com"}, true},
		{"host header agrees", nil, hdr(":authority", "api.example.com:443", "host", "API.example.com."),
			flowmodel.Destination{Host: "api.example.com", Port: 443}, true},
		{"host header disagrees", nil, hdr(":authority", "api.example.com", "host", "evil.example"), flowmodel.Destination{}, false},
		{"two authorities", nil, hdr(":authority", "api.example.com", ":authority", "evil.example"), flowmodel.Destination{}, false},
		{"bad destination.address with a good authority", map[string]string{AttrDestination: "not-an-ip"},
			hdr(":authority", "api.example.com"), flowmodel.Destination{}, false},
		{"bad authority beside a good destination.address", map[string]string{AttrDestination: "203.0.113.7:443"},
			hdr(":authority", "evil2.example!"), flowmodel.Destination{IP: netip.MustParseAddr("203.0.113.7"), Port: 443}, false},
		{"bad sni", map[string]string{AttrRequestedServer: "a..b"}, nil, flowmodel.Destination{}, false},
		{"ip authority agrees with destination.address", map[string]string{AttrDestination: "203.0.113.7:443"},
			hdr(":authority", "[::ffff:203.0.113.7]:443"), flowmodel.Destination{IP: netip.MustParseAddr("203.0.113.7"), Port: 443}, true},
		{"ip authority disagrees with destination.address", map[string]string{AttrDestination: "203.0.113.7:443"},
			hdr(":authority", "198.51.100.1"), flowmodel.Destination{IP: netip.MustParseAddr("203.0.113.7"), Port: 443}, false},
		{"nothing", nil, nil, flowmodel.Destination{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := destinationOf(attrsOf(tt.attrs), tt.h)
			if got != tt.want || ok != tt.ok {
				t.Fatalf("destination = %+v %v, want %+v %v", got, ok, tt.want, tt.ok)
			}
		})
	}
}

// destinationOf is destination over the request headers h.
func destinationOf(a *attrs, h headers) (flowmodel.Destination, bool) {
	var rh requestHead
	rh.scan(h, nil)
	d, fault := destination(a, &rh)
	return d, fault == destOK
}

func FuzzAttributes(f *testing.F) {
	f.Add("sidecar~10.1.2.3~checkout-7d4b9c8f6d-x2x9z.shop~shop.svc.cluster.local", "spiffe://td/ns/a/sa/b", "10.0.0.1:80", "[::1]:9", "host:1")
	f.Add("~~~", "spiffe://////", "[", "]:", ":")
	f.Fuzz(func(t *testing.T, nodeID, san, src, dst, authority string) {
		a := attrsOf(map[string]string{AttrNodeID: nodeID, AttrPeerURISAN: san, AttrSourceAddress: src, AttrDestination: dst})
		svc := identify(DefaultIdentityOrder, nil, a).service
		if len(svc) > maxServiceName {
			t.Fatalf("identity longer than %d", maxServiceName)
		}
		d, ok := destinationOf(a, headers{{Key: ":authority", RawValue: []byte(authority)}})
		if ok && !d.Valid() {
			t.Fatalf("ok for %+v", d)
		}
		if d.IP.Is4In6() {
			t.Fatalf("unnormalised IP %v", d.IP)
		}
		if h, ok := parseHostName(d.Host); d.Host != "" && (!ok || h != d.Host) {
			t.Fatalf("invalid host %q accepted", d.Host)
		}
	})
}
