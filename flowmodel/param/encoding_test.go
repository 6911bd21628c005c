package param

import (
	"fmt"
	"math/rand/v2"
	"mime/multipart"
	"net/url"
	"strings"
	"testing"
)

// decoded analyses a raw (percent-encoded) value as a query value is analysed.
func decoded(raw string) Value {
	s, _ := New(Config{})
	sc := &scratch{}
	return s.value(sc, &param{where: InQuery, raw: raw})
}

func TestLegacyCharsetBytes(t *testing.T) {
	tests := []struct {
		name, raw string
		want      []Char
		not       []Char
	}{
		{"utf-8 letter", "Jos%C3%A9", []Char{CharUnicode}, []Char{CharBadUTF8}},
		{"latin-1 letter", "Jos%E9", []Char{CharUnicode}, []Char{CharBadUTF8}},
		{"latin-1 name", "M%FCller+%D8rsted", []Char{CharUnicode, CharSpace}, []Char{CharBadUTF8}},
		{"latin-1 ordinal after digit", "3%BA+B", []Char{CharUnicode}, []Char{CharBadUTF8}},
		{"windows-1252 euro and quotes", "%80+%93hi%94", []Char{CharUnicode}, []Char{CharBadUTF8}},
		{"undefined 1252 byte (nop sled)", "%90%90%90", []Char{CharBadUTF8}, []Char{CharUnicode}},
		{"overlong slash", "..%c0%af..%c0%afetc", []Char{CharBadUTF8}, nil},
		{"surrogate half", "%ED%A0%80", []Char{CharBadUTF8}, nil},
		{"full-width lookalikes", "%EF%BC%9Cscript%EF%BC%9E", []Char{charOf['<'], charOf['>'], CharLower}, []Char{CharUnicode}},
		{"ideographic space", "a%E3%80%80b", []Char{CharSpace}, []Char{CharUnicode}},
		{"other cjk stays", "%E6%9D%B1%E4%BA%AC", []Char{CharUnicode}, nil},
		{"dot-dot", "a/../b", []Char{CharDotDot}, nil},
		{"dot-dot backslash", "..%5Cwin.ini", []Char{CharDotDot}, nil},
		{"no dot-dot in an ellipsis", "wait...+what", nil, []Char{CharDotDot}},
		{"no dot-dot in a version", "v1..2", nil, []Char{CharDotDot}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := decoded(tt.raw)
			for _, c := range tt.want {
				if !v.Chars.Has(c) {
					t.Errorf("%q: classes %v lack %v", tt.raw, v.Chars, c)
				}
			}
			for _, c := range tt.not {
				if v.Chars.Has(c) {
					t.Errorf("%q: classes %v hold %v", tt.raw, v.Chars, c)
				}
			}
		})
	}
	if v := decoded("%EF%BC%9C"); v.Len != 1 || v.First != charOf['<'] {
		t.Errorf("full-width '<' folds to one byte '<': len %d first %v", v.Len, v.First)
	}
}

// latin1 percent-encodes s in ISO-8859-1, as a form in a Latin-1 page sends it.
func latin1(s string) string {
	var b []byte
	for _, r := range s {
		b = append(b, byte(r))
	}
	return url.QueryEscape(string(b))
}

var people = []string{"José", "María", "Jürgen", "Françoise", "Søren", "Zoë", "Ana", "Peter", "Núñez", "Müller", "Inés", "Ægir"}

// TestLatin1FormsFit: a form endpoint learned from pages in UTF-8 and in Latin-1 takes both
// encodings of people it has not seen as ordinary, and a name in Latin-1 where only UTF-8 was
// learned too: a Latin-1 letter is a letter, not malformed bytes.
func TestLatin1FormsFit(t *testing.T) {
	for _, mixed := range []bool{true, false} {
		t.Run(fmt.Sprintf("latin-1 learned %v", mixed), func(t *testing.T) {
			s, _ := New(Config{})
			r := rand.New(rand.NewPCG(1, 2))
			for i := range 2000 {
				n := people[r.IntN(len(people)-2)] + " " + people[r.IntN(len(people)-2)] // the last two are never learned
				enc := url.QueryEscape(n)
				if mixed && i%3 == 0 {
					enc = latin1(n)
				}
				s.Learn(1, &Request{ContentType: "application/x-www-form-urlencoded", Body: "name=" + enc + "&qty=" + fmt.Sprint(1+r.IntN(5))})
			}
			for _, n := range []string{"Inés Núñez", "Ægir Søren", "Ángel Ægir"} {
				for _, enc := range []string{url.QueryEscape(n), latin1(n)} {
					res := s.Judge(1, &Request{ContentType: "application/x-www-form-urlencoded", Body: "name=" + enc + "&qty=2"})
					if res.Score >= 0.5 {
						t.Errorf("name=%s scores %.3f (%s, %s): an ordinary name alarms", enc, res.Score, res.Param, res.Broke)
					}
				}
			}
		})
	}
}

