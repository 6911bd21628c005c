package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshguard/meshguard/bench/evaluate"
)

// tsv joins fields with tabs and lines with newlines.
func tsv(lines ...[]string) string {
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(strings.Join(l, "\t"))
		b.WriteByte('\n')
	}
	return b.String()
}

func header(path string, fields ...string) [][]string {
	return [][]string{
		{`#separator \x09`},
		{"#set_separator", ","},
		{"#empty_field", "(empty)"},
		{"#unset_field", "-"},
		{"#path", path},
		{"#fields", strings.Join(fields, "\t")},
		{"#types", "time\tstring"},
	}
}

var (
	httpFields = []string{"ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "trans_depth", "method", "host", "uri", "referrer", "user_agent", "request_body_len", "response_body_len", "status_code", "status_msg", "label", "detailedlabel"}
	connFields = []string{"ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto", "service", "duration", "orig_bytes", "resp_bytes", "label", "detailedlabel"}
	sslFields  = []string{"ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "server_name", "label", "detailedlabel"}
)

func writeCapture(t *testing.T, dir string, logs map[string]string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, body := range logs {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestConvert(t *testing.T) {
	data := t.TempDir()
	writeCapture(t, filepath.Join(data, "a-mixed"), map[string]string{
		"http.log.labeled": tsv(append(header("http", httpFields...),
			// Two requests on one connection; Host with port and capitals, a referrer.
			[]string{"100.000001", "Chttp1", "10.0.0.5", "50000", "93.184.216.34", "80", "1", "GET", "WWW.Example.com:8080", "/a?b=1", "http://x.example/", "UA/1.0", "0", "1256", "200", "OK", "Benign", "Web"},
			[]string{"100.5", "Chttp1", "10.0.0.5", "50000", "93.184.216.34", "80", "2", "POST", "www.example.com", "/upload", "-", "-", "4096", "0", "201", "Created", "Benign", "Web"},
			// Not HTTP on port 80: Zeek logs it with every request field unset.
			[]string{"102", "Chttp2", "10.0.0.5", "50001", "198.51.100.9", "80", "1", "-", "-", "-", "-", "-", "0", "166", "400", "Bad Request", "Malicious", "(empty)"},
			// A Host that is an IP literal, and one that is not a host name.
			[]string{"103", "Chttp3", "10.0.0.5", "50002", "198.51.100.10", "80", "1", "GET", "198.51.100.10", "/", "-", "-", "0", "-", "-", "-", "Malicious", "C2"},
			[]string{"104", "Chttp4", "10.0.0.5", "50003", "198.51.100.11", "80", "1", "GET", "bad host!", "/", "-", "-", "-", "-", "-", "-", "Malicious", "C2"},
		)...),
		"conn.log.labeled": tsv(append(header("conn", connFields...),
			// The first row written starts the capture; the connection after it is older.
			[]string{"99.5", "Ctls1", "10.0.0.5", "50010", "203.0.113.7", "443", "tcp", "ssl", "1.0", "517", "4039", "Benign", "Microsoft"},
			[]string{"50", "Cold", "10.0.0.5", "50011", "203.0.113.8", "8883", "tcp", "-", "60", "31", "31", "Background", "(empty)"},
			// Covered by http.log: skipped.
			[]string{"100", "Chttp1", "10.0.0.5", "50000", "93.184.216.34", "80", "tcp", "http", "1.2", "500", "1400", "Benign", "Web"},
			// Inbound scan, UDP, bytes unset.
			[]string{"101", "Cscan", "192.0.2.66", "40000", "10.0.0.5", "123", "udp", "-", "-", "-", "-", "Malicious", "External-Attack-to-Device"},
		)...),
		"ssl.log.labeled": tsv(append(header("ssl", sslFields...),
			[]string{"99.6", "Ctls1", "10.0.0.5", "50010", "203.0.113.7", "443", "Settings.Example.NET", "Benign", "Microsoft"},
		)...),
	})
	// A second capture with relative times and only an http.log, as 009-zeek-malicious.
	writeCapture(t, filepath.Join(data, "b-malicious"), map[string]string{
		"http.log.labeled": tsv(append(header("http", httpFields...),
			[]string{"19.5", "Cb1", "192.168.1.113", "49159", "195.113.232.73", "80", "1", "GET", "www.msftncsi.com", "/ncsi.txt", "-", "Microsoft NCSI", "0", "14", "200", "OK", "Benign", "Windows"},
		)...),
		"README.md": "not a log\n",
	})

	recs, st, err := convertDir(data)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := evaluate.WriteJSONL(&buf, recs); err != nil {
		t.Fatal(err)
	}
	want := strings.Join([]string{
		`{"time":"1970-01-01T00:00:19.5Z","service":"192.168.1.113","destination":{"ip":"195.113.232.73","port":80,"host":"www.msftncsi.com"},"request":{"method":"GET","path":"/ncsi.txt","headers":{"user-agent":"Microsoft NCSI"},"body_bytes":0},"response":{"status":200,"body_bytes":14},"label":"benign","detailed_label":"Windows","capture":"b-malicious","zeek_log":"http","zeek_uid":"Cb1"}`,
		`{"time":"1970-01-01T00:00:50Z","service":"10.0.0.5","destination":{"ip":"203.0.113.8","port":8883},"request":{"body_bytes":31},"response":{"body_bytes":31},"proto":"tcp","label":"background","capture":"a-mixed","zeek_log":"conn","zeek_uid":"Cold"}`,
		`{"time":"1970-01-01T00:01:39.5Z","service":"10.0.0.5","destination":{"ip":"203.0.113.7","port":443,"host":"settings.example.net"},"request":{"body_bytes":517},"response":{"body_bytes":4039},"proto":"tcp","label":"benign","detailed_label":"Microsoft","capture":"a-mixed","zeek_log":"conn","zeek_uid":"Ctls1"}`,
		`{"time":"1970-01-01T00:01:40.000001Z","service":"10.0.0.5","destination":{"ip":"93.184.216.34","port":80,"host":"www.example.com"},"request":{"method":"GET","path":"/a?b=1","headers":{"referer":"http://x.example/","user-agent":"UA/1.0"},"body_bytes":0},"response":{"status":200,"body_bytes":1256},"label":"benign","detailed_label":"Web","capture":"a-mixed","zeek_log":"http","zeek_uid":"Chttp1"}`,
		`{"time":"1970-01-01T00:01:40.5Z","service":"10.0.0.5","destination":{"ip":"93.184.216.34","port":80,"host":"www.example.com"},"request":{"method":"POST","path":"/upload","body_bytes":4096},"response":{"status":201,"body_bytes":0},"label":"benign","detailed_label":"Web","capture":"a-mixed","zeek_log":"http","zeek_uid":"Chttp1"}`,
		`{"time":"1970-01-01T00:01:41Z","service":"192.0.2.66","destination":{"ip":"10.0.0.5","port":123},"request":{},"response":{},"proto":"udp","label":"malicious","detailed_label":"External-Attack-to-Device","capture":"a-mixed","zeek_log":"conn","zeek_uid":"Cscan"}`,
		`{"time":"1970-01-01T00:01:42Z","service":"10.0.0.5","destination":{"ip":"198.51.100.9","port":80},"request":{"body_bytes":0},"response":{"status":400,"body_bytes":166},"label":"malicious","capture":"a-mixed","zeek_log":"http","zeek_uid":"Chttp2"}`,
		`{"time":"1970-01-01T00:01:43Z","service":"10.0.0.5","destination":{"ip":"198.51.100.10","port":80},"request":{"method":"GET","path":"/","body_bytes":0},"response":{},"label":"malicious","detailed_label":"C2","capture":"a-mixed","zeek_log":"http","zeek_uid":"Chttp3"}`,
		`{"time":"1970-01-01T00:01:44Z","service":"10.0.0.5","destination":{"ip":"198.51.100.11","port":80},"request":{"method":"GET","path":"/"},"response":{},"label":"malicious","detailed_label":"C2","capture":"a-mixed","zeek_log":"http","zeek_uid":"Chttp4"}`,
	}, "\n") + "\n"
	if got := buf.String(); got != want {
		gl, wl := strings.Split(got, "\n"), strings.Split(want, "\n")
		for i := range max(len(gl), len(wl)) {
			var g, w string
			if i < len(gl) {
				g = gl[i]
			}
			if i < len(wl) {
				w = wl[i]
			}
			if g != w {
				t.Errorf("line %d:\n got %s\nwant %s", i+1, g, w)
			}
		}
	}
	wantStats := []stats{
		{Capture: "a-mixed", HTTP: 5, Conn: 3, ConnCovered: 1, SNI: 1, BadHost: 1, Start: time.Unix(99, 5e8).UTC()},
		{Capture: "b-malicious", HTTP: 1, Start: time.Unix(19, 5e8).UTC()},
	}
	if len(st) != len(wantStats) {
		t.Fatalf("stats = %+v", st)
	}
	for i := range st {
		if st[i] != wantStats[i] {
			t.Errorf("stats[%d] = %+v, want %+v", i, st[i], wantStats[i])
		}
	}
}

func TestConvertErrors(t *testing.T) {
	tests := []struct {
		name string
		logs map[string]string
		want string
	}{
		{
			name: "column count",
			logs: map[string]string{"conn.log": tsv(append(header("conn", connFields...), []string{"1", "C1", "10.0.0.1"})...)},
			want: "line 8: 3 columns, the #fields header names 13",
		},
		{
			name: "missing column",
			logs: map[string]string{"conn.log": tsv(append(header("conn", "ts", "uid"), []string{"1", "C1"})...)},
			want: "conn log lacks columns id.orig_h, id.resp_h, id.resp_p, label, detailedlabel, proto, orig_bytes, resp_bytes",
		},
		{
			name: "no header",
			logs: map[string]string{"http.log.labeled": "1\tC1\n"},
			want: "line 1: row before the #fields header",
		},
		{
			name: "bad time",
			logs: map[string]string{"conn.log": tsv(append(header("conn", connFields...), []string{"x1", "C1", "10.0.0.1", "1", "10.0.0.2", "80", "tcp", "-", "-", "-", "-", "Benign", "-"})...)},
			want: `bad timestamp "x1"`,
		},
		{
			name: "no logs",
			logs: map[string]string{"dns.log.labeled": "#fields\tts\n"},
			want: "no capture with an http or conn log",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := t.TempDir()
			writeCapture(t, filepath.Join(data, "c"), tt.logs)
			_, _, err := convertDir(data)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestParseZeekTime(t *testing.T) {
	for in, want := range map[string]time.Time{
		"1655071198.444458": time.Unix(1655071198, 444458000).UTC(),
		"19.379652":         time.Unix(19, 379652000).UTC(),
		"7":                 time.Unix(7, 0).UTC(),
		"1.1234567891":      time.Unix(1, 123456789).UTC(),
	} {
		got, err := parseZeekTime(in)
		if err != nil || !got.Equal(want) {
			t.Errorf("parseZeekTime(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1.5", "1.x", "abc"} {
		if _, err := parseZeekTime(in); err == nil {
			t.Errorf("parseZeekTime(%q) succeeded", in)
		}
	}
}
