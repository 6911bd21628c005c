package param

import (
	"strings"
	"testing"
)

type got struct {
	where  Where
	name   string
	raw    string
	absent bool
}

func parseAll(lim Limits, query, body, ct string) ([]got, *parser) {
	p := &parser{}
	p.reset(lim, query, body, bodyTypeOf(ct))
	var out []got
	var x param
	for p.next(&x) {
		out = append(out, got{x.where, string(x.name()), x.raw, x.absent})
	}
	return out, p
}

func lim() Limits {
	c, _ := Config{}.Check()
	return c.Limits
}

func TestParseQuery(t *testing.T) {
	tests := []struct {
		name, query string
		want        []got
	}{
		{"plain", "a=1&b=x%20y", []got{{InQuery, "a", "1", false}, {InQuery, "b", "x%20y", false}}},
		{"bare key and empty value", "debug&v=", []got{{InQuery, "debug", "", true}, {InQuery, "v", "", false}}},
		{"empty pairs skipped", "&&a=1&", []got{{InQuery, "a", "1", false}}},
		{"encoded key", "fields%5Bproducts%5D=x", []got{{InQuery, "fields[products]", "x", false}}},
		{"plus in key", "a+b=1", []got{{InQuery, "a b", "1", false}}},
		{"numeric key templated", "12345=x", []got{{InQuery, "{id}", "x", false}}},
		{"uuid key templated", "550e8400-e29b-41d4-a716-446655440000=1", []got{{InQuery, "{id}", "1", false}}},
		{"long key", strings.Repeat("k", 65) + "=1", []got{{InQuery, "{long}", "1", false}}},
		{"value with =", "a=b=c", []got{{InQuery, "a", "b=c", false}}},
		{"empty key", "=x", []got{{InQuery, "", "x", false}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, p := parseAll(lim(), tt.query, "", "")
			if len(out) != len(tt.want) {
				t.Fatalf("got %+v, want %+v", out, tt.want)
			}
			for i := range out {
				if out[i] != tt.want[i] {
					t.Errorf("param %d = %+v, want %+v", i, out[i], tt.want[i])
				}
			}
			if p.overflow || p.bad {
				t.Errorf("overflow %v bad %v", p.overflow, p.bad)
			}
		})
	}
}