// learnedSet is a Set that learned one scope: n requests of gen.
func learnedSet(n int, gen func(r *rand.Rand) Request) *Set {
	s, _ := New(Config{})
	r := rand.New(rand.NewPCG(3, 4))
	for range n {
		q := gen(r)
		s.Learn(1, &q)
	}
	return s
}

// TestAdversaryFullWidthLookalikes covers the careful attacker's lookalike trick: full-width
// '＜', '＞', '＇' (U+FF1C, U+FF1E, U+FF07), which a lenient backend may fold to ASCII, in a
// parameter that has learned non-ASCII letters (so "unicode" alone is no surprise).
func TestAdversaryFullWidthLookalikes(t *testing.T) {
	s := learnedSet(2000, func(r *rand.Rand) Request {
		return Request{Query: "q=" + url.QueryEscape(people[r.IntN(len(people))]+" "+people[r.IntN(len(people))])}
	})
	for _, attack := range []string{"José ＜script＞alert（1）＜／script＞", "Ana＇ OR ＇1＇＝＇1", "José ｜ id"} {
		res := s.Judge(1, &Request{Query: "q=" + url.QueryEscape(attack)})
		if res.Score < 0.5 || res.Param != "q" {
			t.Errorf("%s scores %.3f (param %q, %s): want an alarm on q", attack, res.Score, res.Param, res.Broke)
		}
	}
}

// TestAdversaryDotDotInPaths covers traversal in a parameter that holds paths: '.' and '/'
// are ordinary there, a step up is not.
func TestAdversaryDotDotInPaths(t *testing.T) {
	pages := []string{"/account", "/cart", "/catalog/shoes.html", "/docs/v1.2/guide.html", "/static/app.min.js"}
	s := learnedSet(2000, func(r *rand.Rand) Request {
		return Request{Query: "next=" + url.QueryEscape(pages[r.IntN(len(pages))])}
	})
	for _, attack := range []string{"/docs/../../../etc/passwd", "/static/..%2F..%2F..%2Fetc%2Fshadow", "/cart/..\\..\\win.ini"} {
		res := s.Judge(1, &Request{Query: "next=" + url.QueryEscape(attack)})
		if res.Score < 0.5 || res.Broke&BrokeChars == 0 {
			t.Errorf("%s scores %.3f (%s): want an alarm on its characters", attack, res.Score, res.Broke)
		}
	}
	if res := s.Judge(1, &Request{Query: "next=%2Fdocs%2Fv1.2%2Fguide.html"}); res.Score >= 0.5 {
		t.Errorf("a learned path scores %.3f", res.Score)
	}
}

// TestLongValuesGraded: a value a little longer than every learned one is a small surprise,
// and the score goes on growing with the length beyond twice the longest (it stopped there).
func TestLongValuesGraded(t *testing.T) {
	s := learnedSet(2000, func(r *rand.Rand) Request {
		return Request{Query: "name=" + strings.Repeat("a", 3+r.IntN(18))} // 3..20 bytes
	})
	prev := -1.0
	for _, n := range []int{24, 40, 80, 160, 320, 640, 2000} {
		res := s.Judge(1, &Request{Query: "name=" + strings.Repeat("a", n)})
		if res.Score <= prev && res.Score < 0.99 {
			t.Errorf("length %d scores %.3f, not above %.3f", n, res.Score, prev)
		}
		prev = res.Score
		switch {
		case n <= 40 && res.Score >= 0.5:
			t.Errorf("length %d (twice the longest) alarms: %.3f", n, res.Score)
		case n >= 2000 && res.Score < 0.4:
			t.Errorf("length %d (100 times the longest) scores %.3f: want 0.4 or more", n, res.Score)
		}
	}
}

