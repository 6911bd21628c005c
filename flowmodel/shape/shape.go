// Package shape describes what a request looks like apart from its values, and counts how
// often each such shape occurs.
//
// The shape of a request is its method, its path template (numbers, UUIDs, hex and base64
// tokens, e-mail addresses and dates replaced by placeholders such as {id}), the set of its
// query keys, the set of its header names (volatile ones such as x-request-id dropped; header
// values are never read), its media type and a size class of its body. A Shaper reduces a
// Request to a 64-bit Key without allocating, hashing while it templates; Shape returns the
// same shape as text for display and approval, and Parse reads that text back:
//
//	POST /v1/charges/{id} q:[expand] h:[authorization,content-type] ct:application/json b:1k
//
// A Table counts the shapes seen for one (service, destination host) pair on event time,
// with a cap, and scores a shape's novelty and rarity.
package shape

import (
	"errors"
	"fmt"
	"math/bits"
	"slices"
	"strconv"
	"strings"
)

// Request is what a Shaper reads of one HTTP request. A Shaper never retains it.
type Request struct {
	Method string
	// Path is the request target as sent: path, query and possibly a fragment.
	Path string
	// HeaderKeys are the request's header names; pseudo-headers (":path") are ignored.
	HeaderKeys []string
	// ContentType is the content-type header value; only its media type is used.
	ContentType string
	// BodyBytes is the body size; negative when unknown.
	BodyBytes int64
}

// Key identifies a shape. Keys are stable: the same shape and seed give the same key in every
// process and release, so keys may be persisted.
type Key uint64

// String returns the key as 16 hexadecimal digits.
func (k Key) String() string {
	const digits = "0123456789abcdef"
	var b [16]byte
	for i := range b {
		b[i] = digits[k>>(60-4*i)&15]
	}
	return string(b[:])
}

// ParseKey parses the output of Key.String.
func ParseKey(s string) (Key, error) {
	if len(s) != 16 {
		return 0, fmt.Errorf("shape key %q: want 16 hex digits", s)
	}
	v, err := strconv.ParseUint(s, 16, 64)
	if err != nil {
		return 0, fmt.Errorf("shape key %q: want 16 hex digits", s)
	}
	return Key(v), nil
}

// SizeClass is a body size rounded down to a power of four: class 0 is an empty body, class
// k ≥ 1 holds sizes in [4^(k-1), 4^k). Powers of four rather than two keep bodies of one kind
// (a JSON document whose size varies by ±50%) in one or two classes.
type SizeClass int8

// SizeUnknown is the class of a body of unknown size.
const SizeUnknown SizeClass = -1

// SizeOf returns the class of a body of n bytes; negative n is unknown.
func SizeOf(n int64) SizeClass {
	if n < 0 {
		return SizeUnknown
	}
	return SizeClass((bits.Len64(uint64(n)) + 1) / 2)
}

// Min returns the smallest size in the class (-1 for SizeUnknown).
func (c SizeClass) Min() int64 {
	switch {
	case c < 0:
		return -1
	case c == 0:
		return 0
	}
	return 1 << (2 * (int(c) - 1))
}

const sizeUnits = " kmgtpe"

// String returns "-" for an unknown size, else the class's smallest size with a binary unit:
// "0", "1", "4", "16", "64", "256", "1k", "4k", ..., "256m", "1g".
func (c SizeClass) String() string {
	if c < 0 {
		return "-"
	}
	if c == 0 {
		return "0"
	}
	e := 2 * (int(c) - 1)
	s := strconv.Itoa(1 << (e % 10))
	if u := e / 10; u > 0 {
		s += sizeUnits[u : u+1]
	}
	return s
}

func parseSizeClass(s string) (SizeClass, error) {
	if s == "-" {
		return SizeUnknown, nil
	}
	e := 0
	if n := len(s); n > 1 {
		if u := strings.IndexByte(sizeUnits[1:], s[n-1]); u >= 0 {
			e = 10 * (u + 1)
			s = s[:n-1]
		}
	}
	v, err := strconv.ParseUint(s, 10, 16)
	if err != nil || v == 0 && (e > 0 || s != "0") {
		return 0, fmt.Errorf("bad size class %q", s)
	}
	if v == 0 {
		return 0, nil
	}
	if v&(v-1) != 0 || bits.TrailingZeros64(v)%2 != 0 || v > 256 {
		return 0, fmt.Errorf("bad size class %q: want 0, or 1, 4, 16, 64 or 256 with an optional unit k, m, g, t, p, e", s)
	}
	e += bits.TrailingZeros64(v)
	if e > 62 {
		return 0, fmt.Errorf("bad size class %q: too large", s)
	}
	return SizeClass(e/2 + 1), nil
}

// Shape is a request shape in its canonical text form. All strings are canonical: templated,
// lower-cased where case does not matter, with spaces, control bytes and (in lists) ',' '['
// ']' percent-encoded.
type Shape struct {
	// Method is the request method as sent ("" if there was none).
	Method string
	// Path is the path template, e.g. "/v1/charges/{id}".
	Path string
	// QueryKeys and HeaderKeys are sorted and without duplicates.
	QueryKeys  []string
	HeaderKeys []string
	// ContentType is the lower-case media type, without parameters ("" if none).
	ContentType string
	Size        SizeClass
}

