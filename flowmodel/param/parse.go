package param

import (
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"strings"
)

// Where says which part of a request a parameter comes from.
type Where uint8

const (
	InQuery Where = iota + 1 // the URL query
	InForm                   // an application/x-www-form-urlencoded body
	InJSON                   // a JSON body
)

// Limits bound what the parsers read of one request. They are caps against a request made
// to cost memory or time, not tuning knobs: whatever lies beyond them is not parsed, and the
// request is marked as overflowing (Params.Overflow), which the models score.
type Limits struct {
	// MaxParams is the most parameters read from one request (query and body together).
	MaxParams int
	// MaxDepth is the deepest JSON nesting followed.
	MaxDepth int
	// MaxKeyBytes is the longest parameter name kept; a longer one is named "{long}".
	MaxKeyBytes int
	// MaxQueryBytes and MaxBodyBytes are the most bytes of the query and of the body read.
	MaxQueryBytes, MaxBodyBytes int
}

// param is one parameter found by the parser.
type param struct {
	where Where
	// key is where byte + name: the map key of the parameter's model. It points into the
	// parser's buffer and is valid until the next call of next.
	key []byte
	// raw is the value as it appears in the request: percent-encoded for query and form,
	// with JSON escapes for a JSON string, the literal for other JSON scalars.
	raw    string
	absent bool // a key without '=' in a query or form body
	json   bool // raw is a JSON string's content (escapes to decode)
	plain  bool // raw is a multipart field's bytes as sent ('+' is not a space)
}

// name returns the parameter's display name.
func (p *param) name() []byte { return p.key[1:] }

// parser reads the parameters of a request one at a time, without allocating once its
// buffers have grown. It is reused across requests.
type parser struct {
	lim Limits

	query           string // rest of the query to read
	form            string // rest of the form body to read
	body            string // the JSON body
	pos             int    // position in body
	jsonOn, started bool

	stack []byte // JSON containers: '{' or '['
	segs  []int  // length of key at each depth (before the segment of that depth)
	comma []bool // a value was read at this depth: a ',' or the closing bracket comes next

	key      []byte
	count    int
	overflow bool
	bad      bool // malformed JSON or multipart, or a body that is not what its content type says

	parts []mpField // the fields of a multipart body, read at reset
}

// mpField is one field of a multipart/form-data body: its name and its value (a file part's
// file name: its content is not read).
type mpField struct{ name, value string }

// reset prepares p for a request.
func (p *parser) reset(lim Limits, query, body string, ct bodyType) {
	p.lim = lim
	p.count, p.overflow, p.bad = 0, false, false
	if len(query) > lim.MaxQueryBytes {
		query, p.overflow = query[:lim.MaxQueryBytes], true
	}
	if len(body) > lim.MaxBodyBytes {
		body, p.overflow = body[:lim.MaxBodyBytes], true
	}
	p.query, p.form, p.body, p.pos, p.jsonOn, p.started = query, "", "", 0, false, false
	p.stack, p.segs, p.comma, p.parts = p.stack[:0], p.segs[:0], p.comma[:0], p.parts[:0]
	if body == "" {
		return
	}
	// The body is read as what it is, not only as what its content type says: a workload
	// chooses its content type, and a JSON document sent as a form, or form fields sent as
	// text/plain, must not go uninspected. A body that is another format than its type
	// says is read as that format and marked bad, which the models score as they score a
	// malformed body (as rare as it was while the scope learned).
	sniffed := sniffBody(body)
	switch {
	case ct.kind == bodyMultipart && p.multipart(body, ct.boundary):
	case ct.kind == bodyMultipart:
		p.bad = true
		if sniffed == bodyForm || sniffed == bodyJSON {
			p.start(sniffed, body)
		}
	case ct.kind == bodyForm && sniffed == bodyJSON, ct.kind == bodyJSON && sniffed == bodyForm:
		p.bad = true
		p.start(sniffed, body)
	case ct.kind == bodyForm || ct.kind == bodyJSON:
		p.start(ct.kind, body)
	case sniffed == bodyMultipart:
		p.bad = true
		if !p.multipart(body, "") {
			p.parts = p.parts[:0]
		}
	case sniffed != bodyNone:
		p.bad = true
		p.start(sniffed, body)
	}
}

