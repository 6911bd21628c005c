package main

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshguard/meshguard/flowmodel/capture/capturetest"
)

func TestLearnFromPcapThenEnforce(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	b := &capturetest.Builder{T: t}
	client := netip.MustParseAddr("10.1.0.11")
	ap := func(a netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(a, port) }
	api, pay := netip.MustParseAddr("203.0.113.7"), netip.MustParseAddr("198.51.100.5")
	web := b.Conn(ap(client, 41000), ap(api, 80))
	web.Handshake(t0)
	web.Send(t0.Add(10*time.Millisecond), true, []byte("POST /v1/charges/12345 HTTP/1.1\r\nHost: api.example.com\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"), 40)
	web.Send(t0.Add(20*time.Millisecond), false, []byte("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), 1400)
	web.Close(t0.Add(30 * time.Millisecond))
	tls := b.Conn(ap(client, 41001), ap(pay, 443))
	tls.Handshake(t0.Add(time.Second))
	tls.Send(t0.Add(time.Second+10*time.Millisecond), true, capturetest.ClientHello(t, "pay.example.org"), 1400)
	tls.Reset(t0.Add(time.Second + 20*time.Millisecond))

	dir := t.TempDir()
	pcap := filepath.Join(dir, "staging.pcap")
	if err := os.WriteFile(pcap, b.Pcap(), 0o600); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "data")
	var out, errOut strings.Builder
	if err := run(context.Background(), []string{"learn", "--pcap", pcap, "--service", "shop/checkout", "--data-dir", data}, nil, &out, &errOut); err != nil {
		t.Fatalf("%v\n%s", err, errOut.String())
	}
	if err := contains(out.String(), "1 HTTP requests, 1 TLS connections", "learned 2 flows", "1 services"); err != nil {
		t.Fatalf("%v in:\n%s", err, out.String())
	}
	// Two IPs and two hosts; one shape (the TLS connection has none).
	if got := tableRow(out.String(), "shop/checkout"); got != "shop/checkout learn 4 1 2" {
		t.Fatalf("summary row %q in:\n%s", got, out.String())
	}

	ts := startTestServer(t, data)
	ts.mustSetMode(t, "shop/checkout", "enforce")
	for _, tc := range []struct {
		ip, host string
		port     int
		want     int
	}{
		{"203.0.113.7", "api.example.com", 80, 200},
		{"198.51.100.5", "pay.example.org", 443, 200},
		{"192.0.2.99", "other.example.com", 443, 403},
	} {
		if code, _ := ts.do(t, checkout.request(tc.ip, tc.port, tc.host, "POST", "/v1/charges/777", "")); code != tc.want {
			t.Errorf("%s: %d, want %d", tc.host, code, tc.want)
		}
	}
}

func TestLearnFromEvents(t *testing.T) {
	dir := t.TempDir()
	events := filepath.Join(dir, "events.jsonl")
	if err := os.WriteFile(events, []byte(strings.Join([]string{
		`{"time": "2026-01-02T00:00:00Z", "service": "jobs/etl", "destination": {"ip": "192.0.2.80", "port": 443, "host": "s3.example.com"}, "request": {"method": "PUT", "path": "/b/k1"}}`,
		`{"time": "2026-01-02T00:01:00Z", "service": "jobs/etl"}`,
		`{"time": "2026-01-02T00:02:00Z", "service": "jobs/etl", "destination": {"host": "db.internal", "port": 5432}}`,
	}, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errOut strings.Builder
	if err := run(context.Background(), []string{"learn", "--events", events, "--data-dir", filepath.Join(dir, "data")}, nil, &out, &errOut); err != nil {
		t.Fatalf("%v\n%s", err, errOut.String())
	}
	if err := contains(errOut.String(), "line 2: destination.ip or destination.host is required", "1 bad lines skipped"); err != nil {
		t.Errorf("%v in stderr:\n%s", err, errOut.String())
	}
	if err := contains(out.String(), "learned 2 flows"); err != nil {
		t.Errorf("%v in:\n%s", err, out.String())
	}
	if got := tableRow(out.String(), "jobs/etl"); got != "jobs/etl learn 3 1 2" {
		t.Errorf("summary row %q in:\n%s", got, out.String())
	}
	// Bad usage is reported at once.
	err := run(context.Background(), []string{"learn", "--pcap", "x", "--events", "y"}, nil, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "exactly one of --pcap and --events") {
		t.Errorf("both inputs: %v", err)
	}
	err = run(context.Background(), []string{"learn", "--pcap", "x"}, nil, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "--service NAME or --service-by src-ip") {
		t.Errorf("no service: %v", err)
	}
}

func TestApproveAndRejectCommands(t *testing.T) {
	dir := t.TempDir()
	ts := startTestServer(t, dir)
	learn(t, ts)
	ts.mustSetMode(t, "shop/checkout", "enforce")
	if code, _ := ts.do(t, checkout.request("198.51.100.66", 443, "partner.example.net", "GET", "/", "")); code != 403 {
		t.Fatalf("before approval: %d", code)
	}
	var out, errOut strings.Builder
	if err := run(context.Background(), []string{"approve", "--admin", ts.adminURL, "--data-dir", dir, "--by", "alice", "shop/checkout", "198.51.100.66:443"}, nil, &out, &errOut); err != nil {
		t.Fatalf("%v\n%s", err, errOut.String())
	}
	if code, _ := ts.do(t, checkout.request("198.51.100.66", 443, "partner.example.net", "GET", "/", "")); code != 200 {
		t.Fatalf("after approval: %d", code)
	}
	if err := run(context.Background(), []string{"reject", "--admin", ts.adminURL, "--data-dir", dir, "--by", "bob", "shop/checkout", "203.0.113.10:443"}, nil, &out, &errOut); err != nil {
		t.Fatalf("%v\n%s", err, errOut.String())
	}
	if code, _ := ts.do(t, checkout.request("203.0.113.10", 443, "", "GET", "/", "")); code != 403 {
		t.Fatalf("after rejection: %d", code)
	}
	code, body := ts.http(t, "GET", "/v1/services/shop%2Fcheckout", nil)
	if err := contains(body, `"action": "approve"`, `"by": "alice (admin-token`, `"action": "reject"`, `"destination": "203.0.113.10:443"`); code != 200 || err != nil {
		t.Fatalf("%d %v in:\n%s", code, err, body)
	}
	err := run(context.Background(), []string{"reject", "--admin", ts.adminURL, "--data-dir", dir, "--by", "bob", "nobody/here", "1.2.3.4:5"}, nil, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("unknown service: %v", err)
	}
	err = run(context.Background(), []string{"approve", "--admin", ts.adminURL, "--data-dir", dir, "--by", "x", "shop/checkout", "api.example.com:443", "not a shape"}, nil, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "400") {
		t.Fatalf("bad shape: %v", err)
	}
}

// tableRow returns the fields of the first line of a table that starts with first, joined
// by single spaces.
func tableRow(table, first string) string {
	for _, line := range strings.Split(table, "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] == first {
			return strings.Join(f, " ")
		}
	}
	return ""
}
