// Package param learns what the parameter values of a service's requests look like, and
// scores a value that does not look like that.
//
// A parameter is a query parameter, a field of a form-encoded or multipart/form-data body
// (a file part's file name, never its content), or a key path of a JSON body
// ("body.items[].sku"). A body is read as what it is, whatever its content type says: a JSON
// document labelled form, or form fields labelled text/plain, are read as JSON and as form
// fields, and the mismatch is scored like a malformed body.
//
// Values are percent-decoded (up to three rounds, '+' as a space in query and form values),
// full-width ASCII lookalikes (U+FF01..U+FF5E) are folded to ASCII, and bytes that are not
// UTF-8 are read as Latin-1 (Windows-1252) characters, as the forms of legacy pages send
// them, unless they are malformed UTF-8 (overlong forms). ".." next to a path separator is
// a class of its own. Parameters are learned per scope: a 64-bit key the caller
// chooses (flowmodel uses its request endpoint: destination, method and path template), so
// that "id" of one endpoint is not "id" of another. For each (scope, parameter) a model
// keeps, never the values themselves:
//
//   - the character set: for each character class (letters, digits, space, control bytes,
//     non-ASCII, invalid UTF-8, and each ASCII punctuation byte on its own), how many values
//     held it;
//   - the lexical kind: how many values were numbers, hex, UUIDs, base64, words, URLs, free
//     text, JSON, or other;
//   - the length range;
//   - the distinct values: up to Config.MaxValues exact value hashes with counts (an enum),
//     after which the parameter is an identifier ("many") and only a 64-bit linear-counting
//     sketch estimates how many distinct values it has.
//
// Scoring is in bits of surprise. A character class or kind is judged by its probability
// for the parameter, smoothed towards the scope's and the service's (a hierarchy of
// pseudo-counts), so a class never seen in a parameter that has held a thousand values
// surprises more than one never seen in a parameter that held two, and a class rare in the
// whole service surprises more than one common elsewhere. A new value of an enum scores by
// the Good-Turing estimate of the chance of a new value; a value longer than any learned
// one by the log of the ratio; a parameter name never seen in its scope by the Good-Turing
// chance of a new name, its value then judged against the scope's values as a whole. The
// score is 1 - 2^(-bits/AlarmBits): 0.5 at AlarmBits, never quite 1.
//
// Memory is bounded per Set: at most MaxScopes scopes, MaxParams parameters per scope and
// MaxModels in all (the excess is summarised in one "{other}" model per scope), MaxValues remembered values per
// parameter and MaxKeyBytes per name. Parsers read at most MaxRequestParams parameters,
// MaxDepth levels of JSON, MaxQueryBytes of query and MaxBodyBytes of body; a request beyond
// a cap, or a malformed JSON body, is an overflow, which is scored too (it is how a payload
// would be hidden past the caps).
//
// A Set is not safe for concurrent use: its owner (flowmodel's per-service state) guards it.
// Judge does not allocate on values that fit their models, but for a multipart body, which
// is read with mime/multipart (within MaxBodyBytes and MaxRequestParams). Snapshot and Merge give a
// JSON-serialisable, mergeable form (see Snapshot).
package param

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"strings"
	"sync"
)

// Config tunes a Set. The zero value of a field means its default.
type Config struct {
	// MaxScopes caps the scopes a Set learns; a request of another scope is judged against
	// the Set's values as a whole. Default: 256.
	MaxScopes int
	// MaxParams caps the parameter models per scope; further names share one model,
	// "{other}". Default: 64.
	MaxParams int
	// MaxModels caps the parameter models of the whole Set (one service), "{other}" models
	// included; further names share their scope's "{other}" (a scope without one, when
	// the cap is reached, judges them against the scope's values as a whole). A full
	// model takes about 580 bytes of memory and 670 bytes of snapshot JSON (measured by
	// TestModelSize), so the default bounds a service at about 0.6 MB of models and 0.7 MB
	// of snapshot. Default: 1024.
	MaxModels int
	// MaxValues is how many distinct values a parameter's model remembers (as hashes, with
	// counts) before it counts the parameter as an identifier rather than an enum.
	// Default: 16, at most 64.
	MaxValues int
	// AlarmBits is the surprise, in bits, at which the score is 0.5 (flowmodel's alarm
	// level). Default: 28: two parts of a value each about as unlikely as one in 16,000,
	// or one part far more unlikely. Surprises of the parts of one value add up, and they
	// are not independent (a URL where words were brings several new classes at once), so
	// one part at 14 bits alone is not an alarm. Chosen on bench/modsec's splits (seeds 1-3:
	// 24 bits let 0.70-1.02% of benign queries alert, 28 bits 0.55-0.82%, for 99.9% of
	// injections caught); bench/modsec reports the sensitivity.
	AlarmBits float64
	// Seed is mixed into value hashes. A deployment that fears a crafted value hashing like
	// a learned enum value sets a secret seed; it must stay the same while models are stored.
	Seed uint64
	// Limits bound the parsers; zero fields take DefaultLimits.
	Limits Limits
}

