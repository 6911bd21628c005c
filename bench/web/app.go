package main

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"mime/multipart"
	"net/url"
	"strconv"
	"strings"
	"unicode/utf8"
)

// The application: a small shop behind one host. Its browser pages send GET queries and
// form-encoded POST bodies (in the page's charset: UTF-8, or Latin-1 for the older pages a
// share of sessions use), its script sends JSON; every request carries the session cookie.

// Type says what a parameter holds: it decides how attacks of the tamper and typo classes
// change it.
type Type uint8

const (
	TNum   Type = iota // an id, a quantity, a page, a rating
	TPrice             // a decimal amount
	TEnum              // a button, a sort order, a category, a country
	TText              // free text: a comment, a search, an address
	TName              // a person's or a city's name
	TEmail
	TSecret // a password
	TCard   // a card number
	TCode   // a zip code, a phone, an expiry date, a cvv, a sku
	TPath   // a local path or URL: a redirect target, a file name
)

// KV is one query or form parameter: its decoded value, or its encoded value when Raw.
type KV struct {
	K, V string
	T    Type
	Raw  bool
}

// JSON bodies are built from ordered objects, arrays and scalars (string, int, float64).
type (
	jobj   []jfield
	jfield struct {
		K string
		V any
		T Type
	}
	jarr []any
)

// Req is one request of the application, before it is written as a flow event.
type Req struct {
	Method, Path string
	Query        []KV
	Form         []KV
	JSON         jobj
	// CT overrides the content type of the body (an attack sending one body as another).
	CT      string
	Latin1  bool // the page's charset: form and query values are encoded in Latin-1
	Session *session
	// RawBody, when set, is sent as the body instead of Form or JSON.
	RawBody string
	// Multipart sends Form as multipart/form-data fields, followed by File as a file part.
	Multipart bool
	File      []byte
	Boundary  string
}

// session is one browser session.
type session struct {
	cookie  string
	ua      string
	lang    string
	latin1  bool
	user    person
	cart    []int
	orders  []int
	rng     *rand.Rand
	country string
}

type person struct {
	first, last, email, password, street, city, zip, phone, country string
}

var (
	firstNames = []string{"Ana", "José", "María", "Lucía", "Jürgen", "Zoë", "Françoise", "Søren", "Łukasz", "Chloé",
		"Peter", "John", "Emma", "Olivia", "Noah", "Liam", "Sofía", "Mateo", "Inés", "Renée", "Björn", "Ægir",
		"Hélène", "Nuño", "Ramón", "Carmen", "Pablo", "Elena", "Jean-Luc", "Mary Ann", "Åsa", "Dvořák"}
	lastNames = []string{"García", "Müller", "Núñez", "O'Brien", "Smith-Jones", "van der Berg", "Fernández", "López",
		"Schröder", "Martin", "Dupont", "Johansson", "Ibáñez", "Rossi", "Brown", "Wilson", "Peña", "Gómez",
		"Kowalski", "D'Angelo", "Çelik", "Weiß", "Lefèvre", "MacDonald", "Álvarez"}
	streets = []string{"Calle Mayor", "Hauptstraße", "Rue de l'Église", "Baker Street", "Avenida de la Constitución",
		"Gran Vía", "Königsallee", "Via Roma", "Paseo de Gràcia", "Main St.", "Plaza España", "Rua Augusta"}
	cities = []string{"Madrid", "München", "Zürich", "Kraków", "São Paulo", "Cádiz", "New York", "Málaga", "Köln",
		"Paris", "Lyon", "Barcelona", "A Coruña", "Valencia", "Sevilla", "Göteborg", "Bilbao", "León"}
	countries = []string{"ES", "DE", "FR", "IT", "PT", "GB", "US", "SE", "PL", "CH"}
	domains   = []string{"gmail.com", "yahoo.es", "hotmail.com", "example.org", "correo.es", "web.de", "mail.co.uk"}
	words     = []string{"zapatos", "camiseta", "bolso", "chaqueta", "vestido", "reloj", "gafas", "mochila", "cinturón",
		"sandalias", "jersey", "pantalón", "bufanda", "sombrero", "calcetines", "abrigo", "falda", "botas",
		"shoes", "shirt", "leather", "wallet", "blue", "red", "negro", "azul", "talla", "algodón", "niño", "mujer",
		"hombre", "oferta", "rebajas", "größe", "été", "cuero"}
	commentWords = []string{"muy", "buen", "producto", "llegó", "rápido", "calidad", "precio", "recomiendo", "talla",
		"pequeña", "grande", "perfecto", "the", "fit", "is", "great", "not", "what", "I", "expected", "color",
		"bonito", "envío", "tardó", "días", "pero", "bien", "genial", "regular", "malo", "devolución", "fácil",
		"good", "value", "for", "money", "would", "buy", "again", "excelente", "sí", "también", "más"}
	commentPunct = []string{".", ",", "!", "?", "...", " :)", " -", "!!"}
	categories   = []string{"women", "men", "kids", "shoes", "accessories", "sale", "new", "sports", "home"}
	sorts        = []string{"relevance", "price_asc", "price_desc", "name", "newest", "rating"}
	pages        = []string{"about", "shipping", "returns", "contact", "faq", "privacy", "terms"}
	langs        = []string{"es", "en", "de", "fr"}
	coupons      = []string{"SPRING10", "WELCOME5", "FREESHIP", "VIP20"}
	userAgents   = []string{
		"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
		"Mozilla/5.0 (Macintosh; Intel Mac OS X 14_2) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 Safari/605.1.15",
		"Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
		"Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
	}
	pwChars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!@#$%*?_-."
)

