package shape

import "strings"

// Placeholders stand for the variable parts of a path. A templated path contains them
// verbatim, e.g. "/v1/customers/{id}/cards/{hex}".
const (
	PlaceholderID    = "{id}"    // a number: 42, 0017
	PlaceholderUUID  = "{uuid}"  // 550e8400-e29b-41d4-a716-446655440000
	PlaceholderHex   = "{hex}"   // a hex token of 8 or more digits mixing digits and letters
	PlaceholderB64   = "{b64}"   // a base64 or base64url token, or a JWT
	PlaceholderEmail = "{email}" // jane.doe@example.com (also with @ encoded as %40)
	PlaceholderDate  = "{date}"  // 2026-01-02, optionally with a time: 2026-01-02T15:04:05Z
	PlaceholderLong  = "{long}"  // any segment whose template is longer than MaxSegment bytes
)

// MaxSegment is the longest templated path segment or query key kept as text; a longer one
// becomes {long}, which bounds the number and size of templates.
const MaxSegment = 64

// Bytes that are percent-encoded in templates, so that a template never contains spaces or
// control bytes and the string form of a shape splits on spaces. In lists (query and header
// keys) ',' '[' and ']' are encoded too.
var escPath, escList = func() (p, l [256]bool) {
	for c := range 256 {
		p[c] = c <= ' ' || c >= 0x7f
		l[c] = p[c] || c == ',' || c == '[' || c == ']'
	}
	return p, l
}()

// escListUpper marks the bytes of a lower-cased list element that change: escaped ones and
// upper-case letters.
var escListUpper = func() (t [256]bool) {
	for c := range 256 {
		t[c] = escList[c] || 'A' <= c && c <= 'Z'
	}
	return t
}()

// sink receives template output: it hashes it, builds it, or only measures it.
type sink struct {
	h     hasher
	hash  bool
	build bool
	b     []byte
	n     int
}

func (o *sink) str(s string) {
	o.n += len(s)
	if o.hash {
		o.h.str(s)
	}
	if o.build {
		o.b = append(o.b, s...)
	}
}

func (o *sink) byte(c byte) {
	o.n++
	if o.hash {
		o.h.byte(c)
	}
	if o.build {
		o.b = append(o.b, c)
	}
}

// escByte writes c percent-encoded, with lower-case hex digits in lower-case fields so that
// canonicalising twice changes nothing.
func (o *sink) escByte(c byte, lower bool) {
	hex := "0123456789ABCDEF"
	if lower {
		hex = "0123456789abcdef"
	}
	o.byte('%')
	o.byte(hex[c>>4])
	o.byte(hex[c&15])
}

// escaped writes a list element or field: s, lower-cased when lower is set, with the bytes
// marked in escList percent-encoded.
func (o *sink) escaped(s string, lower bool) {
	change := &escList
	if lower {
		change = &escListUpper
	}
	clean := true
	for i := 0; i < len(s); i++ {
		if change[s[i]] {
			clean = false
			break
		}
	}
	if clean {
		o.str(s)
		return
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case escList[c]:
			o.escByte(c, lower)
		case lower && 'A' <= c && c <= 'Z':
			o.byte(c + 'a' - 'A')
		default:
			o.byte(c)
		}
	}
}

// TemplatePath returns the template of a request path: the query and fragment are dropped,
// an absolute-form URL loses its scheme and authority, and variable segments become
// placeholders. Templating a template returns it unchanged.
func TemplatePath(p string) string {
	o := sink{build: true, b: make([]byte, 0, len(p))}
	path, _ := splitPath(p)
	templatePath(&o, path)
	return string(o.b)
}

