package param

import (
	"bytes"
	"math/bits"
	"unicode/utf8"
)

// Char is a character class: one bit of a value's character set. Letters, digits, space,
// control bytes, non-ASCII and invalid UTF-8 are one class each; every ASCII punctuation
// byte is a class of its own, because those are what injections are made of (a quote, a
// parenthesis, '<', a semicolon) and what ordinary values use only a few of.
type Char uint8

const (
	CharLower   Char = iota // a-z
	CharUpper               // A-Z
	CharDigit               // 0-9
	CharSpace               // ' ' (and '+' in form encoding, which decodes to it)
	CharControl             // bytes below 0x20 and 0x7f, NUL included
	CharUnicode             // a character beyond ASCII: valid UTF-8, or a Latin-1 (Windows-1252) byte on its own
	CharBadUTF8             // bytes that are neither: malformed UTF-8 (overlong '/' encodings and the like), C1 gaps
	charPunct               // the 32 ASCII punctuation bytes follow, in byte order
	// CharDotDot is not a character but a sequence: ".." next to a '/' or '\\' (a step up
	// a path), which a value may hold where '.' and '/' each are ordinary.
	CharDotDot = charPunct + Char(len(punct))
	// CharQuoted is not a character either: the value is a JSON string, not a number,
	// true, false or null (a type the backend may read differently: "1" where 1 was sent).
	CharQuoted = CharDotDot + 1
)

// NumChars is the number of character classes; a Set of classes fits in a uint64.
const NumChars = int(CharQuoted) + 1

const punct = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"

// charOf maps an ASCII byte to its class.
var charOf = func() (t [128]Char) {
	for c := range 128 {
		switch {
		case 'a' <= c && c <= 'z':
			t[c] = CharLower
		case 'A' <= c && c <= 'Z':
			t[c] = CharUpper
		case '0' <= c && c <= '9':
			t[c] = CharDigit
		case c == ' ':
			t[c] = CharSpace
		case c < 0x20 || c == 0x7f:
			t[c] = CharControl
		}
	}
	for i := 0; i < len(punct); i++ {
		t[punct[i]] = charPunct + Char(i)
	}
	return t
}()

// String names the class: "lower", "upper", "digit", "space", "control", "unicode",
// "bad-utf8", or the punctuation byte itself.
func (c Char) String() string {
	switch c {
	case CharLower:
		return "lower"
	case CharUpper:
		return "upper"
	case CharDigit:
		return "digit"
	case CharSpace:
		return "space"
	case CharControl:
		return "control"
	case CharUnicode:
		return "unicode"
	case CharBadUTF8:
		return "bad-utf8"
	case CharDotDot:
		return "dot-dot"
	case CharQuoted:
		return "json-string"
	}
	if i := int(c - charPunct); c >= charPunct && i < len(punct) {
		return punct[i : i+1]
	}
	return "?"
}

// Chars is a set of character classes.
type Chars uint64

// Has reports whether c is in the set.
func (cs Chars) Has(c Char) bool { return cs&(1<<c) != 0 }

// Len returns the number of classes in the set.
func (cs Chars) Len() int { return bits.OnesCount64(uint64(cs)) }

// String lists the classes, e.g. "lower digit - _".
func (cs Chars) String() string {
	out := ""
	for c := Char(0); int(c) < NumChars; c++ {
		if cs.Has(c) {
			if out != "" {
				out += " "
			}
			out += c.String()
		}
	}
	return out
}

// Kind is the lexical kind of a whole value.
type Kind uint8

const (
	KindEmpty  Kind = iota // ""
	KindNumber             // 42, -7, 3.14, 1e9
	KindHex                // 8 or more hex digits mixing letters and digits: 5f2a9c0d
	KindUUID               // 550e8400-e29b-41d4-a716-446655440000
	KindBase64             // a token of 16 or more base64 or base64url bytes mixing cases and digits
	KindWord               // letters, digits and - _ . only: ids, names, enums, versions
	KindURL                // no spaces, with '/' or ':' (paths, URLs, times)
	KindText               // letters with spaces between them: free text
	KindJSON               // starts with '{' or '[' and ends with the matching bracket
	KindOther              // anything else
	NumKinds   = int(KindOther) + 1
)

var kindNames = [NumKinds]string{"empty", "number", "hex", "uuid", "base64", "word", "url", "text", "json", "other"}

// String names the kind.
func (k Kind) String() string {
	if int(k) < NumKinds {
		return kindNames[k]
	}
	return "?"
}

// Value is what the models read of one parameter value: never the value itself.
type Value struct {
	// Chars is the character set of the value after decoding.
	Chars Chars
	// Kind is its lexical kind.
	Kind Kind
	// Len is the decoded length in bytes (of the whole value, also beyond what was inspected).
	Len int
	// Hash identifies the decoded value (of its inspected part) in the distinct-value sketch.
	Hash uint64
	// First is the class of the first byte (meaningless for an empty value).
	First Char
	// Absent is set for a key without '=' in a query or form body ("?debug").
	Absent bool
}

