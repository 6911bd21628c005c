package shape

import (
	"strings"
	"testing"
)

func TestTemplatePath(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		// Ordinary words, versions and names with digits stay.
		{"plain", "/v1/charges", "/v1/charges"},
		{"api users", "/api/users", "/api/users"},
		{"versions", "/apis/apps/v1beta2/namespaces", "/apis/apps/v1beta2/namespaces"},
		{"words with digits", "/oauth2/token/x86_64/s3/ipv6", "/oauth2/token/x86_64/s3/ipv6"},
		{"camel case", "/getUserProfileSettings/XMLHttpRequest/iPhone15Pro", "/getUserProfileSettings/XMLHttpRequest/iPhone15Pro"},
		{"slug with digit", "/blog/release-notes-v2/my-post-about-http2", "/blog/release-notes-v2/my-post-about-http2"},
		{"hex letters only", "/deadbeef/facade", "/deadbeef/facade"},
		{"short hex", "/v3/abc123", "/v3/abc123"},
		{"file names", "/static/app.min.js/favicon.ico", "/static/app.min.js/favicon.ico"},
		{"trailing slash and empty segments", "/a//b/", "/a//b/"},
		{"root", "/", "/"},
		{"empty", "", "/"},
		{"asterisk", "*", "*"},

		// Variable parts collapse.
		{"numeric id", "/v1/charges/42", "/v1/charges/{id}"},
		{"numeric ids", "/users/0017/orders/123456789", "/users/{id}/orders/{id}"},
		{"uuid", "/files/550e8400-e29b-41d4-a716-446655440000", "/files/{uuid}"},
		{"upper uuid", "/files/550E8400-E29B-41D4-A716-446655440000/x", "/files/{uuid}/x"},
		{"sha1", "/objects/2fd4e1c67a2d28fced849ee1bb76e7391b93eb12", "/objects/{hex}"},
		{"upper hex", "/en/D69B561148F01C77C54578C10926DF5B856976AD.crt", "/en/{hex}.crt"},
		{"mongo id", "/items/507f1f77bcf86cd799439011", "/items/{hex}"},
		{"base64", "/t/dGhpcyBpcyBhIHNlY3JldCB0b2tlbjEy", "/t/{b64}"},
		{"base64url", "/t/Zm9vYmFy_YmF6-cXV4MTIzNDU2", "/t/{b64}"},
		{"base64 padded", "/ocsp/MFEwTzBNMEswSTAJBgUrDgMCGgUABBQ50otx=", "/ocsp/{b64}"},
		{"base64 encoded padding", "/ocsp/MFEwTzBNMEswSTAJBgU%2BDgMCGgUA%3D%3D", "/ocsp/{b64}"},
		{"short random id", "/watch/dQw4w9WgXcQ", "/watch/{b64}"},
		{"prefixed random id", "/v1/customers/cus_NffrFeUfNV2Hib", "/v1/customers/{b64}"},
		{"jwt", "/verify/eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U", "/verify/{b64}"},
		{"email", "/users/jane.doe+x@example.com/prefs", "/users/{email}/prefs"},
		{"encoded email", "/users/jane.doe%40example.co.uk", "/users/{email}"},
		{"date", "/reports/2026-01-02", "/reports/{date}"},
		{"date time", "/logs/2026-01-02T15:04:05.123Z", "/logs/{date}"},
		{"date time offset", "/logs/2026-01-02T15%3A04%3A05+01:00", "/logs/{date}"},
		{"not a date", "/logs/2026-13-02", "/logs/{id}-13-02"},
		{"id in file name", "/invoices/invoice-12345.pdf", "/invoices/invoice-{id}.pdf"},
		{"ids in tokens", "/mod_023_pegasus_28866/em023_64_n1.dll", "/mod_{id}_pegasus_{id}/em023_64_n1.dll"},
		{"embedded uuid", "/jobs/job-550e8400-e29b-41d4-a716-446655440000.json", "/jobs/job-{uuid}.json"},
		{"embedded date", "/backup/db_2026-01-02.tar.gz", "/backup/db_{date}.tar.gz"},
		{"version numbers", "/1.1/statuses/v1.2.3", "/1.1/statuses/v1.2.3"},
		{"short numbers in words", "/charset/utf-8/page-2/x86_64", "/charset/utf-8/page-2/x86_64"},
		{"long segment", "/p/" + strings.Repeat("word-", 20), "/p/{long}"},
		{"long plain segment", "/p/" + strings.Repeat("a", 65), "/p/{long}"},
		{"segment of max length", "/p/" + strings.Repeat("a", 64), "/p/" + strings.Repeat("a", 64)},

		// What is not the path goes.
		{"query dropped", "/search?q=shoes&page=2", "/search"},
		{"fragment dropped", "/doc#section-2", "/doc"},
		{"absolute form", "http://api.example.com/v1/items/7?x=1", "/v1/items/{id}"},
		{"absolute form https no path", "HTTPS://api.example.com", "/"},

		// Bytes that would break the text form are encoded; templates stay templates.
		{"space", "/a b/c", "/a%20b/c"},
		{"non-ascii", "/café/7", "/caf%C3%A9/{id}"},
		{"digits around non-ascii", "/123é456", "/{id}%C3%A9{id}"},
		{"placeholders kept", "/v1/charges/{id}/{uuid}", "/v1/charges/{id}/{uuid}"},
		{"braces kept", "/x/{id}x/a{b}", "/x/{id}x/a{b}"},
		{"percent kept", "/a%2Fb/%zz", "/a%2Fb/%zz"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := TemplatePath(tt.in)
			if got != tt.want {
				t.Errorf("TemplatePath(%q) = %q, want %q", tt.in, got, tt.want)
			}
			if again := TemplatePath(got); again != got {
				t.Errorf("TemplatePath(%q) = %q, not idempotent", got, again)
			}
		})
	}
}

