package shape

import (
	"slices"
	"strings"
)

// DefaultIgnoreHeaders are the header names left out of shapes when Config.IgnoreHeaders is
// nil: names that differ from request to request of one kind (tracing, request ids, cache
// validators) or that a proxy adds rather than the application. A trailing '*' matches any
// suffix.
var DefaultIgnoreHeaders = []string{
	// Tracing and correlation: present on sampled or propagated requests only.
	"traceparent", "tracestate", "baggage", "b3", "x-b3-*", "x-ot-span-context",
	"uber-trace-id", "uberctx-*", "x-cloud-trace-context", "grpc-trace-bin",
	"x-amzn-trace-id", "x-datadog-*", "sentry-trace", "x-request-id", "x-client-trace-id",
	"x-correlation-id",
	// Added by proxies on the way.
	"x-envoy-*", "x-forwarded-*", "forwarded", "x-real-ip", "via", "x-istio-*",
	// Cache validators: they depend on what the client has cached.
	"if-none-match", "if-modified-since",
}

// Config tunes a Shaper. The zero value is ready to use.
type Config struct {
	// Seed is mixed into every key. Keys depend on it, so it must stay the same for as long
	// as keys are stored. The key hash is not cryptographic: a deployment that fears crafted
	// collisions (a request made to hash like a learned shape) sets a secret seed.
	Seed uint64
	// IgnoreHeaders are header names left out of shapes, case-insensitive; a trailing '*'
	// matches any suffix. Nil means DefaultIgnoreHeaders; an empty slice ignores none.
	IgnoreHeaders []string
}

// Shaper turns requests into shapes and keys. It is immutable and safe for concurrent use.
type Shaper struct {
	seed     uint64
	ignore   []uint64  // sorted hashes of ignored header names
	prefixes []string  // lower-case prefixes of ignored header names
	first    [256]bool // first bytes of prefixes, both cases
	all      bool      // "*": every header is ignored
}

// New returns a Shaper.
func New(cfg Config) *Shaper {
	names := cfg.IgnoreHeaders
	if names == nil {
		names = DefaultIgnoreHeaders
	}
	s := &Shaper{seed: cfg.Seed}
	for _, n := range names {
		n = strings.ToLower(strings.TrimSpace(n))
		if p, ok := strings.CutSuffix(n, "*"); ok {
			if p == "" {
				s.all = true
				continue
			}
			s.prefixes = append(s.prefixes, p)
			s.first[p[0]] = true
			s.first[upper(p[0])] = true
			continue
		}
		if n != "" {
			s.ignore = append(s.ignore, s.headerHash(n))
		}
	}
	slices.Sort(s.ignore)
	return s
}

// Key returns the key of r's shape. It does not allocate unless r has more than 16 query
// keys or 32 header names.
func (s *Shaper) Key(r *Request) Key {
	o := sink{hash: true, h: newHasher(s.seed)}
	method(&o, r.Method)
	o.h.end()
	path, query := splitPath(r.Path)
	templatePath(&o, path)
	o.h.end()
	var qbuf [16]uint64
	o.h.set(s.queryHashes(qbuf[:0], query))
	var hbuf [32]uint64
	o.h.set(s.headerHashes(hbuf[:0], r.HeaderKeys))
	mediaType(&o, r.ContentType)
	o.h.end()
	o.h.word(uint64(int64(SizeOf(r.BodyBytes))) ^ k3)
	return Key(o.h.sum())
}

// KeyOf returns the key of a shape; for the shape of a request it equals Key of the request.
// The shape need not be canonical (see Parse); header names the Shaper ignores are left out.
func (s *Shaper) KeyOf(sh Shape) Key {
	sh = sh.canonical()
	h := newHasher(s.seed)
	h.str(sh.Method)
	h.end()
	h.str(sh.Path)
	h.end()
	hs := make([]uint64, 0, max(len(sh.QueryKeys), len(sh.HeaderKeys)))
	for _, k := range sh.QueryKeys {
		hs = append(hs, s.elemHash(k))
	}
	h.set(hs)
	hs = hs[:0]
	for _, k := range sh.HeaderKeys {
		if !s.ignored(k) {
			hs = append(hs, s.elemHash(k))
		}
	}
	h.set(hs)
	h.str(sh.ContentType)
	h.end()
	h.word(uint64(int64(sh.Size)) ^ k3)
	return Key(h.sum())
}