// Defaults for zero Config fields.
const (
	DefaultMaxScopes = 256
	DefaultMaxParams = 64
	DefaultMaxModels = 1024
	DefaultMaxValues = 16
	DefaultAlarmBits = 28
	maxMaxValues     = 64
)

// DefaultLimits are the parser caps used for zero Limits fields. MaxBodyBytes matches the
// max-body-bytes option's default.
var DefaultLimits = Limits{MaxParams: 128, MaxDepth: 8, MaxKeyBytes: 64, MaxQueryBytes: 16 << 10, MaxBodyBytes: 8 << 10}

// Check applies defaults and reports every problem in c.
func (c Config) Check() (Config, error) {
	var errs []error
	def := func(v *int, d int, name string) {
		if *v == 0 {
			*v = d
		}
		if *v < 0 {
			errs = append(errs, fmt.Errorf("%s must be positive, got %d", name, *v))
		}
	}
	def(&c.MaxScopes, DefaultMaxScopes, "max scopes")
	def(&c.MaxParams, DefaultMaxParams, "max params")
	def(&c.MaxModels, DefaultMaxModels, "max models")
	def(&c.MaxValues, DefaultMaxValues, "max values")
	def(&c.Limits.MaxParams, DefaultLimits.MaxParams, "max request params")
	def(&c.Limits.MaxDepth, DefaultLimits.MaxDepth, "max depth")
	def(&c.Limits.MaxKeyBytes, DefaultLimits.MaxKeyBytes, "max key bytes")
	def(&c.Limits.MaxQueryBytes, DefaultLimits.MaxQueryBytes, "max query bytes")
	def(&c.Limits.MaxBodyBytes, DefaultLimits.MaxBodyBytes, "max body bytes")
	if c.MaxValues > maxMaxValues {
		errs = append(errs, fmt.Errorf("max values must be at most %d, got %d", maxMaxValues, c.MaxValues))
	}
	if c.Limits.MaxKeyBytes > 0 && c.Limits.MaxKeyBytes < len("{long}") {
		errs = append(errs, fmt.Errorf("max key bytes must be at least %d, got %d", len("{long}"), c.Limits.MaxKeyBytes))
	}
	if c.AlarmBits == 0 {
		c.AlarmBits = DefaultAlarmBits
	}
	if !(c.AlarmBits > 0) || math.IsInf(c.AlarmBits, 0) {
		errs = append(errs, fmt.Errorf("alarm bits must be positive, got %g", c.AlarmBits))
	}
	return c, errors.Join(errs...)
}

// Request is what a Set reads of one request. It is not retained.
type Request struct {
	// Query is the raw query string, without '?': "a=1&b=x%20y". A whole request target
	// ("/path?a=1") is accepted too: everything up to the first '?' is dropped.
	Query string
	// Body is the request body as far as it is known (Envoy's buffered body, at most
	// Limits.MaxBodyBytes are read); ContentType says how to parse it: form-encoded and
	// JSON bodies are read, others ignored.
	Body        string
	ContentType string
	// BodyTruncated is set when Body is only the start of a longer body: what follows was
	// not inspected, so the request counts as an overflow.
	BodyTruncated bool
}

// Broke says which parts of a parameter's model a value broke.
type Broke uint8

