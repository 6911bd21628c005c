package policy

import (
	"regexp"
	"testing"
)

func TestIstioPath(t *testing.T) {
	tests := []struct {
		name, in, want string
		widened, ok    bool
	}{
		{"literal", "/v1/orders", "/v1/orders", false, true},
		{"root", "/", "/", false, true},
		{"one placeholder", "/v1/items/{id}", "/v1/items/{*}", false, true},
		{"two placeholders", "/users/{id}/orders/{uuid}", "/users/{*}/orders/{*}", false, true},
		{"placeholder with text", "/files/invoice-{id}.pdf", "/files/{*}", true, true},
		{"two placeholders in a segment", "/d/{date}_{id}", "/d/{*}", true, true},
		{"long", "/p/{long}/x", "/p/{*}/x", false, true},
		{"braces as text", "/x/a{b}", "/x/{*}", true, true},
		{"star as text", "/x/a*", "/x/{*}", true, true},
		{"trailing slash", "/v1/items/{id}/", "/v1/items/{*}/", false, true},
		{"asterisk form", "*", "", false, false},
		{"empty", "", "", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, widened, ok := istioPath(tt.in)
			if got != tt.want || widened != tt.widened || ok != tt.ok {
				t.Fatalf("istioPath(%q) = %q, %v, %v; want %q, %v, %v", tt.in, got, widened, ok, tt.want, tt.widened, tt.ok)
			}
			if ok {
				if err := checkIstioPath(got); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

func TestCiliumPath(t *testing.T) {
	tests := []struct {
		name     string
		template string
		match    []string
		noMatch  []string
	}{
		{"literal", "/v1/orders",
			[]string{"/v1/orders", "/v1/orders?x=1", "/v1/orders?"},
			[]string{"/v1/orders/", "/v1/orders/1", "/v1/ordersX", "/x/v1/orders"}},
		{"dots are literal", "/static/app.min.js",
			[]string{"/static/app.min.js"},
			[]string{"/static/appXminXjs"}},
		{"id", "/v1/items/{id}",
			[]string{"/v1/items/42", "/v1/items/0017?expand=a"},
			[]string{"/v1/items/", "/v1/items/abc", "/v1/items/42/x"}},
		{"uuid", "/files/{uuid}",
			[]string{"/files/550e8400-e29b-41d4-a716-446655440000", "/files/550E8400-E29B-41D4-A716-446655440000"},
			[]string{"/files/550e8400", "/files/550e8400-e29b-41d4-a716-446655440000/x"}},
		{"hex", "/objects/{hex}",
			[]string{"/objects/2fd4e1c67a2d28fced849ee1bb76e7391b93eb12"},
			[]string{"/objects/xyz"}},
		{"b64 and jwt", "/verify/{b64}",
			[]string{"/verify/eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjg", "/verify/MFEwTzBNMEswSTAJBgU%2BDgMCGgUA%3D%3D"},
			[]string{"/verify/a/b"}},
		{"email", "/users/{email}/prefs",
			[]string{"/users/jane.doe+x@example.com/prefs", "/users/jane.doe%40example.co.uk/prefs"},
			[]string{"/users/a/b/prefs"}},
		{"date", "/logs/{date}",
			[]string{"/logs/2026-01-02", "/logs/2026-01-02T15%3A04%3A05+01:00"},
			[]string{"/logs/2026/01/02"}},
		{"embedded", "/invoices/invoice-{id}.pdf",
			[]string{"/invoices/invoice-12345.pdf"},
			[]string{"/invoices/invoice-x.pdf", "/invoices/invoice-12345xpdf"}},
		{"regex syntax in text", "/a+b/(c)/[d]/$e^/x|y",
			[]string{"/a+b/(c)/[d]/$e^/x|y"},
			[]string{"/aab/c/d/e/x", "/x"}},
		{"braces as text", "/x/a{b}",
			[]string{"/x/a{b}"},
			[]string{"/x/ab"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			expr, ok := ciliumPath(tt.template)
			if !ok {
				t.Fatalf("ciliumPath(%q) not ok", tt.template)
			}
			re, err := regexp.Compile(expr)
			if err != nil {
				t.Fatalf("ciliumPath(%q) = %q: %v", tt.template, expr, err)
			}
			for _, p := range tt.match {
				if !re.MatchString(p) {
					t.Errorf("%q does not match %q", expr, p)
				}
			}
			for _, p := range tt.noMatch {
				if re.MatchString(p) {
					t.Errorf("%q matches %q", expr, p)
				}
			}
		})
	}
	if _, ok := ciliumPath("*"); ok {
		t.Error(`ciliumPath("*") ok`)
	}
}

func TestCiliumMethod(t *testing.T) {
	for in, want := range map[string]string{"GET": "GET", "M-SEARCH": "M-SEARCH", "X.Y": `^X\.Y$`, "A+": `^A\+$`} {
		if got := ciliumMethod(in); got != want {
			t.Errorf("ciliumMethod(%q) = %q, want %q", in, got, want)
		}
		re := regexp.MustCompile("^(?:" + ciliumMethod(in) + ")$")
		if !re.MatchString(in) {
			t.Errorf("ciliumMethod(%q) does not match itself", in)
		}
	}
}