func pick[T any](r *rand.Rand, xs []T) T { return xs[r.IntN(len(xs))] }

func newSession(r *rand.Rand) *session {
	s := &session{rng: r, ua: pick(r, userAgents), lang: pick(r, langs), latin1: r.Float64() < 0.3}
	s.cookie = fmt.Sprintf("JSESSIONID=%016X%016X", r.Uint64(), r.Uint64())
	s.user = newPerson(r)
	return s
}

func newPerson(r *rand.Rand) person {
	p := person{first: pick(r, firstNames), last: pick(r, lastNames), country: pick(r, countries)}
	p.email = emailOf(r, p.first, p.last)
	n := 8 + r.IntN(8)
	var b strings.Builder
	for range n {
		c := pwChars[r.IntN(len(pwChars))]
		if r.Float64() < 0.8 && c > 'z' { // most passwords have few symbols
			c = 'a' + byte(r.IntN(26))
		}
		b.WriteByte(c)
	}
	p.password = b.String()
	p.street = fmt.Sprintf("%s %d", pick(r, streets), 1+r.IntN(200))
	if r.Float64() < 0.3 {
		p.street += fmt.Sprintf(", %dº %c", 1+r.IntN(9), 'A'+rune(r.IntN(4)))
	}
	p.city = pick(r, cities)
	switch r.IntN(3) {
	case 0:
		p.zip = fmt.Sprintf("%05d", 1000+r.IntN(52000))
	case 1:
		p.zip = fmt.Sprintf("%d", 10000+r.IntN(89999))
	default:
		p.zip = fmt.Sprintf("%c%c%d %d%c%c", 'A'+rune(r.IntN(26)), 'A'+rune(r.IntN(26)), 1+r.IntN(9), r.IntN(10), 'A'+rune(r.IntN(26)), 'A'+rune(r.IntN(26)))
	}
	switch r.IntN(3) {
	case 0:
		p.phone = fmt.Sprintf("+34 6%02d %03d %03d", r.IntN(100), r.IntN(1000), r.IntN(1000))
	case 1:
		p.phone = fmt.Sprintf("6%08d", r.IntN(100000000))
	default:
		p.phone = fmt.Sprintf("(%03d) %03d-%04d", 200+r.IntN(800), r.IntN(1000), r.IntN(10000))
	}
	return p
}

