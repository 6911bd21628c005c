package admin

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"testing"
	"time"

	"github.com/meshguard/meshguard/flowmodel"
)

// TestServicesReportEpisodes: an alert storm of a monitored service is one open episode in
// GET /v1/services and GET /v1/services/{service}, with its count and an example trace.
func TestServicesReportEpisodes(t *testing.T) {
	m, err := flowmodel.New(flowmodel.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 1, 2, 15, 0, 0, 0, time.UTC)
	f := flowmodel.Flow{Time: t0, Service: "shop/checkout", Method: "GET", Path: "/", RequestBytes: -1,
		Destination: flowmodel.Destination{IP: netip.MustParseAddr("203.0.113.7"), Host: "api.example.com", Port: 443}}
	m.Decide(&f)
	if err := m.SetMode("shop/checkout", flowmodel.ModeChange{Mode: flowmodel.ModeMonitor}); err != nil {
		t.Fatal(err)
	}
	f.Destination = flowmodel.Destination{IP: netip.MustParseAddr("198.51.100.9"), Port: 4444}
	f.TraceID = [16]byte{0: 0x4b, 15: 0x36}
	for i := range 25 {
		f.Time = t0.Add(time.Hour + time.Duration(i)*time.Second)
		if v := m.Decide(&f); v.Action != flowmodel.Alert {
			t.Fatalf("alert %d: %s", i, v.Action)
		}
	}
	h, err := New(m, Options{Token: adminToken})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	get := func(path string, v any) {
		t.Helper()
		req, _ := http.NewRequest("GET", srv.URL+path, nil)
		req.Header.Set("Authorization", "Bearer "+adminToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %s", path, resp.Status)
		}
		if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
			t.Fatal(err)
		}
	}
	var one flowmodel.ServiceRecord
	get("/v1/services/"+url.PathEscape("shop/checkout"), &one)
	var list ServiceList
	get("/v1/services", &list)
	if len(list.Services) != 1 {
		t.Fatalf("%d services", len(list.Services))
	}
	for _, r := range []flowmodel.ServiceRecord{one, list.Services[0]} {
		e := r.Episodes
		if e == nil || len(e.Open) != 1 || len(e.Recent) != 0 {
			t.Fatalf("episodes %+v", e)
		}
		o := e.Open[0]
		if o.Count != 25 || o.Kind != "new_destination" || o.Destination != "198.51.100.9:4444" ||
			len(o.TraceIDs) != 1 || o.TraceIDs[0] != "4b000000000000000000000000000036" {
			t.Fatalf("open episode %+v", o)
		}
	}
}