// Shape returns the shape of r.
func (s *Shaper) Shape(r *Request) Shape {
	o := sink{build: true, b: make([]byte, 0, len(r.Path)+len(r.Method)+len(r.ContentType))}
	path, query := splitPath(r.Path)
	out := newShape(&o, r.Method, path, r.ContentType, SizeOf(r.BodyBytes))
	for query != "" {
		var k string
		if k, query = nextQueryKey(query); k == "" {
			continue
		}
		o.b = o.b[:0]
		segment(&o, k, &escList)
		out.QueryKeys = append(out.QueryKeys, string(o.b))
	}
	for _, k := range r.HeaderKeys {
		if s.ignored(k) {
			continue
		}
		o.b = o.b[:0]
		o.escaped(k, true)
		out.HeaderKeys = append(out.HeaderKeys, string(o.b))
	}
	out.sortKeys()
	return out
}

// set hashes a set of element hashes: sorted, without duplicates, with its size.
func (x *hasher) set(hs []uint64) {
	slices.Sort(hs)
	hs = slices.Compact(hs)
	x.word(uint64(len(hs)) ^ k1)
	for _, v := range hs {
		x.word(v)
	}
}

// elemHash hashes one canonical list element.
func (s *Shaper) elemHash(k string) uint64 {
	h := newHasher(s.seed ^ k2)
	h.str(k)
	h.end()
	return h.sum()
}

// headerHash hashes a header name as it appears in a shape.
func (s *Shaper) headerHash(name string) uint64 {
	o := sink{hash: true, h: newHasher(s.seed ^ k2)}
	o.escaped(name, true)
	o.h.end()
	return o.h.sum()
}

// nextQueryKey returns the key of the first parameter of a raw query ("" if it has none)
// and the rest of the query.
func nextQueryKey(query string) (key, rest string) {
	kv, rest, _ := strings.Cut(query, "&")
	key, _, _ = strings.Cut(kv, "=")
	return key, rest
}

func (s *Shaper) queryHashes(dst []uint64, query string) []uint64 {
	for query != "" {
		var k string
		if k, query = nextQueryKey(query); k == "" {
			continue
		}
		o := sink{hash: true, h: newHasher(s.seed ^ k2)}
		segment(&o, k, &escList)
		o.h.end()
		dst = append(dst, o.h.sum())
	}
	return dst
}

func (s *Shaper) headerHashes(dst []uint64, names []string) []uint64 {
	for _, n := range names {
		if n == "" || n[0] == ':' || s.prefixed(n) {
			continue
		}
		v := s.headerHash(n)
		if s.ignoredHash(v) {
			continue
		}
		dst = append(dst, v)
	}
	return dst
}

// ignored reports whether a header name is left out of shapes.
func (s *Shaper) ignored(name string) bool {
	return name == "" || name[0] == ':' || s.prefixed(name) || s.ignoredHash(s.headerHash(name))
}

func (s *Shaper) prefixed(name string) bool {
	if s.all {
		return true
	}
	if !s.first[name[0]] {
		return false
	}
	for _, p := range s.prefixes {
		if hasPrefixFold(name, p) {
			return true
		}
	}
	return false
}

// hasPrefixFold reports whether s starts with the lower-case ASCII prefix p, ignoring case.
func hasPrefixFold(s, p string) bool {
	if len(s) < len(p) {
		return false
	}
	for i := 0; i < len(p); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != p[i] {
			return false
		}
	}
	return true
}

func upper(c byte) byte {
	if 'a' <= c && c <= 'z' {
		return c - ('a' - 'A')
	}
	return c
}

func (s *Shaper) ignoredHash(v uint64) bool {
	_, found := slices.BinarySearch(s.ignore, v)
	return found
}