// start reads body as a form or a JSON document.
func (p *parser) start(kind bodyKind, body string) {
	switch kind {
	case bodyForm:
		p.form = body
	case bodyJSON:
		p.body, p.jsonOn = body, true
	}
}

// multipart reads the fields of a multipart/form-data body into p.parts: at most
// Limits.MaxParams of them, the values of text fields and the file names of file parts (never
// a file's content). Without boundary, the boundary is taken from the body's first line. It
// reports whether the body is multipart; a body that breaks off is marked bad.
func (p *parser) multipart(body, boundary string) bool {
	if boundary == "" {
		line, _, _ := strings.Cut(body, "\n")
		line = strings.TrimRight(line, "\r")
		if len(line) < 3 || !strings.HasPrefix(line, "--") || len(line) > 72 {
			return false
		}
		boundary = line[2:]
	}
	if !strings.Contains(body, "--"+boundary) {
		return false
	}
	mr := multipart.NewReader(strings.NewReader(body), boundary)
	for {
		// NextPart undoes a quoted-printable transfer encoding: a value is judged by what
		// it says.
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			p.bad = true
			break
		}
		if len(p.parts) >= p.lim.MaxParams {
			p.overflow = true
			break
		}
		f := mpField{name: part.FormName()}
		// A file's name as sent (Part.FileName would strip its directories: "../../x" is
		// judged as it is).
		if file, hasFile := dispositionParam(part, "filename"); hasFile {
			f.value = file
		} else {
			var b strings.Builder
			if _, err := io.Copy(&b, io.LimitReader(part, int64(p.lim.MaxBodyBytes))); err != nil {
				p.bad = true
			}
			f.value = b.String()
		}
		p.parts = append(p.parts, f)
	}
	return true
}

// dispositionParam returns a parameter of a part's Content-Disposition.
func dispositionParam(part *multipart.Part, name string) (string, bool) {
	_, params, err := mime.ParseMediaType(part.Header.Get("Content-Disposition"))
	if err != nil {
		return "", false
	}
	v, ok := params[name]
	return v, ok
}

// sniffBody says what a body looks like: a JSON document (it starts with '{' or '[' after
// white space), a multipart body (a first line "--boundary"), a form (it starts with a name
// and '='), or none of these.
func sniffBody(b string) bodyKind {
	t := strings.TrimLeft(b, " \t\r\n")
	if t != "" && (t[0] == '{' || t[0] == '[') {
		return bodyJSON
	}
	if strings.HasPrefix(b, "--") {
		return bodyMultipart
	}
	for i := 0; i < len(b) && i <= 64; i++ {
		c := b[i]
		switch {
		case c == '=':
			if i > 0 {
				return bodyForm
			}
			return bodyNone
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '_', c == '-', c == '.', c == '[', c == ']', c == '%', c == '+':
		default:
			return bodyNone
		}
	}
	return bodyNone
}

// next returns the next parameter, or false when there are no more (or a cap was reached).
func (p *parser) next(out *param) bool {
	if p.count >= p.lim.MaxParams {
		if p.query != "" || p.form != "" || (p.jsonOn && p.pos < len(p.body)) {
			p.overflow = true
		}
		return false
	}
	for p.query != "" {
		var kv string
		kv, p.query, _ = strings.Cut(p.query, "&")
		if kv != "" {
			p.count++
			p.formParam(out, InQuery, kv)
			return true
		}
	}
	for p.form != "" {
		var kv string
		kv, p.form, _ = strings.Cut(p.form, "&")
		if kv != "" {
			p.count++
			p.formParam(out, InForm, kv)
			return true
		}
	}
	if len(p.parts) > 0 {
		f := p.parts[0]
		p.parts = p.parts[1:]
		p.count++
		*out = param{where: InForm, raw: f.value, plain: true}
		p.key = append(append(p.key[:0], byte(InForm)), "body."...)
		start := len(p.key)
		p.key = append(p.key, f.name...)
		p.key = templateKey(p.key, start, p.lim.MaxKeyBytes)
		out.key = p.key
		return true
	}
	if p.jsonOn && p.jsonNext(out) {
		p.count++
		return true
	}
	return false
}