const formCT2 = "application/x-www-form-urlencoded"

// TestAdversaryContentTypeMismatch covers a workload that chooses its content type to keep a
// body out of the parsers: a JSON document labelled form, form fields labelled JSON or
// text/plain, a multipart body labelled text/plain. Each is read as what it is, and even
// with values that fit, the mismatch itself alarms (it never happened while learning).
func TestAdversaryContentTypeMismatch(t *testing.T) {
	s := learnedSet(1000, func(r *rand.Rand) Request {
		return Request{ContentType: formCT2, Body: "email=" + url.QueryEscape(fmt.Sprintf("user%d@example.com", r.IntN(1000))) + "&qty=" + fmt.Sprint(1+r.IntN(5))}
	})
	tests := []struct{ name, ct, body string }{
		{"json labelled form", formCT2, `{"email":"user1@example.com","qty":2}`},
		{"form labelled json", "application/json", "email=user1%40example.com&qty=2"},
		{"form labelled text", "text/plain", "email=user1%40example.com&qty=2"},
		{"form without type", "", "email=user1%40example.com&qty=2"},
		{"multipart labelled text", "text/plain", "--b\r\nContent-Disposition: form-data; name=\"email\"\r\n\r\nuser1@example.com\r\n--b--\r\n"},
		{"form labelled multipart", "multipart/form-data; boundary=b", "email=user1%40example.com&qty=2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := s.Judge(1, &Request{ContentType: tt.ct, Body: tt.body})
			if res.Score < 0.5 || !res.Overflow {
				t.Errorf("scores %.3f (overflow %v, %s): want an alarm", res.Score, res.Overflow, res.Broke)
			}
		})
	}
	if res := s.Judge(1, &Request{ContentType: formCT2, Body: "email=user1%40example.com&qty=2"}); res.Score >= 0.5 {
		t.Errorf("the same fields as a form score %.3f", res.Score)
	}
}

// multipartBody writes fields and a file part as a browser does.
func multipartBody(fields [][2]string, file string) (string, string) {
	var b strings.Builder
	w := multipart.NewWriter(&b)
	for _, f := range fields {
		_ = w.WriteField(f[0], f[1])
	}
	fw, _ := w.CreateFormFile("avatar", file)
	_, _ = fw.Write([]byte("\xff\xd8\xff\xe0 binary ' OR 1=1 <script>"))
	_ = w.Close()
	return b.String(), w.FormDataContentType()
}

// TestAdversaryMultipartFields covers an upload form: its fields are judged (a workload that
// sends multipart/form-data no longer bypasses the value models), its file's name too, its
// file's content never.
func TestAdversaryMultipartFields(t *testing.T) {
	vis := []string{"public", "friends", "private"}
	s := learnedSet(1000, func(r *rand.Rand) Request {
		body, ct := multipartBody([][2]string{{"caption", people[r.IntN(len(people))] + " summer"}, {"visibility", vis[r.IntN(3)]}}, fmt.Sprintf("img%d.jpg", r.IntN(100)))
		return Request{ContentType: ct, Body: body}
	})
	tests := []struct {
		name, param string
		fields      [][2]string
		file        string
	}{
		{"sqli in a field", "body.caption", [][2]string{{"caption", "x' UNION SELECT password FROM users--"}, {"visibility", "public"}}, "img1.jpg"},
		{"xss in a field", "body.caption", [][2]string{{"caption", "<img src=x onerror=alert(1)>"}, {"visibility", "public"}}, "img1.jpg"},
		{"changed enum", "body.visibility", [][2]string{{"caption", "Ana summer"}, {"visibility", "admin' --"}}, "img1.jpg"},
		{"traversal in the file name", "body.avatar", [][2]string{{"caption", "Ana summer"}, {"visibility", "public"}}, "../../../var/www/shell.php"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body, ct := multipartBody(tt.fields, tt.file)
			res := s.Judge(1, &Request{ContentType: ct, Body: body})
			if res.Score < 0.5 || res.Param != tt.param {
				t.Errorf("scores %.3f on %q (%s): want an alarm on %s", res.Score, res.Param, res.Broke, tt.param)
			}
		})
	}
	body, ct := multipartBody([][2]string{{"caption", "Zoë summer"}, {"visibility", "friends"}}, "img7.jpg")
	if res := s.Judge(1, &Request{ContentType: ct, Body: body}); res.Score >= 0.5 {
		t.Errorf("an ordinary upload scores %.3f (%s, %s)", res.Score, res.Param, res.Broke)
	}
}

