package contract

import (
	"slices"
	"testing"
)

// TestNames pins the names Envoy and deployed configurations depend on: a change here is a
// change of the contract with every Envoy and install layout, not a refactoring.
func TestNames(t *testing.T) {
	for _, tc := range []struct{ name, got, want string }{
		{"attributes key", AttributesKey, "envoy.filters.http.ext_proc"},
		{"node namespace", AttrNodeNamespace, "xds.node.metadata['NAMESPACE']"},
		{"node workload", AttrNodeWorkload, "xds.node.metadata['WORKLOAD_NAME']"},
		{"node metadata helper", NodeMeta(NodeMetaNamespace), AttrNodeNamespace},
		{"node metadata, double quotes", NodeMetaQuoted(NodeMetaWorkloadName), `xds.node.metadata["WORKLOAD_NAME"]`},
		{"destination", AttrDestination, "destination.address"},
		{"service metadata", ServiceMetadataKey, "x-meshguard-service"},
		{"verdict header", VerdictHeader, "x-meshguard-verdict"},
		{"block details", BlockDetails, "meshguard_blocked"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.got != tc.want {
				t.Errorf("%q, want %q", tc.got, tc.want)
			}
		})
	}
}

func TestAttributeListsAreFresh(t *testing.T) {
	a := RequestAttributes()
	a[0] = "changed"
	if RequestAttributes()[0] != AttrNodeID {
		t.Fatal("RequestAttributes shares its slice")
	}
	want := []string{AttrNodeID, AttrNodeNamespace, AttrNodeWorkload, AttrDestination, AttrSourceAddress, AttrRequestedServer, AttrPeerURISAN}
	if !slices.Equal(RequestAttributes(), want) {
		t.Fatalf("RequestAttributes %q", RequestAttributes())
	}
	if !slices.Equal(ResponseAttributes(), []string{AttrUpstreamAddress}) {
		t.Fatalf("ResponseAttributes %q", ResponseAttributes())
	}
}
