package policy

import (
	"bytes"
	"testing"

	"github.com/meshguard/meshguard/flowmodel"
)

// FuzzExport: whatever destinations, request shapes and names a baseline holds, every
// format's output decodes strictly and passes the checks of decode_test.go.
func FuzzExport(f *testing.F) {
	f.Add("shop/checkout", "api.example.com:443", "GET", "/v1/items/{id}", "ext_proc", uint8(3))
	f.Add("shop/checkout", "hooks.example.com:80", "POST", "/files/invoice-{id}.pdf", "replay", uint8(2))
	f.Add("ops/x", "[2001:db8::1]:8443", "M-SEARCH", "*", "pcap", uint8(4))
	f.Add("ops/x", "*.cdn.example.net:443", "GET", "/a b/\"q\"/{uuid}/#x", "", uint8(3))
	f.Add("a/b", "payments.shop.svc.cluster.local:8080", "GET", "/x/a{b}/*/{long}", "ext_proc", uint8(1))
	f.Add("a/b", "ledger:0", "GET", "/\x7f/é", "\n", uint8(1))
	f.Fuzz(func(t *testing.T, service, dest, method, path, source string, mode uint8) {
		r := flowmodel.ServiceRecord{
			Name: service, Mode: flowmodel.Mode(mode%4 + 1),
			Destinations:    []flowmodel.DestinationRecord{{Destination: dest, Count: 1, FirstSeen: t0, LastSeen: t0, Source: source}},
			Shapes:          []flowmodel.ShapeRecord{{Destination: dest, Method: method, Path: path, Count: 1, FirstSeen: t0, LastSeen: t0, Source: source}},
			QuarantineAllow: []string{dest},
		}
		for _, format := range Formats {
			var b bytes.Buffer
			if err := Export(&b, []flowmodel.ServiceRecord{r}, Options{Format: format, IncludeLearning: true}); err != nil {
				t.Fatalf("%s: %v", format, err)
			}
			decodeAll(t, b.Bytes())
		}
	})
}