// splitPath returns the path part of a request target and its raw query ("" if none).
func splitPath(p string) (path, query string) {
	for i := 0; i < len(p); i++ {
		if c := p[i]; c == '?' || c == '#' {
			if c == '?' {
				query = p[i+1:]
				for j := 0; j < len(query); j++ {
					if query[j] == '#' {
						query = query[:j]
						break
					}
				}
			}
			p = p[:i]
			break
		}
	}
	if len(p) > 0 && p[0] != '/' && (p[0] == 'h' || p[0] == 'H') {
		// Absolute form, as a forward proxy may see it: keep only the path.
		for _, scheme := range [...]string{"http://", "https://"} {
			if hasPrefixFold(p, scheme) {
				rest := p[len(scheme):]
				if i := strings.IndexByte(rest, '/'); i >= 0 {
					p = rest[i:]
				} else {
					p = "/"
				}
				break
			}
		}
	}
	return p, query
}

// templatePath writes the template of a path without query. An empty path is "/".
func templatePath(o *sink, p string) {
	if p == "" {
		o.byte('/')
		return
	}
	start := 0
	for i := 0; i < len(p); i++ {
		if p[i] == '/' {
			segment(o, p[start:i], &escPath)
			o.byte('/')
			start = i + 1
		}
	}
	segment(o, p[start:], &escPath)
}