func TestParseBody(t *testing.T) {
	tests := []struct {
		name, body, ct string
		want           []got
		overflow, bad  bool
	}{
		{name: "form", body: "user=jane&qty=2", ct: "application/x-www-form-urlencoded; charset=utf-8",
			want: []got{{InForm, "body.user", "jane", false}, {InForm, "body.qty", "2", false}}},
		{name: "json object", body: `{"user":{"name":"Jane","age":31},"ok":true,"n":null}`, ct: "application/json",
			want: []got{{InJSON, "body.user.name", "Jane", false}, {InJSON, "body.user.age", "31", false},
				{InJSON, "body.ok", "true", false}, {InJSON, "body.n", "null", false}}},
		{name: "json arrays", body: ` [ {"sku":"A-1"}, {"sku":"B\"2"} , [1,2] ] `, ct: "application/vnd.api+json",
			want: []got{{InJSON, "body[].sku", "A-1", false}, {InJSON, "body[].sku", `B\"2`, false},
				{InJSON, "body[][]", "1", false}, {InJSON, "body[][]", "2", false}}},
		{name: "json id keys", body: `{"items":{"12345":{"qty":1}}}`, ct: "application/json",
			want: []got{{InJSON, "body.items.{id}.qty", "1", false}}},
		{name: "json scalar", body: `"hello"`, ct: "application/json", want: []got{{InJSON, "body", "hello", false}}},
		{name: "json escaped key", body: `{"a\u0062":1}`, ct: "application/json", want: []got{{InJSON, "body.ab", "1", false}}},
		{name: "json empty containers", body: `{"a":{},"b":[],"c":1}`, ct: "application/json", want: []got{{InJSON, "body.c", "1", false}}},
		{name: "json truncated", body: `{"a":1,"b":"xy`, ct: "application/json", want: []got{{InJSON, "body.a", "1", false}}, bad: true},
		{name: "json trailing garbage", body: `{"a":1} x`, ct: "application/json", want: []got{{InJSON, "body.a", "1", false}}, bad: true},
		{name: "json missing colon", body: `{"a" 1}`, ct: "application/json", bad: true},
		{name: "json too deep", body: `{"a":{"b":{"c":{"d":{"e":{"f":{"g":{"h":{"i":1}}}}}}}}}`, ct: "application/json", overflow: true},
		// A workload chooses its content type: a body is read as what it is, and marked bad
		// when that is not what its type says.
		{name: "json as text/plain read", body: `{"a":1}`, ct: "text/plain", want: []got{{InJSON, "body.a", "1", false}}, bad: true},
		{name: "json as form read as json", body: ` {"a":"x"}`, ct: "application/x-www-form-urlencoded", want: []got{{InJSON, "body.a", "x", false}}, bad: true},
		{name: "form as json read as form", body: "a=1&b=%27", ct: "application/json", want: []got{{InForm, "body.a", "1", false}, {InForm, "body.b", "%27", false}}, bad: true},
		{name: "form without content type", body: "email=' or 1=1--", want: []got{{InForm, "body.email", "' or 1=1--", false}}, bad: true},
		{name: "opaque body ignored", body: "\xff\xd8\xff\xe0 JFIF a=b", ct: "image/jpeg"},
		{name: "prose ignored", body: "hello, world = 1", ct: "text/plain"},
		{name: "multipart", body: "--XyZ\r\nContent-Disposition: form-data; name=\"caption\"\r\n\r\nsummer 2024\r\n--XyZ\r\nContent-Disposition: form-data; name=\"avatar\"; filename=\"../../etc/passwd\"\r\nContent-Type: image/jpeg\r\n\r\n\xff\xd8 a=1&b=2\r\n--XyZ\r\nContent-Disposition: form-data; name=\"q\"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n1=3D1 or 'x'=3D'x'\r\n--XyZ--\r\n", ct: "multipart/form-data; boundary=XyZ",
			want: []got{{InForm, "body.caption", "summer 2024", false}, {InForm, "body.avatar", "../../etc/passwd", false},
				{InForm, "body.q", "1=1 or 'x'='x'", false}}},
		{name: "multipart without boundary parameter", body: "--XyZ\r\nContent-Disposition: form-data; name=\"caption\"\r\n\r\nsummer 2024\r\n--XyZ\r\nContent-Disposition: form-data; name=\"avatar\"; filename=\"../../etc/passwd\"\r\nContent-Type: image/jpeg\r\n\r\n\xff\xd8 a=1&b=2\r\n--XyZ\r\nContent-Disposition: form-data; name=\"q\"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n1=3D1 or 'x'=3D'x'\r\n--XyZ--\r\n", ct: "multipart/form-data",
			want: []got{{InForm, "body.caption", "summer 2024", false}, {InForm, "body.avatar", "../../etc/passwd", false},
				{InForm, "body.q", "1=1 or 'x'='x'", false}}},
		{name: "multipart as text/plain", body: "--XyZ\r\nContent-Disposition: form-data; name=\"caption\"\r\n\r\nsummer 2024\r\n--XyZ\r\nContent-Disposition: form-data; name=\"avatar\"; filename=\"../../etc/passwd\"\r\nContent-Type: image/jpeg\r\n\r\n\xff\xd8 a=1&b=2\r\n--XyZ\r\nContent-Disposition: form-data; name=\"q\"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n1=3D1 or 'x'=3D'x'\r\n--XyZ--\r\n", ct: "text/plain",
			want: []got{{InForm, "body.caption", "summer 2024", false}, {InForm, "body.avatar", "../../etc/passwd", false},
				{InForm, "body.q", "1=1 or 'x'='x'", false}}, bad: true},
		{name: "multipart broken off", body: "--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nvalue", ct: "multipart/form-data; boundary=XyZ",
			want: []got{{InForm, "body.a", "value", false}}, bad: true},
		{name: "form labelled multipart", body: "a=1", ct: "multipart/form-data; boundary=XyZ", want: []got{{InForm, "body.a", "1", false}}, bad: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, p := parseAll(lim(), "", tt.body, tt.ct)
			if len(out) != len(tt.want) {
				t.Fatalf("got %+v, want %+v", out, tt.want)
			}
			for i := range out {
				if out[i] != tt.want[i] {
					t.Errorf("param %d = %+v, want %+v", i, out[i], tt.want[i])
				}
			}
			if p.overflow != tt.overflow || p.bad != tt.bad {
				t.Errorf("overflow %v bad %v, want %v %v", p.overflow, p.bad, tt.overflow, tt.bad)
			}
		})
	}
}