const (
	BrokeChars    Broke = 1 << iota // a character class rare or unseen for the parameter
	BrokeKind                       // a lexical kind rare or unseen for the parameter
	BrokeLength                     // longer (or shorter) than every learned value
	BrokeValue                      // a new value of an enum
	BrokeName                       // a parameter name never seen in the scope
	BrokeOverflow                   // the request exceeded a parser cap or was malformed
	BrokeRepeat                     // a parameter repeated in one request, as it seldom or never was
)

// String lists the parts, e.g. "chars,length".
func (b Broke) String() string {
	names := [...]string{"chars", "kind", "length", "value", "name", "overflow", "repeat"}
	out := ""
	for i, n := range names {
		if b&(1<<i) != 0 {
			if out != "" {
				out += ","
			}
			out += n
		}
	}
	return out
}

// Result is what Judge concludes about a request.
type Result struct {
	// Score is 1 - 2^(-Bits/AlarmBits): 0 when every value fits, 0.5 at AlarmBits.
	Score float64
	// Bits is the surprise of the most surprising parameter (or of the overflow).
	Bits float64
	// Param names the most surprising parameter (a query key, "body.a.b[]" for a body key
	// path) and Where where it was; empty when Bits is 0 or only the overflow surprised.
	Param string
	Where Where
	// Broke says what the value of Param broke (and BrokeOverflow).
	Broke Broke
	// Params is the number of parameters read; Overflow is set when a cap was reached or
	// the JSON body was malformed.
	Params   int
	Overflow bool
}

// Set holds the parameter models of one service. It is not safe for concurrent use.
type Set struct {
	cfg    Config
	all    stats // every value of the service
	scopes map[uint64]*scope
	models int // parameter models, "{other}" included
}

// scope holds the models of one scope.
type scope struct {
	all      stats // every value of the scope
	names    stats // the character classes of the scope's parameter names, once per name
	params   map[string]*model
	other    *model // parameters beyond MaxParams
	requests uint32
	overflow uint32 // requests that exceeded a cap or had a malformed body
	novel    uint32 // requests that brought a parameter name not seen before
}

// model is what one parameter's values look like.
type model struct {
	stats
	name   string
	values []valueCount // distinct values, while !many
	many   bool         // more than MaxValues distinct values were seen
	sketch uint64       // linear-counting bitmap of value hashes
	// present counts the requests that held the parameter, repeated those that held it
	// more than once ("id=1&id=2": parameter pollution, where a backend may take the first,
	// the last or both).
	present, repeated uint32
}

type valueCount struct {
	hash  uint64
	count uint32
}

// stats counts values by character class, kind and length.
type stats struct {
	seen   Chars // the classes of chars that are not 0
	n      uint32
	chars  [NumChars]uint32
	first  [NumChars]uint32 // class of the first byte
	kinds  [NumKinds]uint32
	minLen uint32
	maxLen uint32
}

// New returns an empty Set.
func New(cfg Config) (*Set, error) {
	cfg, err := cfg.Check()
	if err != nil {
		return nil, err
	}
	return &Set{cfg: cfg, scopes: make(map[uint64]*scope)}, nil
}

// Config returns the Set's configuration with defaults applied.
func (s *Set) Config() Config { return s.cfg }

// Has reports whether the scope key has learned models.
func (s *Set) Has(key uint64) bool {
	_, ok := s.scopes[key]
	return ok
}

// scratch holds the buffers of one Learn or Judge call; pooled so that a Set costs no buffer
// memory while idle (a service may have one Set each, and there may be 100,000 services).
type scratch struct {
	p    parser
	val  []byte
	best []byte
	seen []seenModel // the models of the request's parameters so far
}

// seenModel is a model met in the current request, and how often.
type seenModel struct {
	m *model
	n uint32
}

// meet counts m in the request and returns how often it was met before.
func (sc *scratch) meet(m *model) uint32 {
	for i := range sc.seen {
		if sc.seen[i].m == m {
			sc.seen[i].n++
			return sc.seen[i].n - 1
		}
	}
	sc.seen = append(sc.seen, seenModel{m: m, n: 1})
	return 0
}

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

// getScratch and putScratch take a scratch from the pool and give it back; a scratch given
// back keeps no model alive.
func getScratch() *scratch { return scratchPool.Get().(*scratch) }

