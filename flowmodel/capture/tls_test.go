package capture

import (
	"github.com/meshguard/meshguard/flowmodel/capture/capturetest"
	"reflect"
	"testing"
	"time"
)

// reframe splits the handshake message of a single-record ClientHello into records of at
// most size bytes.
func reframe(record []byte, size int) []byte {
	msg := record[5:]
	var out []byte
	for len(msg) > 0 {
		n := min(size, len(msg))
		out = append(out, tlsRecordHandshake, record[1], record[2], byte(n>>8), byte(n))
		out = append(out, msg[:n]...)
		msg = msg[n:]
	}
	return out
}

func TestHelloParser(t *testing.T) {
	withSNI := capturetest.ClientHello(t, "pay.example.org")
	withoutSNI := capturetest.ClientHello(t, "")
	serverHello := append([]byte{22, 3, 3, 0, 6, 2, 0, 0, 2}, 3, 3)
	type result struct {
		Names []string
		Skips []string
	}
	cases := []struct {
		name   string
		stream []byte
		want   result
	}{
		{"server name", withSNI, result{Names: []string{"pay.example.org"}}},
		{"no server name", withoutSNI, result{Names: []string{""}}},
		{"handshake message over several records", reframe(withSNI, 100), result{Names: []string{"pay.example.org"}}},
		{"record of one byte each", reframe(withSNI, 1), result{Names: []string{"pay.example.org"}}},
		{"application data after the hello is ignored", append(append([]byte{}, withSNI...), 23, 3, 3, 0, 1, 0), result{Names: []string{"pay.example.org"}}},
		{"cut short", withSNI[:len(withSNI)-10], result{Skips: []string{SkipTLSIncomplete}}},
		{"not a ClientHello", serverHello, result{Skips: []string{SkipTLSMalformed}}},
		{"alert record", []byte{21, 3, 3, 0, 2, 2, 40}, result{Skips: []string{SkipTLSMalformed}}},
		{"empty record", []byte{22, 3, 1, 0, 0}, result{Skips: []string{SkipTLSMalformed}}},
		{"oversized handshake", []byte{22, 3, 1, 0, 4, 1, 0xff, 0xff, 0xff}, result{Skips: []string{SkipTLSMalformed}}},
	}
	for _, tc := range cases {
		for _, size := range []int{0, 1, 5, 333} {
			t.Run(tc.name+"/pieces of "+itoa(size), func(t *testing.T) {
				var got result
				var times []time.Time
				p := helloParser{
					onHello: func(name string, ts time.Time) { got.Names = append(got.Names, name); times = append(times, ts) },
					onSkip:  func(reason, _ string) { got.Skips = append(got.Skips, reason) },
				}
				b := tc.stream
				n := size
				if n == 0 {
					n = len(b)
				}
				for i := 0; len(b) > 0; i++ {
					k := min(n, len(b))
					p.feed(b[:k], at(i))
					b = b[k:]
				}
				p.end()
				if !reflect.DeepEqual(got, tc.want) {
					t.Errorf("got %+v, want %+v", got, tc.want)
				}
				for _, ts := range times {
					if !ts.Equal(at(0)) {
						t.Errorf("hello time %v, want the first piece's %v", ts, at(0))
					}
				}
			})
		}
	}
}

func TestServerName(t *testing.T) {
	body := capturetest.ClientHello(t, "a.b.example")[9:] // record and handshake headers off
	cases := []struct {
		name    string
		body    []byte
		want    string
		wantErr bool
	}{
		{"crypto/tls hello", body, "a.b.example", false},
		{"no extensions", append([]byte{3, 3}, make([]byte, 32+1+2+1)...), "", false},
		{"empty", nil, "", true},
		{"cut in the random", body[:20], "", true},
		{"cut in the extensions", body[:len(body)-3], "", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := serverName(tc.body)
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Errorf("serverName = %q, %v; want %q, error %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}