func TestParseCaps(t *testing.T) {
	l := lim()
	l.MaxParams = 3
	out, p := parseAll(l, "a=1&b=2&c=3&d=4", "", "")
	if len(out) != 3 || !p.overflow {
		t.Errorf("max params: got %d params, overflow %v; want 3 and overflow", len(out), p.overflow)
	}
	out, p = parseAll(l, "a=1&b=2&c=3", "", "")
	if len(out) != 3 || p.overflow {
		t.Errorf("exactly max params: got %d params, overflow %v; want 3, no overflow", len(out), p.overflow)
	}
	l = lim()
	l.MaxQueryBytes = 8
	if out, p = parseAll(l, "a=1&b=2&c=3", "", ""); len(out) != 2 || !p.overflow {
		t.Errorf("max query bytes: got %+v overflow %v", out, p.overflow)
	}
}

func TestValueKinds(t *testing.T) {
	tests := []struct {
		value string
		kind  Kind
	}{
		{"", KindEmpty},
		{"42", KindNumber},
		{"-3.5", KindNumber},
		{"5f2a9c0d", KindHex},
		{"550e8400-e29b-41d4-a716-446655440000", KindUUID},
		{"AIzaSyCx80ru6RXeTi3Gvq", KindBase64},
		{"dGhpcyBpcyBhIHRlc3Q=", KindBase64},
		{"red-shoes_2", KindWord},
		{"1.4.6", KindWord},
		{"https://example.com/a?b=c", KindURL},
		{"red shoes, size 9", KindText},
		{`{"a":1}`, KindJSON},
		{"1' OR '1'='1", KindOther},
		{"<script>alert(1)</script>", KindOther},
	}
	for _, tt := range tests {
		t.Run(tt.value, func(t *testing.T) {
			v := analyse([]byte(tt.value), len(tt.value), 0)
			if v.Kind != tt.kind {
				t.Errorf("kind = %v, want %v", v.Kind, tt.kind)
			}
		})
	}
}

func TestDecodeRounds(t *testing.T) {
	s, _ := New(Config{})
	tests := []struct {
		raw, want string
		form      bool
	}{
		{"a%20b", "a b", true},
		{"a+b", "a b", true},
		{"%2527", "'", true},          // encoded twice
		{"%252527", "'", true},        // three times
		{"%25252527", "%27", true},    // four: the rounds are bounded
		{"100%", "100%", true},        // a lone '%'
		{"%zz%4", "%zz%4", true},      // bad escapes stay
		{"%2B", "+", true},            // an encoded '+' is a plus
		{`a\u0027b`, "a'b", false},    // JSON escape
		{`\u00252527`, "'", false},    // JSON escape, then percent rounds
		{`\ud800x`, "\uFFFDx", false}, // a lone surrogate
	}
	for _, tt := range tests {
		t.Run(tt.raw, func(t *testing.T) {
			sc := &scratch{}
			p := param{where: InQuery, raw: tt.raw}
			if !tt.form {
				p = param{where: InJSON, raw: tt.raw, json: true}
			}
			v := s.value(sc, &p)
			if string(sc.val) != tt.want || v.Len != len(tt.want) {
				t.Errorf("decoded %q (len %d), want %q", sc.val, v.Len, tt.want)
			}
		})
	}
}

func TestSplit(t *testing.T) {
	for in, want := range map[string]string{
		"a=1&b=2":                 "a=1&b=2",
		"/v1/x?a=1":               "a=1",
		"/v1/x?a=1#frag":          "a=1",
		"/a=b/c":                  "",
		"/v1/x":                   "",
		"HTTPS://h.example/p?q=1": "q=1",
		"http://h.example/p":      "",
		"1660088970000":           "1660088970000",
		"/search?q=a/b?c":         "q=a/b?c",
		"":                        "",
	} {
		if got := split(in); got != want {
			t.Errorf("split(%q) = %q, want %q", in, got, want)
		}
	}
}