// ascii folds the accents of s for e-mail addresses: "José" → "jose".
func ascii(s string) string {
	var b strings.Builder
	for _, c := range strings.ToLower(s) {
		switch {
		case c < 0x80 && (c >= 'a' && c <= 'z' || c == '-'):
			b.WriteRune(c)
		case strings.ContainsRune("áàâäãå", c):
			b.WriteByte('a')
		case strings.ContainsRune("éèêë", c):
			b.WriteByte('e')
		case strings.ContainsRune("íìîï", c):
			b.WriteByte('i')
		case strings.ContainsRune("óòôöøõ", c):
			b.WriteByte('o')
		case strings.ContainsRune("úùûü", c):
			b.WriteByte('u')
		case c == 'ñ' || c == 'ń':
			b.WriteByte('n')
		case c == 'ç' || c == 'č':
			b.WriteByte('c')
		case c == 'ł':
			b.WriteByte('l')
		case c == 'ß':
			b.WriteString("ss")
		case c == 'ř':
			b.WriteByte('r')
		case c == 'æ':
			b.WriteString("ae")
		}
	}
	return b.String()
}

func emailOf(r *rand.Rand, first, last string) string {
	f, l := ascii(first), ascii(last)
	var local string
	switch r.IntN(5) {
	case 0:
		local = f + "." + l
	case 1:
		local = f + l + strconv.Itoa(r.IntN(100))
	case 2:
		local = f[:1] + l
	case 3:
		local = f + "_" + l
	default:
		local = f + "+shop"
	}
	return local + "@" + pick(r, domains)
}

func searchWords(r *rand.Rand) string {
	n := 1 + r.IntN(3)
	ws := make([]string, n)
	for i := range ws {
		ws[i] = pick(r, words)
	}
	return strings.Join(ws, " ")
}

func comment(r *rand.Rand) string {
	var b strings.Builder
	n := 3 + r.IntN(25)
	for i := range n {
		if i > 0 {
			b.WriteByte(' ')
		}
		w := pick(r, commentWords)
		if i == 0 {
			w = strings.ToUpper(w[:1]) + w[1:]
		}
		b.WriteString(w)
		if r.Float64() < 0.12 {
			b.WriteString(pick(r, commentPunct))
		}
	}
	b.WriteString(pick(r, commentPunct[:3]))
	if r.Float64() < 0.03 {
		b.WriteString(" 🙂")
	}
	return b.String()
}

// encode percent-encodes a value as a browser's form does in its page's charset: UTF-8, or
// Latin-1 with the characters Latin-1 lacks written as HTML character references.
func encode(v string, latin1 bool) string {
	if !latin1 {
		return url.QueryEscape(v)
	}
	b := make([]byte, 0, len(v))
	for _, c := range v {
		switch {
		case c < 0x100:
			b = append(b, byte(c))
		default:
			b = append(b, "&#"+strconv.Itoa(int(c))+";"...)
		}
	}
	return url.QueryEscape(string(b))
}

func encodeKVs(kvs []KV, latin1 bool) string {
	var b strings.Builder
	for i, kv := range kvs {
		if i > 0 {
			b.WriteByte('&')
		}
		b.WriteString(url.QueryEscape(kv.K))
		b.WriteByte('=')
		if kv.Raw {
			b.WriteString(kv.V)
		} else {
			b.WriteString(encode(kv.V, latin1))
		}
	}
	return b.String()
}

// Target is the request target: path and query.
func (q *Req) Target() string {
	if len(q.Query) == 0 {
		return q.Path
	}
	return q.Path + "?" + encodeKVs(q.Query, q.Latin1)
}