func putScratch(sc *scratch) {
	clear(sc.seen)
	sc.seen = sc.seen[:0]
	scratchPool.Put(sc)
}

// value decodes a parameter's value into sc.val and analyses it.
func (s *Set) value(sc *scratch, p *param) Value {
	if p.absent {
		return Value{Absent: true, Hash: hashBytes(s.cfg.Seed, nil)}
	}
	var changed bool
	switch {
	case p.json:
		sc.val = unescapeJSON(sc.val[:0], p.raw)
		sc.val, changed = decodeInPlace(sc.val)
	case p.plain:
		sc.val = append(sc.val[:0], p.raw...)
		sc.val, changed = decodeInPlace(sc.val)
	default:
		sc.val, changed = decodeInto(sc.val[:0], p.raw, p.where != InJSON)
	}
	for round := 1; changed && round < maxDecodeRounds; round++ {
		sc.val, changed = decodeInPlace(sc.val)
	}
	sc.val = foldWide(sc.val)
	v := analyse(sc.val, len(sc.val), s.cfg.Seed)
	if p.json {
		v.Chars |= 1 << CharQuoted
	}
	return v
}

// split returns the query of a request target: what follows the first '?' (up to a '#')
// of a target that starts with '/' or is absolute ("http://..."); anything else is taken
// as a raw query already.
func split(q string) string {
	if len(q) == 0 || q[0] != '/' && !hasPrefixFold(q, "http://") && !hasPrefixFold(q, "https://") {
		return q
	}
	i := strings.IndexByte(q, '?')
	if i < 0 {
		return ""
	}
	q = q[i+1:]
	if j := strings.IndexByte(q, '#'); j >= 0 {
		q = q[:j]
	}
	return q
}

func hasPrefixFold(s, p string) bool { return len(s) >= len(p) && strings.EqualFold(s[:len(p)], p) }

func (s *Set) start(sc *scratch, r *Request) {
	sc.p.reset(s.cfg.Limits, split(r.Query), r.Body, bodyTypeOf(r.ContentType))
	if r.BodyTruncated {
		sc.p.overflow = true
	}
}

// Learn adds the parameters of r to the models of scope key. It reports whether the scope
// is learned (false when MaxScopes scopes are learned already).
func (s *Set) Learn(key uint64, r *Request) bool {
	sp := s.scopes[key]
	if sp == nil {
		if len(s.scopes) >= s.cfg.MaxScopes {
			return false
		}
		sp = &scope{params: make(map[string]*model)}
		s.scopes[key] = sp
	}
	sc := getScratch()
	defer putScratch(sc)
	s.start(sc, r)
	sp.requests = satAdd(sp.requests, 1)
	var p param
	novel := false
	for sc.p.next(&p) {
		v := s.value(sc, &p)
		m := sp.params[string(p.key)]
		if m == nil {
			m = s.newModel(sp, p.key)
			novel = true
		}
		if m != nil {
			m.add(&v, s.cfg.MaxValues)
			if m != sp.other {
				sc.meet(m)
			}
		}
		sp.all.add(&v)
		s.all.add(&v)
	}
	for _, e := range sc.seen {
		e.m.present = satAdd(e.m.present, 1)
		if e.n > 1 {
			e.m.repeated = satAdd(e.m.repeated, 1)
		}
	}
	if sc.p.overflow || sc.p.bad {
		sp.overflow = satAdd(sp.overflow, 1)
	}
	if novel {
		sp.novel = satAdd(sp.novel, 1)
	}
	return true
}

// newModel returns the model for a parameter not yet in sp: a new one, or the scope's
// "{other}" model once MaxParams are kept.
func (s *Set) newModel(sp *scope, key []byte) *model {
	if len(sp.params) >= s.cfg.MaxParams || s.models >= s.cfg.MaxModels-1 {
		// The last model a Set may have is kept for an "{other}"; past the cap, a scope
		// without one learns its excess names into its values as a whole only.
		if sp.other == nil && s.models < s.cfg.MaxModels {
			sp.other = &model{name: "{other}"}
			s.models++
		}
		return sp.other
	}
	m := &model{name: string(key[1:])}
	sp.params[string(key)] = m
	s.models++
	nv := analyse(key[1:], len(key)-1, 0)
	sp.names.add(&nv)
	return m
}

