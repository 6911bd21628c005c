package flowmodel

import (
	"errors"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestParseEvent(t *testing.T) {
	tests := []struct {
		name    string
		line    string
		want    Flow
		wantErr string
	}{
		{
			name: "design example",
			line: `{"time": "2026-01-02T15:04:05.123Z", "service": "shop/checkout",
 "destination": {"ip": "203.0.113.7", "port": 443, "host": "API.Example.com"},
 "request": {"method": "POST", "path": "/v1/charges?x=1",
             "headers": {"Content-Type": "application/json", "x-b": "1"}, "body_bytes": 1234},
 "response": {"status": 200, "body_bytes": 567}, "label": "ignored"}`,
			want: Flow{
				Time: time.Date(2026, 1, 2, 15, 4, 5, 123e6, time.UTC), Service: "shop/checkout",
				Destination: Destination{IP: netip.MustParseAddr("203.0.113.7"), Port: 443, Host: "api.example.com"},
				Method:      "POST", Path: "/v1/charges?x=1", HeaderKeys: []string{"content-type", "x-b"},
				ContentType: "application/json", RequestBytes: 1234, ResponseBytes: 567, Status: 200, Source: "event",
			},
		},
		{
			name: "unix seconds, host only, mapped IP",
			line: `{"time": 1767366245.5, "service": "s", "destination": {"host": "db.internal:5432"}}`,
			want: Flow{Time: time.Unix(1767366245, 5e8).UTC(), Service: "s", Destination: Destination{Host: "db.internal", Port: 5432},
				RequestBytes: -1, ResponseBytes: -1, Source: "event"},
		},
		{
			name: "mapped IPv6 normalised",
			line: `{"time": 1, "service": "s", "destination": {"ip": "::ffff:10.0.0.1", "port": 80}}`,
			want: Flow{Time: time.Unix(1, 0).UTC(), Service: "s", Destination: Destination{IP: netip.MustParseAddr("10.0.0.1"), Port: 80},
				RequestBytes: -1, ResponseBytes: -1, Source: "event"},
		},
		{name: "no service", line: `{"time": 1, "destination": {"ip": "10.0.0.1"}}`, wantErr: "service is required"},
		{name: "no destination", line: `{"time": 1, "service": "s"}`, wantErr: "destination.ip or destination.host is required"},
		{name: "bad ip", line: `{"time": 1, "service": "s", "destination": {"ip": "10.0.0.300"}}`, wantErr: "not an IP address"},
		{name: "bad port", line: `{"time": 1, "service": "s", "destination": {"ip": "10.0.0.1", "port": 70000}}`, wantErr: "out of range"},
		{name: "bad time", line: `{"time": "yesterday", "service": "s", "destination": {"ip": "10.0.0.1"}}`, wantErr: "RFC 3339"},
		{name: "no time", line: `{"service": "s", "destination": {"ip": "10.0.0.1"}}`, wantErr: "time is required"},
		{name: "bad host", line: `{"time": 1, "service": "s", "destination": {"host": "a b"}}`, wantErr: "bad host name"},
		{name: "not json", line: `{"time": 1,`, wantErr: "unexpected end"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseEvent([]byte(tt.line))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !flowsEqual(got, tt.want) {
				t.Fatalf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func flowsEqual(a, b Flow) bool {
	if !a.Time.Equal(b.Time) || len(a.HeaderKeys) != len(b.HeaderKeys) {
		return false
	}
	for i := range a.HeaderKeys {
		if a.HeaderKeys[i] != b.HeaderKeys[i] {
			return false
		}
	}
	a.Time, b.Time, a.HeaderKeys, b.HeaderKeys = time.Time{}, time.Time{}, nil, nil
	return a.Destination == b.Destination && a.Service == b.Service && a.Method == b.Method && a.Path == b.Path &&
		a.ContentType == b.ContentType && a.RequestBytes == b.RequestBytes && a.ResponseBytes == b.ResponseBytes &&
		a.Status == b.Status && a.Source == b.Source
}

func TestEventReaderSkipsBadLines(t *testing.T) {
	long := `{"time": 1, "service": "` + strings.Repeat("x", MaxEventLine) + `", "destination": {"ip": "10.0.0.1"}}`
	in := strings.Join([]string{
		`{"time": 1, "service": "a", "destination": {"ip": "10.0.0.1"}}`,
		``,
		`garbage`,
		long,
		`{"time": 2, "service": "b", "destination": {"ip": "10.0.0.2"}}`,
		`{"time": 3, "service": "c", "destination": {"ip": "10.0.0.3"}}`, // no trailing newline
	}, "\n")
	r := NewEventReader(strings.NewReader(in))
	var services []string
	var badLines []int
	for {
		f, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		var le *LineError
		if errors.As(err, &le) {
			badLines = append(badLines, le.Line)
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		services = append(services, f.Service+"@"+strconv.Itoa(r.Line()))
	}
	if got := strings.Join(services, " "); got != "a@1 b@5 c@6" {
		t.Errorf("events %q", got)
	}
	if len(badLines) != 2 || badLines[0] != 3 || badLines[1] != 4 {
		t.Errorf("bad lines %v, want [3 4]", badLines)
	}
}

func FuzzParseEvent(f *testing.F) {
	f.Add([]byte(`{"time": "2026-01-02T15:04:05.123Z", "service": "shop/checkout", "destination": {"ip": "203.0.113.7", "port": 443, "host": "api.example.com"}, "request": {"method": "POST", "path": "/v1?x=1", "headers": {"content-type": "a"}, "body_bytes": 1}, "response": {"status": 200, "body_bytes": 5}}`))
	f.Add([]byte(`{"time": 1e10, "service": "s", "destination": {"host": "[::1]:80"}}`))
	f.Add([]byte(`{"time": -1, "service": "s", "destination": {"ip": "::ffff:1.2.3.4%eth0"}}`))
	m := mustModel(f, Config{})
	f.Fuzz(func(t *testing.T, line []byte) {
		fl, err := ParseEvent(line)
		if err != nil {
			return
		}
		if fl.Service == "" || !fl.Destination.Valid() || fl.Time.IsZero() {
			t.Fatalf("accepted an event without service, destination or time: %+v", fl)
		}
		if fl.Destination.IP.IsValid() && fl.Destination.IP.Is4In6() {
			t.Fatalf("IPv4-mapped address not normalised: %v", fl.Destination.IP)
		}
		m.Decide(&fl) // never panics on what the parser accepts
	})
}