func TestShape(t *testing.T) {
	sh := New(Config{})
	r := &Request{
		Method: "POST",
		Path:   "/v1/charges/12345?expand=customer&idempotency=1&expand=x",
		HeaderKeys: []string{"Content-Type", "authorization", "x-request-id", "traceparent",
			"x-b3-traceid", "X-Envoy-Attempt-Count", ":path", "accept", "content-type", ""},
		ContentType: "Application/JSON; charset=utf-8",
		BodyBytes:   1500,
	}
	want := "POST /v1/charges/{id} q:[expand,idempotency] h:[accept,authorization,content-type] ct:application/json b:1k"
	got := sh.Shape(r)
	if got.String() != want {
		t.Fatalf("Shape = %q\nwant    %q", got.String(), want)
	}
	k := sh.Key(r)
	if kk := sh.KeyOf(got); kk != k {
		t.Errorf("KeyOf(Shape(r)) = %s, Key(r) = %s", kk, k)
	}
	p, err := Parse(want)
	if err != nil {
		t.Fatal(err)
	}
	if kp := sh.KeyOf(p); kp != k {
		t.Errorf("KeyOf(Parse(text)) = %s, Key(r) = %s", kp, k)
	}
	if p.String() != want {
		t.Errorf("Parse(text).String() = %q", p.String())
	}
	withVolatile, err := Parse(strings.Replace(want, "h:[", "h:[x-request-id,", 1))
	if err != nil {
		t.Fatal(err)
	}
	if kv := sh.KeyOf(withVolatile); kv != k {
		t.Errorf("KeyOf counts an ignored header: %s, want %s", kv, k)
	}

	// Variants: same shape or not.
	variant := func(f func(r *Request)) Key {
		c := *r
		c.HeaderKeys = append([]string(nil), r.HeaderKeys...)
		f(&c)
		return sh.Key(&c)
	}
	same := map[string]func(*Request){
		"other id":     func(r *Request) { r.Path = "/v1/charges/99?expand=a&idempotency=2" },
		"query order":  func(r *Request) { r.Path = "/v1/charges/1?idempotency=1&expand=y" },
		"header order": func(r *Request) { r.HeaderKeys = []string{"accept", "content-type", "authorization"} },
		"volatile headers": func(r *Request) {
			r.HeaderKeys = append(r.HeaderKeys, "x-datadog-trace-id", "baggage", "if-none-match")
		},
		"content type params":    func(r *Request) { r.ContentType = "application/json" },
		"size in the same class": func(r *Request) { r.BodyBytes = 4095 },
	}
	for name, f := range same {
		if got := variant(f); got != k {
			t.Errorf("%s: key %s, want the same key %s", name, got, k)
		}
	}
	differ := map[string]func(*Request){
		"method":        func(r *Request) { r.Method = "PUT" },
		"path":          func(r *Request) { r.Path = "/v1/refunds/1?expand=a&idempotency=1" },
		"query key":     func(r *Request) { r.Path = "/v1/charges/1?expand=a" },
		"header":        func(r *Request) { r.HeaderKeys = append(r.HeaderKeys, "cookie") },
		"content type":  func(r *Request) { r.ContentType = "text/plain" },
		"size class":    func(r *Request) { r.BodyBytes = 4096 },
		"unknown size":  func(r *Request) { r.BodyBytes = -1 },
		"query in path": func(r *Request) { r.Path = "/v1/charges/1/expand/idempotency" },
	}
	for name, f := range differ {
		if got := variant(f); got == k {
			t.Errorf("%s: same key %s, want a different one", name, got)
		}
	}
}