// String returns the shape as one line of space-separated fields:
//
//	METHOD PATH q:[KEY,...] h:[NAME,...] ct:MEDIA-TYPE b:SIZE
//
// with "-" for an empty method or media type and an unknown size.
func (s Shape) String() string {
	var b strings.Builder
	b.Grow(len(s.Method) + len(s.Path) + len(s.ContentType) + 32 + 16*(len(s.QueryKeys)+len(s.HeaderKeys)))
	b.WriteString(orDash(s.Method))
	b.WriteByte(' ')
	b.WriteString(s.Path)
	b.WriteString(" q:[")
	b.WriteString(strings.Join(s.QueryKeys, ","))
	b.WriteString("] h:[")
	b.WriteString(strings.Join(s.HeaderKeys, ","))
	b.WriteString("] ct:")
	b.WriteString(orDash(s.ContentType))
	b.WriteString(" b:")
	b.WriteString(s.Size.String())
	return b.String()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// Parse reads the output of Shape.String. The shape is canonicalised as a Shaper would
// canonicalise a request, so a hand-written "GET /users/42 q:[] h:[] ct:- b:0" gives the
// shape of such requests (path "/users/{id}").
func Parse(text string) (Shape, error) {
	f := strings.Split(text, " ")
	if len(f) != 6 {
		return Shape{}, fmt.Errorf("shape %q: want 6 space-separated fields, got %d", clip(text), len(f))
	}
	var errs []error
	list := func(field, prefix string) []string {
		v, ok1 := strings.CutPrefix(field, prefix+"[")
		v, ok2 := strings.CutSuffix(v, "]")
		if !ok1 || !ok2 {
			errs = append(errs, fmt.Errorf("field %q: want %s[...]", clip(field), prefix))
			return nil
		}
		if v == "" {
			return nil
		}
		return strings.Split(v, ",")
	}
	s := Shape{Path: f[1]}
	if f[0] != "-" {
		s.Method = f[0]
	}
	s.QueryKeys = list(f[2], "q:")
	s.HeaderKeys = list(f[3], "h:")
	if ct, ok := strings.CutPrefix(f[4], "ct:"); !ok {
		errs = append(errs, fmt.Errorf("field %q: want ct:MEDIA-TYPE", clip(f[4])))
	} else if ct != "-" {
		s.ContentType = ct
	}
	if b, ok := strings.CutPrefix(f[5], "b:"); !ok {
		errs = append(errs, fmt.Errorf("field %q: want b:SIZE", clip(f[5])))
	} else if c, err := parseSizeClass(b); err != nil {
		errs = append(errs, err)
	} else {
		s.Size = c
	}
	if err := errors.Join(errs...); err != nil {
		return Shape{}, fmt.Errorf("shape %q: %w", clip(text), err)
	}
	return s.canonical(), nil
}

// canonical returns s with every field canonicalised (a no-op for a Shaper's output).
func (s Shape) canonical() Shape {
	o := sink{build: true}
	path, _ := splitPath(s.Path)
	out := newShape(&o, s.Method, path, s.ContentType, s.Size)
	for _, k := range s.QueryKeys {
		o.b = o.b[:0]
		segment(&o, k, &escList)
		if len(o.b) > 0 {
			out.QueryKeys = append(out.QueryKeys, string(o.b))
		}
	}
	for _, k := range s.HeaderKeys {
		o.b = o.b[:0]
		o.escaped(k, true)
		if len(o.b) > 0 {
			out.HeaderKeys = append(out.HeaderKeys, string(o.b))
		}
	}
	out.sortKeys()
	return out
}

// newShape returns the shape of size whose method, path template (of path, a path without
// query) and media type are the canonical forms of the raw values, built in o. Shaper.Shape
// and canonical share it, so that canonical is a no-op for a Shaper's output.
func newShape(o *sink, m, path, contentType string, size SizeClass) Shape {
	out := Shape{Size: size}
	method(o, m)
	out.Method = string(o.b)
	o.b = o.b[:0]
	templatePath(o, path)
	out.Path = string(o.b)
	o.b = o.b[:0]
	mediaType(o, contentType)
	out.ContentType = string(o.b)
	return out
}

// sortKeys sorts the query and header keys and drops duplicates.
func (s *Shape) sortKeys() {
	slices.Sort(s.QueryKeys)
	s.QueryKeys = slices.Compact(s.QueryKeys)
	slices.Sort(s.HeaderKeys)
	s.HeaderKeys = slices.Compact(s.HeaderKeys)
}

func clip(s string) string {
	if len(s) > 120 {
		return s[:120] + "..."
	}
	return s
}

// method writes the canonical method: escaped, and "-" (which the text form uses for "none")
// encoded as %2D.
func method(o *sink, m string) {
	if m == "-" {
		o.str("%2D")
		return
	}
	o.escaped(m, false)
}

// mediaType writes the canonical media type of a content-type value: parameters and
// surrounding blanks dropped, lower-cased, escaped.
func mediaType(o *sink, ct string) {
	if i := strings.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	ct = strings.Trim(ct, " \t")
	if ct == "-" {
		o.str("%2d")
		return
	}
	o.escaped(ct, true)
}