func satAdd(a, b uint32) uint32 {
	if s := a + b; s >= a {
		return s
	}
	return math.MaxUint32
}

func (st *stats) add(v *Value) {
	l := uint32(min(v.Len, math.MaxUint32))
	if st.n == 0 || l < st.minLen {
		st.minLen = l
	}
	if l > st.maxLen {
		st.maxLen = l
	}
	st.n = satAdd(st.n, 1)
	st.kinds[v.Kind] = satAdd(st.kinds[v.Kind], 1)
	st.seen |= v.Chars
	for cs := uint64(v.Chars); cs != 0; cs &= cs - 1 {
		c := bits.TrailingZeros64(cs)
		st.chars[c] = satAdd(st.chars[c], 1)
	}
	if v.Len > 0 {
		st.first[v.First] = satAdd(st.first[v.First], 1)
	}
}

func (m *model) add(v *Value, maxValues int) {
	if v.Absent {
		// A bare key: its presence is learned, not a value.
		m.n = satAdd(m.n, 1)
		m.kinds[KindEmpty] = satAdd(m.kinds[KindEmpty], 1)
		return
	}
	m.stats.add(v)
	m.sketch |= 1 << (v.Hash >> 58)
	if m.many {
		return
	}
	for i := range m.values {
		if m.values[i].hash == v.Hash {
			m.values[i].count = satAdd(m.values[i].count, 1)
			return
		}
	}
	if len(m.values) >= maxValues {
		m.many, m.values = true, nil
		return
	}
	m.values = append(m.values, valueCount{hash: v.Hash, count: 1})
}

// Judge scores the parameters of r against the models of scope key. It learns nothing.
func (s *Set) Judge(key uint64, r *Request) Result {
	sp := s.scopes[key]
	sc := getScratch()
	defer putScratch(sc)
	s.start(sc, r)
	var res Result
	var best *model
	var p param
	for sc.p.next(&p) {
		res.Params++
		v := s.value(sc, &p)
		var m *model
		if sp != nil {
			m = sp.params[string(p.key)]
		}
		b, broke := s.bits(sp, m, &p, &v)
		if m != nil && m != sp.other && sc.meet(m) == 1 {
			// The second time in this request (once is enough to count).
			if rb := surprise((float64(m.repeated) + 1) / (float64(m.present) + 2)); rb > 0 {
				b += rb
				broke |= BrokeRepeat
			}
		}
		if b > res.Bits {
			res.Bits, res.Broke, res.Where, best = b, broke, p.where, m
			sc.best = append(sc.best[:0], p.name()...)
		}
	}
	if sc.p.overflow || sc.p.bad {
		res.Overflow = true
		if b := s.overflowBits(sp); b > res.Bits {
			res.Bits, res.Broke, res.Where, best = b, BrokeOverflow, 0, nil
			sc.best = sc.best[:0]
		}
	}
	if res.Bits > 0 {
		res.Score = 1 - math.Exp2(-res.Bits/s.cfg.AlarmBits)
		switch {
		case best != nil:
			res.Param = best.name
		case len(sc.best) > 0:
			res.Param = string(sc.best)
		}
	}
	return res
}

// overflowBits is the surprise of a request beyond the caps: by how rare that was in the
// scope's learning (never, in most scopes: then it alarms).
func (s *Set) overflowBits(sp *scope) float64 {
	var n, k float64
	if sp != nil {
		n, k = float64(sp.requests), float64(sp.overflow)
	}
	b := -math.Log2((k + 0.5) / (n + 1))
	if k == 0 {
		// Never seen while learning (or nothing learned): at least the alarm level.
		b = max(b, s.cfg.AlarmBits)
	}
	return b
}

// Pseudo-counts of the hierarchy: a parameter's class frequency is smoothed towards its
// scope's with alphaParam pseudo-values, the scope's towards the service's with alphaScope,
// and the service's towards a fixed prior with alphaSet.
const (
	alphaParam = 1
	alphaScope = 1
	alphaSet   = 1
)