// Body returns the body and its content type.
func (q *Req) Body() (string, string) {
	switch {
	case q.RawBody != "":
		return q.RawBody, q.CT
	case q.Multipart:
		return q.multipart()
	case len(q.Form) > 0:
		return encodeKVs(q.Form, q.Latin1), or(q.CT, "application/x-www-form-urlencoded")
	case q.JSON != nil:
		var b strings.Builder
		writeJSON(&b, q.JSON)
		return b.String(), or(q.CT, "application/json")
	}
	return "", ""
}

func or(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func writeJSON(b *strings.Builder, v any) {
	switch v := v.(type) {
	case jobj:
		b.WriteByte('{')
		for i, f := range v {
			if i > 0 {
				b.WriteByte(',')
			}
			writeJSONString(b, f.K)
			b.WriteByte(':')
			writeJSON(b, f.V)
		}
		b.WriteByte('}')
	case jarr:
		b.WriteByte('[')
		for i, e := range v {
			if i > 0 {
				b.WriteByte(',')
			}
			writeJSON(b, e)
		}
		b.WriteByte(']')
	case string:
		writeJSONString(b, v)
	case int:
		b.WriteString(strconv.Itoa(v))
	case float64:
		b.WriteString(strconv.FormatFloat(v, 'f', 2, 64))
	case jraw:
		b.WriteString(string(v))
	}
}

// jraw is a JSON value written as it is (a tampered scalar: a number that is not one).
type jraw string

func writeJSONString(b *strings.Builder, s string) {
	b.WriteByte('"')
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c < 0x20:
			fmt.Fprintf(b, "\\u%04x", c)
		case c < utf8.RuneSelf:
			b.WriteByte(c)
		default:
			r, n := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && n == 1 {
				b.WriteString(`\ufffd`)
			} else {
				b.WriteString(s[i : i+n])
			}
			i += n
			continue
		}
		i++
	}
	b.WriteByte('"')
}

