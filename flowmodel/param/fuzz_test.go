package param

import (
	"net/url"
	"strings"
	"testing"
)

// FuzzParse feeds arbitrary queries and bodies (as form and as JSON) to the parsers and the
// value analysis. Invariants: no panic; at most MaxRequestParams parameters; every name
// bounded (MaxDepth segments of at most MaxKeyBytes, plus the "body" prefix); a decoded
// value never longer than its raw form; Judge and Learn agree on what they read and keep
// the Set within its caps.
func FuzzParse(f *testing.F) {
	for _, seed := range []struct{ q, body string }{
		{"a=1&b=x%20y", `{"a":{"b":[1,"x",true,null]},"c":"\u0027"}`},
		{"debug&=x&%zz=%2527", `[{"k":"v"},[],{}]`},
		{strings.Repeat("k=v&", 100), strings.Repeat("[", 40)},
		{"fields%5Bproducts%5D=*%2Ctitle", `"top"`},
		{"", `{"a":"\ud800","b":"\\","c":1e9,}`},
		{"a=%c0%ae%c0%af", "user=jane&x=%3Cscript%3E"},
		{"q=%EF%BC%9C", "--X\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--X\r\nContent-Disposition: form-data; name=\"f\"; filename=\"../x\"\r\n\r\n\xff\r\n--X--\r\n"},
	} {
		f.Add(seed.q, seed.body)
	}
	cfg := Config{MaxScopes: 4, MaxParams: 8, MaxValues: 4, Limits: Limits{MaxParams: 16, MaxDepth: 4, MaxKeyBytes: 16, MaxQueryBytes: 512, MaxBodyBytes: 512}}
	f.Fuzz(func(t *testing.T, query, body string) {
		s, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		lim := s.cfg.Limits
		maxName := len("body") + lim.MaxDepth*(lim.MaxKeyBytes+3) + 8
		for _, ct := range []string{"application/x-www-form-urlencoded", "application/json", "", "multipart/form-data; boundary=X", "multipart/form-data", "text/plain"} {
			p := &parser{}
			p.reset(lim, split(query), body, bodyTypeOf(ct))
			n := 0
			var x param
			sc := &scratch{}
			for p.next(&x) {
				n++
				if n > lim.MaxParams {
					t.Fatalf("%d params, cap %d", n, lim.MaxParams)
				}
				if len(x.name()) > maxName {
					t.Fatalf("name of %d bytes: %q", len(x.name()), x.name())
				}
				v := s.value(sc, &x)
				if v.Len > len(x.raw) || v.Len != len(sc.val) && !v.Absent {
					t.Fatalf("decoded %d bytes from %d raw", v.Len, len(x.raw))
				}
				if int(v.Kind) >= NumKinds || v.Chars>>NumChars != 0 {
					t.Fatalf("value %+v out of range", v)
				}
			}
			r := &Request{Query: query, Body: body, ContentType: ct}
			for k := range uint64(6) {
				s.Learn(k, r)
			}
			res := s.Judge(1, r)
			if res.Params != n || !(res.Score >= 0 && res.Score < 1) {
				t.Fatalf("judge read %d params (parser %d), score %v", res.Params, n, res.Score)
			}
		}
		if len(s.scopes) > cfg.MaxScopes {
			t.Fatalf("%d scopes", len(s.scopes))
		}
		for _, sp := range s.scopes {
			if len(sp.params) > cfg.MaxParams {
				t.Fatalf("%d params in a scope", len(sp.params))
			}
		}
		// A query that net/url decodes gives the same values as the first decoding round.
		if vals, err := url.ParseQuery(query); err == nil && split(query) == query && !strings.Contains(query, ";") && len(query) <= lim.MaxQueryBytes {
			p := &parser{}
			p.reset(lim, query, "", bodyType{})
			var x param
			for i := 0; i < lim.MaxParams && p.next(&x); i++ {
				dec, _ := decodeInto(nil, x.raw, true)
				if !hasValue(vals, string(dec)) {
					t.Fatalf("value %q (raw %q) not among net/url's %v", dec, x.raw, vals)
				}
			}
		}
	})
}

func hasValue(vals url.Values, v string) bool {
	for _, vs := range vals {
		for _, x := range vs {
			if x == v {
				return true
			}
		}
	}
	return false
}