// formParam fills out from one key=value pair of a query or form body.
func (p *parser) formParam(out *param, w Where, kv string) {
	k, v, ok := strings.Cut(kv, "=")
	*out = param{where: w, raw: v, absent: !ok}
	p.key = append(p.key[:0], byte(w))
	if w == InForm {
		p.key = append(p.key, "body."...)
	}
	start := len(p.key)
	p.key, _ = decodeInto(p.key, k, true)
	p.key = templateKey(p.key, start, p.lim.MaxKeyBytes)
	out.key = p.key
}

// templateKey replaces the name segment key[start:] by "{id}" when it is a number, a UUID or
// a long hex token (a key that names a record, not a field), and by "{long}" when it is longer
// than max bytes, so that names stay few and short.
func templateKey(key []byte, start, max int) []byte {
	seg := key[start:]
	switch {
	case len(seg) == 0:
	case isNumber(seg) || len(seg) == 36 && isUUID(seg) || len(seg) >= 16 && isHex(seg):
		key = append(key[:start], "{id}"...)
	case len(seg) > max:
		key = append(key[:start], "{long}"...)
	}
	return key
}

// jsonNext reads the JSON body up to its next scalar. A malformed or truncated document stops
// the reading (p.bad); nesting deeper than MaxDepth stops it as an overflow.
func (p *parser) jsonNext(out *param) bool {
	b := p.body
	for {
		p.skipSpace()
		if p.pos >= len(b) {
			if len(p.stack) > 0 || !p.started {
				p.bad = p.bad || len(p.stack) > 0
			}
			p.jsonOn = false
			return false
		}
		c := b[p.pos]
		d := len(p.stack)
		if d == 0 && p.started {
			p.bad, p.jsonOn = true, false // trailing bytes after the document
			return false
		}
		if d > 0 {
			top := p.stack[d-1]
			if p.comma[d-1] {
				switch {
				case c == ',':
					p.pos++
					p.comma[d-1] = false
					continue
				case c == '}' && top == '{', c == ']' && top == '[':
					p.pos++
					p.pop()
					continue
				}
				return p.fail()
			}
			if c == '}' && top == '{' || c == ']' && top == '[' {
				// An empty container (or a trailing comma, which is tolerated).
				p.pos++
				p.pop()
				continue
			}
			p.key = p.key[:p.segs[d-1]]
			if top == '{' {
				if c != '"' {
					return p.fail()
				}
				raw, ok := p.scanString()
				if !ok {
					return p.fail()
				}
				p.skipSpace()
				if p.pos >= len(b) || b[p.pos] != ':' {
					return p.fail()
				}
				p.pos++
				p.key = append(p.key, '.')
				start := len(p.key)
				p.key = unescapeJSON(p.key, raw)
				p.key = templateKey(p.key, start, p.lim.MaxKeyBytes)
			} else {
				p.key = append(p.key, "[]"...)
			}
			p.comma[d-1] = true
			p.skipSpace()
			if p.pos >= len(b) {
				return p.fail()
			}
			c = b[p.pos]
		} else {
			p.started = true
			p.key = append(p.key[:0], byte(InJSON))
			p.key = append(p.key, "body"...)
		}
		switch c {
		case '{', '[':
			if len(p.stack) >= p.lim.MaxDepth {
				p.overflow, p.jsonOn = true, false
				return false
			}
			p.pos++
			p.stack = append(p.stack, c)
			p.segs = append(p.segs, len(p.key))
			p.comma = append(p.comma, false)
			continue
		case '"':
			raw, ok := p.scanString()
			if !ok {
				return p.fail()
			}
			*out = param{where: InJSON, key: p.key, raw: raw, json: true}
			return true
		}
		start := p.pos
		for p.pos < len(b) {
			c := b[p.pos]
			if c == ',' || c == '}' || c == ']' || c == ' ' || c == '\t' || c == '\n' || c == '\r' {
				break
			}
			p.pos++
		}
		if p.pos == start {
			return p.fail()
		}
		*out = param{where: InJSON, key: p.key, raw: b[start:p.pos]}
		return true
	}
}

