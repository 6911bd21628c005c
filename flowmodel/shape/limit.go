package shape

import (
	"strings"
)

// Limits caps what one request contributes to its shape, so that no request, however large,
// makes a large shape: a shape's text is stored and shown, and a workload controls every
// byte of its requests. What is over a limit is dropped and summarised by one header name,
// ExcessPrefix followed by a hash of what was dropped: two requests that differ only past
// the limits still have different shapes, and nothing of the excess is kept raw.
//
// The zero value of a field means its default. A shape built within the limits has a text
// form (Shape.String) of at most MaxText bytes.
type Limits struct {
	// MaxSegments caps the path segments kept. Default 32.
	MaxSegments int
	// MaxQueryKeys and MaxHeaderKeys cap the query keys and header names kept. Defaults 32
	// and 64.
	MaxQueryKeys, MaxHeaderKeys int
	// MaxNameBytes caps one query key or header name; longer ones are dropped. Default 64.
	MaxNameBytes int
	// MaxBytes caps the bytes of the path, query keys and header names kept, together.
	// Default 2048.
	MaxBytes int
	// MaxMethodBytes and MaxContentTypeBytes cap the method and the content type. Defaults
	// 32 and 128.
	MaxMethodBytes, MaxContentTypeBytes int
}

// Default limits for zero Limits fields.
const (
	DefaultMaxSegments         = 32
	DefaultMaxQueryKeys        = 32
	DefaultMaxHeaderKeys       = 64
	DefaultMaxNameBytes        = 64
	DefaultMaxBytes            = 2048
	DefaultMaxMethodBytes      = 32
	DefaultMaxContentTypeBytes = 128
)

// MaxText bounds the text form of a shape built within the default limits: every byte kept
// may be percent-encoded (three bytes), a path segment may become a placeholder of up to
// eight bytes, plus the separators, the excess header name and the fixed fields.
const MaxText = 3*(DefaultMaxBytes+DefaultMaxMethodBytes+DefaultMaxContentTypeBytes) +
	8*DefaultMaxSegments + DefaultMaxQueryKeys + DefaultMaxHeaderKeys + len(ExcessPrefix) + 16 + 64

// ExcessPrefix starts the header name that summarises what a request had over the limits:
// "meshguard-excess-" and 16 hexadecimal digits of a hash of the dropped part.
const ExcessPrefix = "meshguard-excess-"

// Check applies defaults to zero fields; negative fields are an error.
func (l Limits) Check() (Limits, error) {
	for _, f := range []struct {
		v   *int
		def int
	}{
		{&l.MaxSegments, DefaultMaxSegments}, {&l.MaxQueryKeys, DefaultMaxQueryKeys},
		{&l.MaxHeaderKeys, DefaultMaxHeaderKeys}, {&l.MaxNameBytes, DefaultMaxNameBytes},
		{&l.MaxBytes, DefaultMaxBytes}, {&l.MaxMethodBytes, DefaultMaxMethodBytes},
		{&l.MaxContentTypeBytes, DefaultMaxContentTypeBytes},
	} {
		if *f.v == 0 {
			*f.v = f.def
		}
		if *f.v < 0 {
			return l, errNegativeLimit
		}
	}
	return l, nil
}

type limitError string

func (e limitError) Error() string { return string(e) }

const errNegativeLimit = limitError("shape limits must be positive")

// Within reports whether r is within the limits l (which must have been checked). It does
// not allocate.
func (l *Limits) Within(r *Request) bool {
	if len(r.Method) > l.MaxMethodBytes || len(r.ContentType) > l.MaxContentTypeBytes {
		return false
	}
	path, query := splitPath(r.Path)
	total := len(path)
	if total > l.MaxBytes || strings.Count(path, "/") > l.MaxSegments {
		return false
	}
	n := 0
	for query != "" {
		var k string
		if k, query = nextQueryKey(query); k == "" {
			continue
		}
		n++
		total += len(k)
		if n > l.MaxQueryKeys || len(k) > l.MaxNameBytes || total > l.MaxBytes {
			return false
		}
	}
	if len(r.HeaderKeys) > l.MaxHeaderKeys {
		return false
	}
	for _, h := range r.HeaderKeys {
		total += len(h)
		if len(h) > l.MaxNameBytes || total > l.MaxBytes {
			return false
		}
	}
	return true
}

// Cut returns r cut to the limits l (which must have been checked) and true when anything
// was cut; r itself when it is within them. What is cut is summarised by a header name
// ExcessPrefix+hash appended to the header names kept. Only a request over the limits
// allocates.
func (l *Limits) Cut(r *Request) (Request, bool) {
	if l.Within(r) {
		return *r, false
	}
	x := excess{h: fnvOffset}
	out := Request{BodyBytes: r.BodyBytes}
	out.Method = x.cut(r.Method, l.MaxMethodBytes)
	out.ContentType = x.cut(r.ContentType, l.MaxContentTypeBytes)
	path, query := splitPath(r.Path)
	budget := l.MaxBytes
	// The path: at most MaxSegments segments and the byte budget.
	keep, segs := 0, 0
	for i := 0; i < len(path) && i < budget; i++ {
		if path[i] == '/' {
			if segs++; segs > l.MaxSegments {
				break
			}
		}
		keep = i + 1
	}
	x.add(path[keep:])
	path = path[:keep]
	budget -= len(path)
	var b strings.Builder
	b.Grow(len(path) + 1 + min(len(query), budget))
	b.WriteString(path)
	n := 0
	for query != "" {
		var k string
		if k, query = nextQueryKey(query); k == "" {
			continue
		}
		if n >= l.MaxQueryKeys || len(k) > l.MaxNameBytes || len(k) > budget {
			x.add(k)
			continue
		}
		if n == 0 {
			b.WriteByte('?')
		} else {
			b.WriteByte('&')
		}
		b.WriteString(k)
		n++
		budget -= len(k)
	}
	out.Path = b.String()
	out.HeaderKeys = make([]string, 0, min(len(r.HeaderKeys), l.MaxHeaderKeys)+1)
	for _, h := range r.HeaderKeys {
		if len(out.HeaderKeys) >= l.MaxHeaderKeys || len(h) > l.MaxNameBytes || len(h) > budget {
			x.add(h)
			continue
		}
		out.HeaderKeys = append(out.HeaderKeys, h)
		budget -= len(h)
	}
	out.HeaderKeys = append(out.HeaderKeys, ExcessPrefix+Key(x.h).String())
	return out, true
}

// excess hashes what is cut (FNV-1a, fixed, so that the summary is the same in every
// process), each part followed by a separator.
type excess struct{ h uint64 }

const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

func (x *excess) add(s string) {
	for i := 0; i < len(s); i++ {
		x.h = (x.h ^ uint64(s[i])) * fnvPrime
	}
	x.h = (x.h ^ 0xff) * fnvPrime
}

// cut returns s cut to n bytes, adding what it drops to the hash.
func (x *excess) cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	x.add(s[n:])
	return s[:n]
}