// basePrior is the chance that a value holds a class, before anything is learned: letters
// and digits are common, the punctuation of URLs and identifiers less so, the rest rare.
var basePrior = func() (p [NumChars]float64) {
	for c := range p {
		p[c] = 0.01
	}
	for _, c := range []Char{CharLower, CharUpper, CharDigit} {
		p[c] = 0.5
	}
	for _, c := range []byte("-_.%/:=&+,") {
		p[charOf[c]] = 0.1
	}
	p[CharSpace] = 0.1
	p[CharUnicode] = 0.05
	return p
}()

// alphas are the pseudo-counts by position in a chain. A chain without a parameter model
// starts at the scope, so positions are filled from the front: the first level smooths
// towards the second with alphaParam, and so on.
var alphas = [3]float64{alphaParam, alphaScope, alphaSet}

// chain is the stats a probability is smoothed through, most specific first.
type chain [3]*stats

func (s *Set) chain(sp *scope, m *model) chain {
	var ch chain
	i := 0
	if m != nil {
		ch[i] = &m.stats
		i++
	}
	if sp != nil {
		ch[i] = &sp.all
		i++
	}
	ch[i] = &s.all
	return ch
}

// charProb is the smoothed chance that a value of the chain's first stats holds class c
// (or, with first set, starts with it).
func (ch *chain) charProb(c Char, first bool) float64 {
	p := basePrior[c]
	for i := len(ch) - 1; i >= 0; i-- {
		st := ch[i]
		if st == nil {
			continue
		}
		a := alphas[i]
		k := st.chars[c]
		if first {
			k = st.first[c]
		}
		p = (float64(k) + a*p) / (float64(st.n) + a)
	}
	return p
}

func (ch *chain) kindProb(k Kind) float64 {
	p := 1 / float64(NumKinds)
	for i := len(ch) - 1; i >= 0; i-- {
		st := ch[i]
		if st == nil {
			continue
		}
		a := alphas[i]
		p = (float64(st.kinds[k]) + a*p) / (float64(st.n) + a)
	}
	return p
}

// surprise is the bits of a probability beyond the first: an event as likely as a coin
// toss is no surprise.
func surprise(p float64) float64 {
	return max(0, -math.Log2(p)-1)
}