func (p *parser) fail() bool {
	p.bad, p.jsonOn = true, false
	return false
}

func (p *parser) pop() {
	n := len(p.stack) - 1
	p.stack, p.segs, p.comma = p.stack[:n], p.segs[:n], p.comma[:n]
}

func (p *parser) skipSpace() {
	for p.pos < len(p.body) {
		switch p.body[p.pos] {
		case ' ', '\t', '\n', '\r':
			p.pos++
		default:
			return
		}
	}
}

// scanString reads a JSON string at p.pos (the opening quote) and returns its content with
// escapes left in.
func (p *parser) scanString() (string, bool) {
	b := p.body
	start := p.pos + 1
	for i := start; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			p.pos = i + 1
			return b[start:i], true
		}
	}
	p.pos = len(b)
	return "", false
}

// unescapeJSON appends the content of a JSON string with its escapes decoded. A \u escape is
// written as UTF-8 (surrogate halves and bad escapes as the replacement character's bytes
// would be written by encoding/json: here as U+FFFD).
func unescapeJSON(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\\' || i+1 >= len(s) {
			dst = append(dst, c)
			continue
		}
		i++
		switch s[i] {
		case 'n':
			dst = append(dst, '\n')
		case 't':
			dst = append(dst, '\t')
		case 'r':
			dst = append(dst, '\r')
		case 'b':
			dst = append(dst, '\b')
		case 'f':
			dst = append(dst, '\f')
		case 'u':
			r := rune(-1)
			if i+4 < len(s) {
				r = 0
				for _, h := range []byte(s[i+1 : i+5]) {
					v, ok := unhex(h)
					if !ok {
						r = -1
						break
					}
					r = r<<4 | rune(v)
				}
			}
			if r < 0 {
				dst = append(dst, '\\', 'u')
				continue
			}
			i += 4
			if 0xd800 <= r && r < 0xe000 {
				r = 0xfffd
			}
			dst = appendRune(dst, r)
		default:
			dst = append(dst, s[i]) // \" \\ \/ and anything else
		}
	}
	return dst
}

func appendRune(dst []byte, r rune) []byte {
	switch {
	case r < 0x80:
		return append(dst, byte(r))
	case r < 0x800:
		return append(dst, 0xc0|byte(r>>6), 0x80|byte(r)&0x3f)
	}
	return append(dst, 0xe0|byte(r>>12), 0x80|byte(r>>6)&0x3f, 0x80|byte(r)&0x3f)
}

// bodyKind is a body's format.
type bodyKind uint8

const (
	bodyNone bodyKind = iota
	bodyForm
	bodyJSON
	bodyMultipart
)

// bodyType is what a content type says of a body: its format and, for multipart, its
// boundary.
type bodyType struct {
	kind     bodyKind
	boundary string
}

// bodyTypeOf reads a content-type header value: form-encoded, JSON (application/json and
// any +json type), multipart/form-data, or none of these.
func bodyTypeOf(ct string) bodyType {
	mt, rest, _ := strings.Cut(ct, ";")
	mt = strings.TrimSpace(mt)
	switch {
	case strings.EqualFold(mt, "application/x-www-form-urlencoded"):
		return bodyType{kind: bodyForm}
	case strings.EqualFold(mt, "application/json"):
		return bodyType{kind: bodyJSON}
	case len(mt) > 17 && strings.EqualFold(mt[:12], "application/") && strings.EqualFold(mt[len(mt)-5:], "+json"):
		return bodyType{kind: bodyJSON}
	case strings.EqualFold(mt, "multipart/form-data"):
		// Only multipart needs the parameters parsed (and so allocates).
		_, params, _ := mime.ParseMediaType("multipart/form-data;" + rest)
		return bodyType{kind: bodyMultipart, boundary: params["boundary"]}
	}
	return bodyType{}
}