func TestShapeSeedAndIgnore(t *testing.T) {
	r := &Request{Method: "GET", Path: "/x", HeaderKeys: []string{"x-request-id", "accept"}}
	a, b := New(Config{}), New(Config{Seed: 7})
	if a.Key(r) == b.Key(r) {
		t.Error("seed does not change the key")
	}
	if New(Config{}).Key(r) != a.Key(r) {
		t.Error("keys differ between two shapers of the same config")
	}
	none := New(Config{IgnoreHeaders: []string{}})
	if got := none.Shape(r).HeaderKeys; len(got) != 2 {
		t.Errorf("empty ignore list: header keys %q, want both", got)
	}
	custom := New(Config{IgnoreHeaders: []string{"Accept", "x-*"}})
	if got := custom.Shape(r).HeaderKeys; len(got) != 0 {
		t.Errorf("custom ignore list: header keys %q, want none", got)
	}
}

func TestParse(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"canonical", "GET /a/{id} q:[] h:[] ct:- b:-", "GET /a/{id} q:[] h:[] ct:- b:-"},
		{"hand written", "GET /users/42 q:[b,a,a] h:[Accept] ct:Text/HTML b:4k", "GET /users/{id} q:[a,b] h:[accept] ct:text/html b:4k"},
		{"no method", "- / q:[] h:[] ct:- b:0", "- / q:[] h:[] ct:- b:0"},
		{"dash method", "%2D / q:[] h:[] ct:%2d b:0", "%2D / q:[] h:[] ct:%2d b:0"},
		{"large size", "PUT /u q:[] h:[] ct:- b:1g", "PUT /u q:[] h:[] ct:- b:1g"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Parse(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if s.String() != tt.want {
				t.Errorf("Parse(%q) = %q, want %q", tt.in, s.String(), tt.want)
			}
		})
	}
	for _, bad := range []string{
		"", "GET /", "GET / q:[] h:[] ct:- b:- extra", "GET / q:[ h:[] ct:- b:-",
		"GET / x:[] h:[] ct:- b:-", "GET / q:[] h:[] type:- b:-", "GET / q:[] h:[] ct:- b:3k",
		"GET / q:[] h:[] ct:- b:", "GET / q:[] h:[] ct:- b:0k", "GET / q:[] h:[] ct:- size:1",
	} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) succeeded", bad)
		}
	}
}

func TestSizeClass(t *testing.T) {
	tests := []struct {
		n    int64
		want string
	}{
		{-1, "-"}, {0, "0"}, {1, "1"}, {3, "1"}, {4, "4"}, {15, "4"}, {16, "16"}, {255, "64"},
		{256, "256"}, {1023, "256"}, {1024, "1k"}, {4095, "1k"}, {4096, "4k"}, {1 << 20, "1m"},
		{1<<30 + 5, "1g"}, {1 << 62, "4e"}, {1<<63 - 1, "4e"},
	}
	for _, tt := range tests {
		c := SizeOf(tt.n)
		if c.String() != tt.want {
			t.Errorf("SizeOf(%d) = %s, want %s", tt.n, c, tt.want)
		}
		p, err := parseSizeClass(c.String())
		if err != nil || p != c {
			t.Errorf("parseSizeClass(%q) = %d, %v; want %d", c.String(), p, err, c)
		}
		if tt.n >= 0 && (c.Min() > tt.n || tt.n > 0 && tt.n/4 >= c.Min()) {
			t.Errorf("SizeOf(%d).Min() = %d", tt.n, c.Min())
		}
	}
}

func TestKey(t *testing.T) {
	k, err := ParseKey(Key(0x0123456789abcdef).String())
	if err != nil || k != 0x0123456789abcdef {
		t.Errorf("ParseKey(String) = %s, %v", k, err)
	}
	for _, bad := range []string{"", "123", "0123456789abcdeg", "0123456789abcdef0"} {
		if _, err := ParseKey(bad); err == nil {
			t.Errorf("ParseKey(%q) succeeded", bad)
		}
	}
}

