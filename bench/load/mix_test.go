package main

import (
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/meshguard/meshguard/extproc/contract"
	"github.com/meshguard/meshguard/extproc/envoysim"
)

func headerMap(h *extprocv3.HttpHeaders) map[string]string {
	m := map[string]string{}
	for _, hv := range h.GetHeaders().GetHeaders() {
		m[hv.GetKey()] = string(hv.GetRawValue())
	}
	return m
}

func TestBuildIsEnvoyShaped(t *testing.T) {
	tests := []struct {
		name         string
		cfg          MixConfig
		req          func(m *Mix) Req
		wantPhases   []string // for a GET; POST/PUT may add request_body
		wantDestPref string
		wantService  string
	}{
		{
			name:         "known destination, response phase",
			cfg:          MixConfig{Services: 30, Namespaces: 4, DestsPerService: 5, Response: true, ProtocolConfig: true},
			req:          func(m *Mix) Req { return m.Known(13, 2) },
			wantPhases:   []string{"request_headers", "response_headers"},
			wantDestPref: "10.0.0.",
			wantService:  "ns-1/wl-13",
		},
		{
			name:         "unseen destination, headers only",
			cfg:          MixConfig{Services: 3, DestsPerService: 1},
			req:          func(m *Mix) Req { return m.Unseen(2, 300) },
			wantPhases:   []string{"request_headers"},
			wantDestPref: "100.64.1.44",
			wantService:  "ns-0/wl-2",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, err := NewMix(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			req := tc.req(m)
			if got := m.ServiceName(req.Service); got != tc.wantService {
				t.Fatalf("service name %q, want %q", got, tc.wantService)
			}
			ex := m.Build(req, rand.New(rand.NewPCG(1, 1)))
			var phases []string
			for _, msg := range ex.Msgs {
				phases = append(phases, envoysim.PhaseName(msg))
			}
			if strings.Join(phases, ",") != strings.Join(tc.wantPhases, ",") {
				t.Fatalf("phases %v, want %v", phases, tc.wantPhases)
			}
			first := ex.Msgs[0]
			attrs := first.GetAttributes()[contract.AttributesKey].GetFields()
			ns, wl := attrs[contract.AttrNodeNamespace].GetStringValue(), attrs[contract.AttrNodeWorkload].GetStringValue()
			if ns+"/"+wl != tc.wantService {
				t.Fatalf("NAMESPACE/WORKLOAD_NAME attributes %s/%s, want %s", ns, wl, tc.wantService)
			}
			nodeID := attrs[contract.AttrNodeID].GetStringValue()
			parts := strings.Split(nodeID, "~")
			if len(parts) != 4 || parts[0] != "sidecar" || !strings.HasSuffix(parts[2], "."+ns) || parts[3] != ns+".svc.cluster.local" {
				t.Fatalf("node id %q is not in Istio form sidecar~IP~POD.NS~NS.svc.cluster.local", nodeID)
			}
			dst, err := netip.ParseAddrPort(attrs[contract.AttrDestination].GetStringValue())
			if err != nil || !strings.HasPrefix(dst.Addr().String(), tc.wantDestPref) {
				t.Fatalf("destination.address %q (%v), want prefix %s", attrs[contract.AttrDestination].GetStringValue(), err, tc.wantDestPref)
			}
			if _, err := netip.ParseAddrPort(attrs[contract.AttrSourceAddress].GetStringValue()); err != nil {
				t.Fatalf("source.address: %v", err)
			}
			h := headerMap(first.GetRequestHeaders())
			for _, k := range []string{":method", ":path", ":authority", ":scheme", "user-agent", "accept", "x-request-id", "traceparent"} {
				if h[k] == "" {
					t.Errorf("header %s missing", k)
				}
			}
			if len(h["traceparent"]) != 55 {
				t.Errorf("traceparent %q is not W3C shaped", h["traceparent"])
			}
			if (first.GetProtocolConfig() != nil) != tc.cfg.ProtocolConfig {
				t.Errorf("protocol_config present = %v, want %v", first.GetProtocolConfig() != nil, tc.cfg.ProtocolConfig)
			}
			for _, msg := range ex.Msgs[1:] {
				if msg.GetProtocolConfig() != nil {
					t.Errorf("protocol_config on a later message")
				}
			}
			if tc.cfg.Response {
				last := ex.Msgs[len(ex.Msgs)-1]
				if headerMap(last.GetResponseHeaders())[":status"] == "" {
					t.Errorf("response headers without :status")
				}
				up := last.GetAttributes()[contract.AttributesKey].GetFields()[contract.AttrUpstreamAddress].GetStringValue()
				if up != dst.String() {
					t.Errorf("upstream.address %q, want %q", up, dst)
				}
			}
		})
	}
}

func TestBodyPhaseOnlyForRequestsWithBodies(t *testing.T) {
	m, err := NewMix(MixConfig{Services: 5, DestsPerService: 5, Body: true, BodyBytes: 300, Response: true})
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(3, 4))
	withBody := 0
	for range 500 {
		ex := m.Build(m.Pick(r), r)
		first := ex.Msgs[0].GetRequestHeaders()
		method := headerMap(first)[":method"]
		hasBody := len(ex.Msgs) == 3
		if hasBody != (method != "GET") || first.GetEndOfStream() == hasBody {
			t.Fatalf("%s: %d messages, end_of_stream %v", method, len(ex.Msgs), first.GetEndOfStream())
		}
		if hasBody {
			withBody++
			b := ex.Msgs[1].GetRequestBody()
			if len(b.GetBody()) != 300 || !b.GetEndOfStream() {
				t.Fatalf("body of %d bytes, end_of_stream %v", len(b.GetBody()), b.GetEndOfStream())
			}
			if headerMap(first)["content-length"] != "300" {
				t.Fatalf("content-length %q", headerMap(first)["content-length"])
			}
		}
	}
	if withBody < 50 || withBody > 150 {
		t.Fatalf("%d of 500 requests had bodies, want about 20%%", withBody)
	}
}

func TestPickNewDestinationShare(t *testing.T) {
	m, err := NewMix(MixConfig{Services: 10, DestsPerService: 10, NewDestShare: 0.1})
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(5, 6))
	unseen := 0
	for range 10000 {
		if m.Pick(r).Dest < 0 {
			unseen++
		}
	}
	if unseen < 850 || unseen > 1150 {
		t.Fatalf("%d of 10000 to unseen destinations, want about 1000", unseen)
	}
}

func TestNewMixRejects(t *testing.T) {
	tests := map[string]MixConfig{
		"no services":     {DestsPerService: 1},
		"no destinations": {Services: 1},
		"share above 1":   {Services: 1, DestsPerService: 1, NewDestShare: 1.5},
		"too many pairs":  {Services: 1 << 13, DestsPerService: 1 << 12},
	}
	for name, cfg := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := NewMix(cfg); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

func BenchmarkBuild(b *testing.B) {
	m, err := NewMix(MixConfig{Services: 100, DestsPerService: 20, Response: true, ProtocolConfig: true})
	if err != nil {
		b.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 2))
	b.ReportAllocs()
	for b.Loop() {
		m.Build(m.Pick(r), r)
	}
}