// The pages a session visits. Each step returns the requests a browser sends for it: the
// page (or form post, or script call) and some of its static files.
func (s *session) step(kind string) []*Req {
	r := s.rng
	get := func(path string, q ...KV) *Req {
		return &Req{Method: "GET", Path: path, Query: q, Latin1: s.latin1, Session: s}
	}
	post := func(path string, f ...KV) *Req {
		return &Req{Method: "POST", Path: path, Form: f, Latin1: s.latin1, Session: s}
	}
	product := 1 + r.IntN(5000)
	var out []*Req
	switch kind {
	case "home":
		out = append(out, get("/"))
		out = append(out, get("/static/css/main.css"), get("/static/js/app.js"))
	case "catalog":
		q := []KV{{K: "category", V: pick(r, categories), T: TEnum}}
		if r.Float64() < 0.5 {
			q = append(q, KV{K: "page", V: strconv.Itoa(1 + r.IntN(20)), T: TNum})
		}
		q = append(q, KV{K: "sort", V: pick(r, sorts), T: TEnum})
		out = append(out, get("/catalog", q...))
		for range r.IntN(4) {
			out = append(out, get(fmt.Sprintf("/images/p/%d.jpg", 1+r.IntN(5000))))
		}
	case "search":
		q := []KV{{K: "q", V: searchWords(r), T: TText}}
		if r.Float64() < 0.3 {
			q = append(q, KV{K: "page", V: strconv.Itoa(1 + r.IntN(10)), T: TNum})
		}
		out = append(out, get("/search", q...))
	case "product":
		out = append(out, get("/product", KV{K: "id", V: strconv.Itoa(product), T: TNum}))
		out = append(out, get(fmt.Sprintf("/images/p/%d.jpg", product)))
		if r.Float64() < 0.4 {
			out = append(out, get("/api/stock", KV{K: "sku", V: fmt.Sprintf("SKU-%05d", product), T: TCode}))
		}
	case "add":
		s.cart = append(s.cart, product)
		price := float64(199+r.IntN(20000)) / 100
		out = append(out, post("/cart/add",
			KV{K: "id", V: strconv.Itoa(product), T: TNum},
			KV{K: "qty", V: strconv.Itoa(1 + r.IntN(4)), T: TNum},
			KV{K: "price", V: strconv.FormatFloat(price, 'f', 2, 64), T: TPrice},
			KV{K: "B1", V: "Añadir al carrito", T: TEnum}))
	case "apicart":
		items := jarr{}
		for range 1 + r.IntN(3) {
			items = append(items, jobj{{K: "sku", V: fmt.Sprintf("SKU-%05d", 1+r.IntN(5000)), T: TCode}, {K: "qty", V: 1 + r.IntN(3), T: TNum}})
		}
		body := jobj{{K: "items", V: items}}
		if r.Float64() < 0.3 {
			body = append(body, jfield{K: "coupon", V: pick(r, coupons), T: TEnum})
		}
		out = append(out, &Req{Method: "POST", Path: "/api/cart", JSON: body, Session: s})
	case "cart":
		out = append(out, get("/cart"))
		if len(s.cart) > 0 && r.Float64() < 0.5 {
			out = append(out, post("/cart/update",
				KV{K: "line", V: strconv.Itoa(1 + r.IntN(len(s.cart))), T: TNum},
				KV{K: "qty", V: strconv.Itoa(r.IntN(6)), T: TNum},
				KV{K: "action", V: pick(r, []string{"update", "remove"}), T: TEnum}))
		}
	case "login":
		f := []KV{{K: "email", V: s.user.email, T: TEmail}, {K: "password", V: s.user.password, T: TSecret}}
		if r.Float64() < 0.4 {
			f = append(f, KV{K: "remember", V: "on", T: TEnum})
		}
		f = append(f, KV{K: "next", V: pick(r, []string{"/account", "/cart", "/checkout", "/catalog?category=" + pick(r, categories)}), T: TPath})
		out = append(out, post("/login", f...))
	case "register":
		u := s.user
		out = append(out, post("/register",
			KV{K: "name", V: u.first, T: TName}, KV{K: "surname", V: u.last, T: TName},
			KV{K: "email", V: u.email, T: TEmail}, KV{K: "password", V: u.password, T: TSecret},
			KV{K: "password2", V: u.password, T: TSecret}, KV{K: "phone", V: u.phone, T: TCode},
			KV{K: "address", V: u.street, T: TText}, KV{K: "city", V: u.city, T: TName},
			KV{K: "zip", V: u.zip, T: TCode}, KV{K: "country", V: u.country, T: TEnum},
			KV{K: "B1", V: "Registrar", T: TEnum}))
	case "address":
		u := s.user
		out = append(out, &Req{Method: "POST", Path: "/api/address", Session: s, JSON: jobj{
			{K: "name", V: u.first + " " + u.last, T: TName}, {K: "street", V: u.street, T: TText},
			{K: "city", V: u.city, T: TName}, {K: "zip", V: u.zip, T: TCode}, {K: "country", V: u.country, T: TEnum},
			{K: "default", V: jraw(pick(r, []string{"true", "false"})), T: TEnum}}})
	case "checkout":
		u := s.user
		card := fmt.Sprintf("%d%015d", 4+r.IntN(2), r.Int64N(1e15))
		if r.Float64() < 0.3 {
			card = card[:4] + " " + card[4:8] + " " + card[8:12] + " " + card[12:]
		}
		out = append(out, post("/checkout",
			KV{K: "name", V: u.first + " " + u.last, T: TName}, KV{K: "address", V: u.street, T: TText},
			KV{K: "city", V: u.city, T: TName}, KV{K: "zip", V: u.zip, T: TCode},
			KV{K: "country", V: u.country, T: TEnum}, KV{K: "card", V: card, T: TCard},
			KV{K: "exp", V: fmt.Sprintf("%02d/%02d", 1+r.IntN(12), 27+r.IntN(6)), T: TCode},
			KV{K: "cvv", V: fmt.Sprintf("%03d", r.IntN(1000)), T: TCode},
			KV{K: "B1", V: "Confirmar", T: TEnum}))
		s.orders = append(s.orders, 100000+r.IntN(900000))
	case "review":
		out = append(out, post("/review",
			KV{K: "product", V: strconv.Itoa(product), T: TNum},
			KV{K: "rating", V: strconv.Itoa(1 + r.IntN(5)), T: TNum},
			KV{K: "title", V: searchWords(r), T: TText},
			KV{K: "comment", V: comment(r), T: TText}))
	case "order":
		id := 100000 + r.IntN(900000)
		if len(s.orders) > 0 {
			id = pick(r, s.orders)
		}
		out = append(out, get("/order", KV{K: "id", V: strconv.Itoa(id), T: TNum}, KV{K: "view", V: pick(r, []string{"summary", "full"}), T: TEnum}))
		if r.Float64() < 0.5 {
			out = append(out, get("/download", KV{K: "file", V: fmt.Sprintf("invoice_%d.pdf", id), T: TPath}))
		}
	case "page":
		out = append(out, get("/page", KV{K: "name", V: pick(r, pages) + ".html", T: TPath}))
	case "lang":
		out = append(out, get("/lang", KV{K: "set", V: pick(r, langs), T: TEnum}, KV{K: "back", V: pick(r, []string{"/", "/catalog", "/cart", "/search"}), T: TPath}))
	case "avatar":
		file := make([]byte, 600+r.IntN(3000))
		for i := range file {
			file[i] = byte(r.Uint32())
		}
		copy(file, "\xff\xd8\xff\xe0\x00\x10JFIF\x00")
		out = append(out, &Req{Method: "POST", Path: "/account/avatar", Multipart: true, Latin1: s.latin1, Session: s,
			Boundary: fmt.Sprintf("----WebKitFormBoundary%016x", r.Uint64()), File: file,
			Form: []KV{{K: "caption", V: searchWords(r), T: TText}, {K: "visibility", V: pick(r, []string{"public", "friends", "private"}), T: TEnum}}})
	case "logout":
		out = append(out, get("/logout"))
	}
	return out
}