// TestMissingClass: a value that lacks what every learned value held (a sku without its '-',
// of the same kind as the learned ones) is a surprise, one that holds it is not.
func TestMissingClass(t *testing.T) {
	s := learnedSet(1000, func(r *rand.Rand) Request {
		return Request{Query: fmt.Sprintf("sku=SKU-%05d", r.IntN(100000))}
	})
	with := s.Judge(1, &Request{Query: "sku=SKU-31337"})
	without := s.Judge(1, &Request{Query: "sku=SKU031337"})
	if with.Score >= 0.1 || without.Score < with.Score+0.15 || without.Broke&BrokeChars == 0 {
		t.Errorf("with '-' %.3f, without %.3f (%s): want the missing '-' to stand out", with.Score, without.Score, without.Broke)
	}
}

// TestAdversaryJSONTypeChange covers type confusion in a JSON body: a field always sent as a
// number (or true/false) sent as a string holding the same text.
func TestAdversaryJSONTypeChange(t *testing.T) {
	s := learnedSet(1000, func(r *rand.Rand) Request {
		return Request{ContentType: "application/json", Body: fmt.Sprintf(`{"qty":%d,"gift":%v}`, 1+r.IntN(5), r.IntN(2) == 0)}
	})
	for _, body := range []string{`{"qty":"2","gift":true}`, `{"qty":2,"gift":"true"}`} {
		res := s.Judge(1, &Request{ContentType: "application/json", Body: body})
		if res.Score < 0.2 || res.Broke&BrokeChars == 0 {
			t.Errorf("%s scores %.3f (%s, %s): want its type change to count", body, res.Score, res.Param, res.Broke)
		}
	}
	if res := s.Judge(1, &Request{ContentType: "application/json", Body: `{"qty":3,"gift":false}`}); res.Score != 0 {
		t.Errorf("a learned body scores %.3f", res.Score)
	}
}

// TestAdversaryParameterPollution covers parameter pollution: a key sent twice in one
// request ("id=7&id=7%20OR%201=1" split as "id=7&id=1"), where a backend may read the first,
// the last or both. A key never repeated while learning is a surprise when repeated; one
// that often repeats (tags) is not.
func TestAdversaryParameterPollution(t *testing.T) {
	s := learnedSet(1000, func(r *rand.Rand) Request {
		q := fmt.Sprintf("id=%d&view=%s", r.IntN(100000), []string{"summary", "full"}[r.IntN(2)])
		for range r.IntN(3) {
			q += "&tag=" + []string{"red", "blue", "sale"}[r.IntN(3)]
		}
		return Request{Query: q}
	})
	polluted := s.Judge(1, &Request{Query: "id=4711&view=full&id=1"})
	if polluted.Score < 0.15 || polluted.Broke&BrokeRepeat == 0 || polluted.Param != "id" {
		t.Errorf("a repeated id scores %.3f on %q (%s): want a repeat surprise on id", polluted.Score, polluted.Param, polluted.Broke)
	}
	if once := s.Judge(1, &Request{Query: "id=4711&view=full"}); once.Score >= 0.05 {
		t.Errorf("a single id scores %.3f", once.Score)
	}
	if tags := s.Judge(1, &Request{Query: "id=4711&view=full&tag=red&tag=sale"}); tags.Score >= 0.05 {
		t.Errorf("repeated tags score %.3f (%s)", tags.Score, tags.Broke)
	}
	// The counts survive a snapshot.
	r, err := Restore(s.Config(), s.Snapshot())
	if err != nil {
		t.Fatal(err)
	}
	if again := r.Judge(1, &Request{Query: "id=4711&view=full&id=1"}); again.Score != polluted.Score {
		t.Errorf("after a snapshot a repeated id scores %.3f, before %.3f", again.Score, polluted.Score)
	}
}