// unhex returns the value of a hex digit and whether c is one.
func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// maxDecodeRounds bounds how many times a value is percent-decoded: a value encoded twice or
// three times ("%2527" for a quote) is judged by what it finally says.
const maxDecodeRounds = 3

// decodeInto appends to dst the percent-decoding of s (with '+' as space when form is set) and
// returns the result and whether anything was decoded. A '%' not followed by two hex digits
// stays as it is.
func decodeInto(dst []byte, s string, form bool) ([]byte, bool) {
	changed := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '%' && i+2 < len(s):
			hi, ok1 := unhex(s[i+1])
			lo, ok2 := unhex(s[i+2])
			if ok1 && ok2 {
				dst = append(dst, hi<<4|lo)
				i += 2
				changed = true
				continue
			}
		case c == '+' && form:
			dst = append(dst, ' ')
			changed = true
			continue
		}
		dst = append(dst, c)
	}
	return dst, changed
}

// decodeInPlace percent-decodes b in place ('+' is left alone: only the first round of a form
// value decodes it) and reports whether it changed.
func decodeInPlace(b []byte) ([]byte, bool) {
	w := 0
	changed := false
	for i := 0; i < len(b); i++ {
		c := b[i]
		if c == '%' && i+2 < len(b) {
			hi, ok1 := unhex(b[i+1])
			lo, ok2 := unhex(b[i+2])
			if ok1 && ok2 {
				c = hi<<4 | lo
				i += 2
				changed = true
			}
		}
		b[w] = c
		w++
	}
	return b[:w], changed
}

// analyse fills v from the decoded bytes b of a value; total is the decoded length of the
// whole value (at least len(b)).
//
// Bytes beyond ASCII that are not valid UTF-8 are read as the page's legacy charset would
// have written them: a form in an ISO-8859-1 page sends "é" as the one byte 0xE9, and
// browsers send Windows-1252 for it, so such a byte on its own is a character (CharUnicode,
// as its UTF-8 form is). A lead byte followed by continuation bytes that do not make a valid
// sequence (the overlong "%c0%af" for '/', a surrogate) is malformed UTF-8, and so are the
// five bytes Windows-1252 leaves undefined (0x81, 0x8D, 0x8F, 0x90, 0x9D: %90 is a NOP sled):
// CharBadUTF8.
func analyse(b []byte, total int, seed uint64) Value {
	v := Value{Len: total, Hash: hashBytes(seed, b)}
	var cs Chars
	for i := 0; i < len(b); {
		if c := b[i]; c < utf8.RuneSelf {
			cs |= 1 << charOf[c]
			i++
			continue
		}
		c, n := classAt(b, i)
		cs |= 1 << c
		i += n
	}
	if cs.Has(charOf['.']) && hasDotDot(b) {
		cs |= 1 << CharDotDot
	}
	v.Chars = cs
	v.Kind = kindOf(b, cs)
	if len(b) > 0 {
		v.First, _ = classAt(b, 0)
	}
	return v
}

// classAt returns the class of the character at b[i] and its length in bytes.
func classAt(b []byte, i int) (Char, int) {
	c := b[i]
	if c < utf8.RuneSelf {
		return charOf[c], 1
	}
	r, n := utf8.DecodeRune(b[i:])
	if r != utf8.RuneError || n > 1 {
		return CharUnicode, n
	}
	// Not valid UTF-8. A lead byte with continuation bytes after it is a malformed sequence:
	// one class for the lead byte and the continuation bytes that follow it.
	if c >= 0xc0 {
		j := i + 1
		for j < len(b) && j-i < 4 && b[j]&0xc0 == 0x80 {
			j++
		}
		if j > i+1 {
			return CharBadUTF8, j - i
		}
	}
	switch c {
	case 0x81, 0x8d, 0x8f, 0x90, 0x9d:
		return CharBadUTF8, 1
	}
	return CharUnicode, 1
}

// hasDotDot reports whether b steps up a path: ".." at a '/' or '\\' or at an end of b, next
// to at least one separator ("../x", "a/..", "..\\x").
func hasDotDot(b []byte) bool {
	for i := 0; i+1 < len(b); i++ {
		if b[i] != '.' || b[i+1] != '.' {
			continue
		}
		before := i == 0 || b[i-1] == '/' || b[i-1] == '\\'
		after := i+2 == len(b) || b[i+2] == '/' || b[i+2] == '\\'
		sep := i > 0 && (b[i-1] == '/' || b[i-1] == '\\') || i+2 < len(b) && (b[i+2] == '/' || b[i+2] == '\\')
		if before && after && sep {
			return true
		}
	}
	return false
}