// steps are the page kinds and their weights in a session's walk.
var steps = []struct {
	kind   string
	weight float64
}{
	{"home", 6}, {"catalog", 14}, {"search", 10}, {"product", 18}, {"add", 6}, {"apicart", 3}, {"cart", 5},
	{"login", 3}, {"register", 1.5}, {"address", 1}, {"checkout", 2}, {"review", 2}, {"order", 2.5},
	{"page", 2}, {"lang", 1}, {"avatar", 0.7}, {"logout", 1},
}

// walk returns a session's requests: a home page, then a random walk of pages.
func (s *session) walk() []*Req {
	r := s.rng
	out := s.step("home")
	var total float64
	for _, st := range steps {
		total += st.weight
	}
	for range 2 + r.IntN(12) {
		x := r.Float64() * total
		for _, st := range steps {
			if x -= st.weight; x < 0 {
				out = append(out, s.step(st.kind)...)
				break
			}
		}
	}
	return out
}

// multipart writes Form as the fields of a multipart/form-data body, raw as a browser sends
// them (in the page's charset), and File as a file part.
func (q *Req) multipart() (string, string) {
	var b bytes.Buffer
	w := multipart.NewWriter(&b)
	if err := w.SetBoundary(q.Boundary); err != nil {
		panic(err) // the generator's boundaries are valid
	}
	for _, kv := range q.Form {
		v := kv.V
		if kv.Raw {
			if d, err := url.QueryUnescape(v); err == nil {
				v = d
			}
		}
		if q.Latin1 {
			v, _ = url.QueryUnescape(encode(v, true))
		}
		_ = w.WriteField(kv.K, v)
	}
	fw, _ := w.CreateFormFile("avatar", "me.jpg")
	_, _ = fw.Write(q.File)
	_ = w.Close()
	return b.String(), or(q.CT, w.FormDataContentType())
}