// TestKeyCollisions checks that distinct templates get distinct keys (a sanity check of the
// hash and of its field framing, not a proof).
func TestKeyCollisions(t *testing.T) {
	sh := New(Config{})
	seen := make(map[Key]string)
	add := func(r *Request) {
		text := sh.Shape(r).String()
		k := sh.Key(r)
		if prev, ok := seen[k]; ok && prev != text {
			t.Fatalf("key %s for both %q and %q", k, prev, text)
		}
		seen[k] = text
	}
	words := []string{"a", "b", "ab", "users", "v1", "charges", "x", "items", "aa", "ba"}
	for _, m := range []string{"GET", "POST", "GE", "TPOST"} {
		for _, w1 := range words {
			for _, w2 := range words {
				add(&Request{Method: m, Path: "/" + w1 + "/" + w2, BodyBytes: -1})
				add(&Request{Method: m, Path: "/" + w1 + w2, BodyBytes: -1})
				add(&Request{Method: m, Path: "/" + w1 + "?" + w2, BodyBytes: -1})
				add(&Request{Method: m, Path: "/" + w1, HeaderKeys: []string{w2}, BodyBytes: -1})
				add(&Request{Method: m, Path: "/" + w1, ContentType: w2, BodyBytes: 0})
			}
		}
	}
	if len(seen) < 1000 {
		t.Fatalf("only %d shapes generated", len(seen))
	}
}

func TestKeyDoesNotAllocate(t *testing.T) {
	sh := New(Config{})
	r := benchRequest()
	if n := testing.AllocsPerRun(100, func() { sh.Key(r) }); n != 0 {
		t.Errorf("Key allocates %g times per call", n)
	}
}

func benchRequest() *Request {
	return &Request{
		Method: "POST",
		Path:   "/v1/customers/cus_NffrFeUfNV2Hib/charges/123456?expand=customer&limit=10",
		HeaderKeys: []string{"accept", "authorization", "content-type", "content-length", "user-agent",
			"x-request-id", "traceparent", "x-envoy-attempt-count", "x-forwarded-proto", "idempotency-key"},
		ContentType: "application/json; charset=utf-8",
		BodyBytes:   734,
	}
}

func BenchmarkKey(b *testing.B) {
	sh := New(Config{})
	r := benchRequest()
	b.ReportAllocs()
	for b.Loop() {
		sh.Key(r)
	}
}

// BenchmarkKeyPathOnly is the baseline for BenchmarkKey: a bare GET of a short path.
func BenchmarkKeyPathOnly(b *testing.B) {
	sh := New(Config{})
	r := &Request{Method: "GET", Path: "/v1/charges/42", BodyBytes: -1}
	b.ReportAllocs()
	for b.Loop() {
		sh.Key(r)
	}
}

func BenchmarkShape(b *testing.B) {
	sh := New(Config{})
	r := benchRequest()
	b.ReportAllocs()
	for b.Loop() {
		_ = sh.Shape(r).String()
	}
}

func FuzzTemplate(f *testing.F) {
	for _, s := range []string{
		"/v1/charges/42", "/files/550e8400-e29b-41d4-a716-446655440000", "/users/a@b.co",
		"/logs/2026-01-02T15:04:05Z", "/a b/é", "/x?a=1&b&&=2#f", "/t/dGhpcyBpcyBhIHNlY3JldA==",
		"/" + strings.Repeat("1-", 40), "http://h/p/7", "/%41%zz{id}", "/2026-01-02T10:00:00Zabc",
		"/abcdefab-e29b-41d4-a716-446655440000x", "/x-2026-01-02-5", "/john@exa mple.com",
		"/a%40b.cc", "/x?filter[a]=1&b,c=2&%5B=3", "/eyJa.b.c", "/12é34/ab%2",
	} {
		f.Add(s, "Content-Type", "application/json", int64(10))
	}
	sh := New(Config{})
	f.Fuzz(func(t *testing.T, path, header, ct string, size int64) {
		tpl := TemplatePath(path)
		if again := TemplatePath(tpl); again != tpl {
			t.Fatalf("not idempotent: %q -> %q -> %q", path, tpl, again)
		}
		if strings.ContainsAny(tpl, " \t\r\n") {
			t.Fatalf("template %q of %q contains a blank", tpl, path)
		}
		r := &Request{Method: "GET", Path: path, HeaderKeys: []string{header, "accept"}, ContentType: ct, BodyBytes: size}
		s := sh.Shape(r)
		if s.Path != tpl {
			t.Fatalf("Shape path %q, TemplatePath %q", s.Path, tpl)
		}
		text := s.String()
		p, err := Parse(text)
		if err != nil {
			t.Fatalf("Parse(%q): %v", text, err)
		}
		if p.String() != text {
			t.Fatalf("Parse(%q).String() = %q", text, p.String())
		}
		if k, kp := sh.Key(r), sh.KeyOf(p); k != kp {
			t.Fatalf("Key %s != KeyOf(Parse(%q)) %s", k, text, kp)
		}
	})
}