// bits is the surprise of value v of parameter p, whose model is m (nil for a name never
// learned in scope sp, itself nil when the scope was never learned).
func (s *Set) bits(sp *scope, m *model, p *param, v *Value) (float64, Broke) {
	var total float64
	var broke Broke
	if m == nil {
		if sp != nil && sp.other == nil {
			// A new name: as surprising as new names were while the scope learned (the
			// share of its requests that brought one), and by the characters of the name
			// against the names learned. Once the scope summarises names in "{other}", a
			// name not kept may have been learned there: its value is judged against
			// "{other}" and its name is no surprise.
			b := -math.Log2((float64(sp.novel) + 1) / (float64(sp.requests) + 2))
			nb := analyse(p.name(), len(p.name()), 0)
			// Names smooth towards every value the scope and the service sent: a byte rare
			// in values too ('<', a quote) is rarer still in a name.
			nch := chain{&sp.names, &sp.all, &s.all}
			for cs := uint64(nb.Chars); cs != 0; cs &= cs - 1 {
				c := Char(bits.TrailingZeros64(cs))
				if 2*sp.names.chars[c] < sp.names.n {
					b += surprise(nch.charProb(c, false))
				}
			}
			if b > 0 {
				total, broke = b, BrokeName
			}
		}
		if sp != nil && sp.other != nil {
			m = sp.other
		}
		if v.Absent {
			return total, broke
		}
	} else if v.Absent {
		if m.kinds[KindEmpty] == 0 {
			return surprise(1 / (float64(m.n) + 2)), BrokeKind
		}
		return 0, 0
	}
	ch := s.chain(sp, m)
	first := ch[0]
	var cb float64
	for cs := uint64(v.Chars); cs != 0; cs &= cs - 1 {
		c := Char(bits.TrailingZeros64(cs))
		if 2*first.chars[c] >= first.n && first.n > 0 {
			continue // common in this parameter
		}
		cb += surprise(ch.charProb(c, false))
	}
	// A class that nearly every learned value held (all but 1 in 32 at most) and this one
	// lacks: an e-mail address without its '@', a number without digits. As surprising as
	// a value without it was while learning; the most surprising such class counts.
	if m != nil && m != sp.other && first.n > 0 && v.Len > 0 {
		var mb float64
		for cs := uint64(first.seen &^ v.Chars); cs != 0; cs &= cs - 1 {
			c := bits.TrailingZeros64(cs)
			if k := first.chars[c]; 32*(first.n-k) <= first.n {
				mb = max(mb, surprise((float64(first.n-k)+1)/(float64(first.n)+2)))
			}
		}
		cb += mb
	}
	// How a value starts tells a path from a traversal ("../"), a number from a closing
	// quote or bracket: the first byte's class is judged like the others.
	// A letter is a letter: a value that starts with "Á" where values start with letters is
	// no surprise for it.
	if v.Len > 0 && (2*first.first[v.First] < first.n || first.n == 0) && !(isLetter(v.First) && 2*first.firstLetters() >= first.n && first.n > 0) {
		cb += surprise(ch.charProb(v.First, true))
	}
	var kb float64
	if first.kinds[v.Kind] == 0 || 2*first.kinds[v.Kind] < first.n {
		kb = surprise(ch.kindProb(v.Kind))
	}
	// The kind follows mostly from the characters (new characters make a new kind), so
	// the two are one piece of evidence: the larger counts.
	switch {
	case cb >= kb && cb > 0:
		total += cb
		broke |= BrokeChars
	case kb > 0:
		total += kb
		broke |= BrokeKind
	}
	if m != nil && m.n > 0 {
		// A value longer than all n learned ones is a 1 in n+1 event, whatever the
		// lengths: that surprise counts in full from twice the longest, in part below.
		// Beyond twice the longest, lengths are taken to have a tail no heavier than a
		// power law of exponent lengthTail: each further doubling is lengthTail bits more,
		// so that the surprise grows with the length instead of stopping at twice the
		// longest. A value shorter than all counts half as much.
		never := math.Log2(float64(m.n) + 1)
		l := float64(v.Len)
		var lb float64
		switch {
		case uint32(v.Len) > m.maxLen:
			r := math.Log2((l + 1) / (float64(m.maxLen) + 1))
			lb = never*min(1, r) + lengthTail*max(0, r-1)
		case uint32(v.Len) < m.minLen:
			lb = 0.5 * never * min(1, math.Log2((float64(m.minLen)+1)/(l+1)))
		}
		if lb > 1 {
			total += lb - 1
			broke |= BrokeLength
		}
		if !m.many && !m.known(v.Hash) {
			singles := 0
			for _, vc := range m.values {
				if vc.count == 1 {
					singles++
				}
			}
			if b := -math.Log2((float64(singles) + 1) / (float64(m.n) + 2)); b > 1 {
				total += b - 1
				broke |= BrokeValue
			}
		}
	}
	return total, broke
}

// isLetter reports whether c is a class of letters (CharUnicode: beyond ASCII, mostly
// letters).
func isLetter(c Char) bool { return c == CharLower || c == CharUpper || c == CharUnicode }

// firstLetters counts the values that start with a letter.
func (st *stats) firstLetters() uint32 {
	return satAdd(satAdd(st.first[CharLower], st.first[CharUpper]), st.first[CharUnicode])
}

func (m *model) known(h uint64) bool {
	for _, vc := range m.values {
		if vc.hash == h {
			return true
		}
	}
	return false
}

// lengthTail is the bits of surprise of each doubling of a value's length beyond twice the
// longest learned (see bits): 2, a power-law tail of exponent 2 (the heaviest with a finite
// mean), so that 64 times the longest is 10 bits beyond the surprise of a new longest
// value. On bench/modsec's split without repeats, 4 let 2.7% of benign queries alert where
// 2 lets 2.55% and 0 2.2%; 2 catches 68% of bench/web's overflows by its alerts, 4 75%.
const lengthTail = 2

// ScopeOf combines two 64-bit keys into a scope key, e.g. a destination's hash and a shape
// key (flowmodel keeps shapes per destination, so the pair names one endpoint of one
// destination). It is a fixed function: scope keys may be persisted.
func ScopeOf(a, b uint64) uint64 { return mix(mix(a^k1, k2)^b, k3) }