// segment writes the template of one path segment or query key.
func segment(o *sink, seg string, esc *[256]bool) {
	if seg == "" {
		return
	}
	ph, plain := classifySegment(seg)
	if ph != "" {
		o.str(ph)
		return
	}
	if plain {
		if len(seg) > MaxSegment {
			o.str(PlaceholderLong)
		} else {
			o.str(seg)
		}
		return
	}
	// A segment grows at most threefold (an escaped byte becomes three bytes; placeholders
	// are no longer than what they replace but for "{id}" standing for three digits or
	// more), so short segments need not be measured first.
	if 3*len(seg) > MaxSegment {
		m := sink{}
		tokens(&m, seg, esc)
		if m.n > MaxSegment {
			o.str(PlaceholderLong)
			return
		}
	}
	tokens(o, seg, esc)
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

func isHexDigit(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func isAlnum(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z'
}

// isWord reports whether c belongs to a token: letters, digits, and the braces of
// placeholders. Every other byte separates tokens.
func isWord(c byte) bool { return isAlnum(c) || c == '{' || c == '}' }

// pctAt reports whether s[i:] starts with a percent-encoded byte.
func pctAt(s string, i int) bool {
	return i+2 < len(s) && s[i] == '%' && isHexDigit(s[i+1]) && isHexDigit(s[i+2])
}

// Character classes of the classifiers.
const (
	cDigit = 1 << iota // 0-9
	cLower             // a-z
	cUpper             // A-Z
	cHex               // 0-9 a-f A-F
	cB64               // - _ + =: base64 and base64url symbols
)

var charClass = func() (t [256]uint8) {
	for c := '0'; c <= '9'; c++ {
		t[c] = cDigit | cHex
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = cLower
		t[c-'a'+'A'] = cUpper
		if c <= 'f' {
			t[c] |= cHex
			t[c-'a'+'A'] |= cHex
		}
	}
	for _, c := range "-_+=" {
		t[c] = cB64
	}
	return t
}()

// classifySegment returns the placeholder for a whole segment, or "" and whether the segment
// is plain: a single token of letters and digits that tokens would copy unchanged.
func classifySegment(s string) (placeholder string, plain bool) {
	var digits, trans int
	var all, any uint8 = 0xff, 0
	hasAt, b64 := false, true
	var prev uint8 // class (digit, lower, upper) of the previous letter or digit
	for i := 0; i < len(s); i++ {
		c := s[i]
		cls := charClass[c]
		if cls == 0 {
			switch {
			case c == '%' && pctAt(s, i):
				// Encoded '+', '/' and '=' still make base64; an encoded '@' an e-mail.
				hi, lo := s[i+1], upper(s[i+2])
				switch {
				case hi == '2' && (lo == 'B' || lo == 'F'), hi == '3' && lo == 'D':
				case hi == '4' && lo == '0':
					hasAt, b64 = true, false
				default:
					b64 = false
				}
				i += 2
			case c == '@':
				hasAt, b64 = true, false
			default:
				b64 = false
			}
			all = 0
			continue
		}
		all &= cls
		any |= cls
		if k := cls & (cDigit | cLower | cUpper); k != 0 {
			if k == cDigit {
				digits++
			}
			if prev != 0 && k != prev {
				trans++
			}
			prev = k
		}
	}
	n := len(s)
	alnum := all != 0 && any&cB64 == 0
	switch {
	case digits == n:
		return PlaceholderID, false
	case n == 36 && uuidAt(s, 0) == 36:
		return PlaceholderUUID, false
	case digits >= 8 && dateAt(s, 0) == n:
		return PlaceholderDate, false
	case hasAt && isEmail(s):
		return PlaceholderEmail, false
	case all&cHex != 0 && n >= 8 && digits > 0 && any&(cLower|cUpper) != 0:
		return PlaceholderHex, false
	case b64 && looksRandom(n, trans):
		return PlaceholderB64, false
	case !alnum && isJWT(s):
		return PlaceholderB64, false
	}
	return "", alnum
}

// looksRandom reports whether a token of n bytes with trans changes between digits, lower
// and upper case letters looks like an encoded random value rather than a word: random
// base64 changes class at about two of three characters, camelCase words and slugs rarely.
func looksRandom(n, trans int) bool {
	return n >= 16 && 3*trans >= n || n >= 10 && 2*trans >= n
}

// tokenClass returns the placeholder for a token of letters, digits and braces, or "". A
// number of one or two digits inside a longer segment stays, as in x86_64, utf-8 or v1.2.
func tokenClass(t string) string {
	var digits, letters, trans int
	hexOnly := true
	prev := 0
	for i := 0; i < len(t); i++ {
		c := t[i]
		cls := 0
		switch {
		case '0' <= c && c <= '9':
			digits++
			cls = 1
		case 'a' <= c && c <= 'z':
			letters++
			cls = 2
			hexOnly = hexOnly && c <= 'f'
		case 'A' <= c && c <= 'Z':
			letters++
			cls = 3
			hexOnly = hexOnly && c <= 'F'
		default: // a brace: part of a placeholder or of a literal template
			return ""
		}
		if prev != 0 && cls != prev {
			trans++
		}
		prev = cls
	}
	switch {
	case digits == len(t) && digits > 2:
		return PlaceholderID
	case hexOnly && len(t) >= 8 && digits > 0 && letters > 0:
		return PlaceholderHex
	case looksRandom(len(t), trans):
		return PlaceholderB64
	}
	return ""
}

// tokens writes seg with each token (a run of letters, digits and braces) templated on its
// own, and UUIDs and dates found at token starts collapsed. Separators are kept, the bytes
// marked in esc percent-encoded.
func tokens(o *sink, seg string, esc *[256]bool) {
	for i := 0; i < len(seg); {
		c := seg[i]
		if !isWord(c) {
			switch {
			case pctAt(seg, i):
				o.str(seg[i : i+3])
				i += 3
			case esc[c]:
				o.escByte(c, false)
				i++
			default:
				o.byte(c)
				i++
			}
			continue
		}
		if n := uuidAt(seg, i); n > 0 && boundary(seg, i+n) {
			o.str(PlaceholderUUID)
			i += n
			continue
		}
		if n := dateAt(seg, i); n > 0 {
			o.str(PlaceholderDate)
			i += n
			continue
		}
		j := i + 1
		for j < len(seg) && isWord(seg[j]) {
			j++
		}
		if ph := tokenClass(seg[i:j]); ph != "" {
			o.str(ph)
		} else {
			o.str(seg[i:j])
		}
		i = j
	}
}

// boundary reports whether a token may end before s[i].
func boundary(s string, i int) bool { return i >= len(s) || !isWord(s[i]) }

// uuidAt returns 36 if s[i:] starts with a UUID (8-4-4-4-12 hex digits), else 0.
func uuidAt(s string, i int) int {
	if len(s)-i < 36 {
		return 0
	}
	for j := range 36 {
		c := s[i+j]
		switch j {
		case 8, 13, 18, 23:
			if c != '-' {
				return 0
			}
		default:
			if !isHexDigit(c) {
				return 0
			}
		}
	}
	return 36
}

// digitsAt reports whether s[i:i+n] are all decimal digits.
func digitsAt(s string, i, n int) bool {
	if i+n > len(s) {
		return false
	}
	for j := i; j < i+n; j++ {
		if !isDigit(s[j]) {
			return false
		}
	}
	return true
}

// dateAt returns the length of the date that starts at s[i] and ends at a token boundary:
// YYYY-MM-DD, optionally followed by THH:MM[:SS[.fraction]][Z|±HH[:]MM], with ':' possibly
// encoded as %3A. It returns 0 if there is none.
func dateAt(s string, i int) int {
	if !digitsAt(s, i, 4) || i+10 > len(s) || s[i+4] != '-' || !digitsAt(s, i+5, 2) ||
		s[i+7] != '-' || !digitsAt(s, i+8, 2) {
		return 0
	}
	month := int(s[i+5]-'0')*10 + int(s[i+6]-'0')
	day := int(s[i+8]-'0')*10 + int(s[i+9]-'0')
	if month < 1 || month > 12 || day < 1 || day > 31 {
		return 0
	}
	j := i + 10
	if j < len(s) && (s[j] == 'T' || s[j] == 't') {
		if k := timeAt(s, j+1); k > 0 {
			j = k
		}
	}
	if !boundary(s, j) {
		return 0
	}
	return j - i
}

// colonAt returns the index after a ':' or "%3A" at s[i], or -1.
func colonAt(s string, i int) int {
	if i < len(s) && s[i] == ':' {
		return i + 1
	}
	if pctAt(s, i) && s[i+1] == '3' && (s[i+2] == 'A' || s[i+2] == 'a') {
		return i + 3
	}
	return -1
}

// timeAt returns the index after HH:MM[:SS[.fraction]][zone] at s[i], or 0.
func timeAt(s string, i int) int {
	if !digitsAt(s, i, 2) {
		return 0
	}
	j := colonAt(s, i+2)
	if j < 0 || !digitsAt(s, j, 2) {
		return 0
	}
	j += 2
	if k := colonAt(s, j); k >= 0 && digitsAt(s, k, 2) {
		j = k + 2
		if j < len(s) && s[j] == '.' && digitsAt(s, j+1, 1) {
			j++
			for j < len(s) && isDigit(s[j]) {
				j++
			}
		}
	}
	switch {
	case j < len(s) && (s[j] == 'Z' || s[j] == 'z'):
		j++
	case j < len(s) && (s[j] == '+' || s[j] == '-') && digitsAt(s, j+1, 2):
		k := j + 3
		if c := colonAt(s, k); c >= 0 {
			k = c
		}
		if digitsAt(s, k, 2) {
			j = k + 2
		}
	}
	return j
}

// isEmail reports whether s is local@domain (the '@' possibly encoded as %40) with a dotted
// domain whose last label has at least two letters.
func isEmail(s string) bool {
	at, n := strings.IndexByte(s, '@'), 1
	if p := strings.Index(s, "%40"); p >= 0 && (at < 0 || p < at) {
		at, n = p, 3
	}
	if at <= 0 || at+n >= len(s) {
		return false
	}
	for i := 0; i < at; i++ {
		c := s[i]
		if !isAlnum(c) && c != '.' && c != '_' && c != '+' && c != '-' {
			return false
		}
	}
	domain := s[at+n:]
	dot := strings.LastIndexByte(domain, '.')
	if dot <= 0 || len(domain)-dot-1 < 2 || domain[0] == '-' {
		return false
	}
	for i := 0; i < len(domain); i++ {
		c := domain[i]
		if !isAlnum(c) && c != '.' && c != '-' {
			return false
		}
		if i > dot && !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z') {
			return false
		}
	}
	return true
}

// isJWT reports whether s looks like a JSON Web Token: three base64url parts joined by dots,
// the first an encoded JSON object ("eyJ").
func isJWT(s string) bool {
	if len(s) < 24 || !strings.HasPrefix(s, "eyJ") || strings.Count(s, ".") != 2 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !isAlnum(c) && c != '-' && c != '_' && c != '.' && c != '=' {
			return false
		}
	}
	return true
}