// foldWide rewrites, in place, the full-width forms of ASCII (U+FF01..U+FF5E, "＜" for '<')
// and the ideographic space (U+3000) as the ASCII they stand for, so that a lookalike is
// classed as what a lenient backend may read it as. It returns the shortened b.
func foldWide(b []byte) []byte {
	if bytes.IndexByte(b, 0xef) < 0 && bytes.IndexByte(b, 0xe3) < 0 {
		return b
	}
	w := 0
	for i := 0; i < len(b); {
		c := b[i]
		if c == 0xef && i+2 < len(b) && (b[i+1] == 0xbc && b[i+2] >= 0x81 && b[i+2] <= 0xbf || b[i+1] == 0xbd && b[i+2] >= 0x80 && b[i+2] <= 0x9e) {
			r := rune(b[i+1]&0x3f)<<6 | rune(b[i+2]&0x3f) // the low 12 bits of U+FFxx
			b[w] = byte(r - 0xf00 + 0x20)                 // U+FF01 → '!'
			w, i = w+1, i+3
			continue
		}
		if c == 0xe3 && i+2 < len(b) && b[i+1] == 0x80 && b[i+2] == 0x80 {
			b[w] = ' '
			w, i = w+1, i+3
			continue
		}
		b[w] = c
		w, i = w+1, i+1
	}
	return b[:w]
}

// charsOf returns the set of the classes of the ASCII bytes in s.
func charsOf(s string) (cs Chars) {
	for i := 0; i < len(s); i++ {
		cs |= 1 << charOf[s[i]]
	}
	return cs
}

var (
	alnum      = charsOf("aA0")
	wordChars  = charsOf("aA0-._")
	b64Chars   = charsOf("aA0+/=-_")
	b64Padding = charsOf("=")
	urlMarks   = charsOf("/:")
	urlChars   = charsOf("aA0-._/:~%&=,+?;@")
	textChars  = alnum | charsOf(" ") | 1<<CharUnicode
	// textPunct are the punctuation bytes of prose.
	textPunct = charsOf(".,!?-:'\"()&/")
)

// kindOf classifies a decoded value.
func kindOf(b []byte, cs Chars) Kind {
	n := len(b)
	switch {
	case n == 0:
		return KindEmpty
	case isNumber(b):
		return KindNumber
	case n == 36 && isUUID(b):
		return KindUUID
	case cs&^alnum == 0 && n >= 8 && isHex(b) && cs.Has(CharDigit):
		return KindHex
	case cs&^b64Chars == 0 && n >= 16 && cs&alnum == alnum && (cs&b64Padding == 0 || b[n-1] == '='):
		return KindBase64
	case cs&^wordChars == 0:
		return KindWord
	case (b[0] == '{' && b[n-1] == '}') || (b[0] == '[' && b[n-1] == ']'):
		return KindJSON
	case cs&urlMarks != 0 && cs&^urlChars == 0:
		return KindURL
	case cs.Has(CharSpace) && cs&(1<<CharLower|1<<CharUpper|1<<CharUnicode) != 0 && cs&^(textChars|textPunct) == 0:
		return KindText
	}
	return KindOther
}

func isNumber(b []byte) bool {
	i := 0
	if b[0] == '-' || b[0] == '+' {
		i++
	}
	digits, dot := 0, false
	for ; i < len(b); i++ {
		switch c := b[i]; {
		case '0' <= c && c <= '9':
			digits++
		case c == '.' && !dot:
			dot = true
		default:
			return false
		}
	}
	return digits > 0
}

func isHex(b []byte) bool {
	for _, c := range b {
		if _, ok := unhex(c); !ok {
			return false
		}
	}
	return true
}

func isUUID(b []byte) bool {
	for i, c := range b {
		if i == 8 || i == 13 || i == 18 || i == 23 {
			if c != '-' {
				return false
			}
			continue
		}
		if _, ok := unhex(c); !ok {
			return false
		}
	}
	return true
}

// The value hash follows wyhash's 64×64→128-bit multiply-and-fold: fast and well mixed, not
// cryptographic (see Config.Seed).
const (
	k1 = 0xa0761d6478bd642f
	k2 = 0xe7037ed1a0b428db
	k3 = 0x8ebc6af09c88c6e3
)

func mix(a, b uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	return hi ^ lo
}

func hashBytes(seed uint64, b []byte) uint64 {
	n := len(b)
	h := mix(seed^k1, k2)
	for len(b) >= 8 {
		w := uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
			uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56
		h = mix(h^w^k2, k1)
		b = b[8:]
	}
	var w uint64
	for i := len(b) - 1; i >= 0; i-- {
		w = w<<8 | uint64(b[i])
	}
	h = mix(h^w^k2, k1)
	return mix(h^uint64(n)^k3, k1)
}
