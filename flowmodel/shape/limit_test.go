package shape

import (
	"fmt"
	"strings"
	"testing"
)

// escNames returns n distinct header names of 60 bytes that all need escaping.
func escNames(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = strings.Repeat("\x01", 58) + string(rune('A'+i%26)) + string(rune('A'+i/26))
	}
	return out
}

func checkedLimits(t testing.TB) Limits {
	t.Helper()
	l, err := Limits{}.Check()
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestAdversaryLimits covers issue 10 case 5 in the shape package: requests over the limits
// are cut to a shape of bounded text that names a hash of what was cut; two requests that
// differ only past the limits keep different shapes; a cut shape's text parses back to its
// key; a request within the limits is left as it is.
func TestAdversaryLimits(t *testing.T) {
	l := checkedLimits(t)
	names := func(n, size int, tag string) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = fmt.Sprintf("x-%s-%d-%s", tag, i, strings.Repeat("a", size))
		}
		return out
	}
	long := func(n int, c string) string { return strings.Repeat(c, n) }
	tests := []struct {
		name string
		r, o Request // o differs from r only past the limits
	}{
		{"1100 header names", Request{Method: "GET", Path: "/", HeaderKeys: names(1100, 20, "h")},
			Request{Method: "GET", Path: "/", HeaderKeys: append(names(1099, 20, "h"), "x-other")}},
		{"5000-segment path", Request{Method: "GET", Path: strings.Repeat("/seg", 5000)},
			Request{Method: "GET", Path: strings.Repeat("/seg", 4999) + "/other"}},
		{"500 long header names", Request{Method: "GET", Path: "/", HeaderKeys: names(500, 200, "h")},
			Request{Method: "GET", Path: "/", HeaderKeys: names(500, 201, "h")}},
		{"many query keys", Request{Method: "GET", Path: "/q?" + strings.Join(names(300, 10, "k"), "=1&")},
			Request{Method: "GET", Path: "/q?" + strings.Join(names(301, 10, "k"), "=1&")}},
		{"long method and content type", Request{Method: long(100, "G"), Path: "/", ContentType: long(5000, "x")},
			Request{Method: long(100, "G"), Path: "/", ContentType: long(5001, "x")}},
		{"one long path", Request{Method: "GET", Path: "/" + long(100_000, "a")},
			Request{Method: "GET", Path: "/" + long(100_001, "a")}},
		{"every byte escaped", Request{Method: long(40, "\x01"), Path: strings.Repeat("/\x01\x02", 40) + "?" + strings.Repeat("\x01&", 40),
			HeaderKeys: escNames(80), ContentType: long(200, "\x01")},
			Request{Method: long(41, "\x01"), Path: strings.Repeat("/\x01\x02", 40) + "?" + strings.Repeat("\x01&", 40),
				HeaderKeys: escNames(80), ContentType: long(200, "\x01")}},
	}
	s := New(Config{})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if l.Within(&tt.r) {
				t.Fatal("within the limits")
			}
			c, cut := l.Cut(&tt.r)
			if !cut || len(c.HeaderKeys) > l.MaxHeaderKeys+1 {
				t.Fatalf("cut %v: %d header names", cut, len(c.HeaderKeys))
			}
			text := s.Shape(&c).String()
			if len(text) > MaxText {
				t.Errorf("shape text %d bytes, over %d", len(text), MaxText)
			}
			if !strings.Contains(text, ExcessPrefix) {
				t.Errorf("no excess summary in %.200s", text)
			}
			p, err := Parse(text)
			if err != nil {
				t.Fatal(err)
			}
			if s.KeyOf(p) != s.Key(&c) {
				t.Error("the cut shape's text does not give its key")
			}
			c2, _ := l.Cut(&tt.o)
			if s.Key(&c2) == s.Key(&c) {
				t.Error("requests differing past the limits have one shape")
			}
		})
	}
	ok := Request{Method: "POST", Path: "/v1/charges/42?expand=customer", HeaderKeys: []string{"accept", "content-type"}, ContentType: "application/json"}
	if !l.Within(&ok) {
		t.Fatal("an ordinary request is over the limits")
	}
	if c, cut := l.Cut(&ok); cut || c.Path != ok.Path || len(c.HeaderKeys) != 2 {
		t.Errorf("an ordinary request was cut: %+v", c)
	}
	if n := testing.AllocsPerRun(100, func() { l.Within(&ok) }); n != 0 {
		t.Errorf("Within allocates %v times", n)
	}
	if _, err := (Limits{MaxBytes: -1}).Check(); err == nil {
		t.Error("negative limit accepted")
	}
}

func BenchmarkWithin(b *testing.B) {
	l := checkedLimits(b)
	r := Request{Method: "POST", Path: "/v1/charges/98765?expand=customer", ContentType: "application/json",
		HeaderKeys: []string{"accept", "authorization", "content-type", "content-length", "user-agent", "x-request-id", "traceparent", "x-envoy-attempt-count", "x-forwarded-proto", "accept-encoding"}}
	s := New(Config{})
	b.Run("within", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if !l.Within(&r) {
				b.Fatal("over")
			}
		}
	})
	b.Run("key", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			s.Key(&r)
		}
	})
}
