package param

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"slices"
	"strconv"
)

// Snapshot is the serialisable form of a Set: plain JSON (field names below), one object per
// service. Counts are what was learned, so two snapshots of one service (two replicas that
// learned apart) merge by adding them: see Set.Merge.
//
//	{"version":1,
//	 "all":{"n":120,"chars":{"lower":120,"digit":80,"-":3},"first":{"lower":120},"kinds":{"word":117,"number":3},"min_len":1,"max_len":40},
//	 "scopes":[{"key":"9f2c5e01a7b3d4c8","requests":60,"overflow":0,"novel":2,
//	   "all":{...},"names":{...},
//	   "params":[{"name":"id","where":"query","stats":{...},"values":[{"hash":"00ff...","count":60}],
//	              "many":false,"sketch":"0000000000000001"}],
//	   "other":null}]}
//
// "chars" maps character class names (Char.String: "lower", "upper", "digit", "space",
// "control", "unicode", "bad-utf8", or the punctuation byte) to the number of values that
// held the class, "first" to the number of values that started with it; "kinds" maps kind names (Kind.String) to counts. Hashes and keys are 16 hex
// digits. Value hashes depend on Config.Seed: restore a snapshot into a Set with the same seed.
type Snapshot struct {
	Version int             `json:"version"`
	All     StatsSnapshot   `json:"all"`
	Scopes  []ScopeSnapshot `json:"scopes"`
}

// SnapshotVersion is the version Snapshot writes and Restore reads. Version 2 counts the
// requests that repeated a parameter, and flowmodel's scopes became endpoints (destination,
// method and path template) instead of request shapes: a version 1 snapshot's scopes would
// never be met again, so it is refused rather than read as models that judge nothing.
const SnapshotVersion = 2

// ScopeSnapshot is one scope of a Snapshot.
type ScopeSnapshot struct {
	Key      string          `json:"key"`
	Requests uint32          `json:"requests"`
	Overflow uint32          `json:"overflow"`
	Novel    uint32          `json:"novel"`
	All      StatsSnapshot   `json:"all"`
	Names    StatsSnapshot   `json:"names"`
	Params   []ParamSnapshot `json:"params"`
	Other    *ParamSnapshot  `json:"other,omitempty"`
}

// ParamSnapshot is one parameter model. Where is "query", "form" or "json".
type ParamSnapshot struct {
	Name   string          `json:"name"`
	Where  string          `json:"where"`
	Stats  StatsSnapshot   `json:"stats"`
	Values []ValueSnapshot `json:"values,omitempty"`
	Many   bool            `json:"many"`
	Sketch string          `json:"sketch"`
	// Present counts the requests that held the parameter, Repeated those that held it
	// more than once (absent in snapshots written before they were counted: 0).
	Present  uint32 `json:"present,omitempty"`
	Repeated uint32 `json:"repeated,omitempty"`
}

// ValueSnapshot is one remembered value: its hash and count.
type ValueSnapshot struct {
	Hash  string `json:"hash"`
	Count uint32 `json:"count"`
}

// StatsSnapshot counts values by character class and kind, with the length range.
type StatsSnapshot struct {
	N      uint32            `json:"n"`
	Chars  map[string]uint32 `json:"chars,omitempty"`
	First  map[string]uint32 `json:"first,omitempty"`
	Kinds  map[string]uint32 `json:"kinds,omitempty"`
	MinLen uint32            `json:"min_len"`
	MaxLen uint32            `json:"max_len"`
}

// Distinct estimates the number of distinct values of a parameter: exact while it is an
// enum, from the linear-counting sketch after.
func (p ParamSnapshot) Distinct() float64 {
	if !p.Many {
		return float64(len(p.Values))
	}
	v, err := strconv.ParseUint(p.Sketch, 16, 64)
	if err != nil {
		return math.NaN()
	}
	return linearCount(v)
}

func linearCount(sketch uint64) float64 {
	zeros := 64 - bits.OnesCount64(sketch)
	if zeros == 0 {
		return math.Inf(1) // saturated: more than about 250
	}
	return -64 * math.Log(float64(zeros)/64)
}

var whereNames = [...]string{InQuery: "query", InForm: "form", InJSON: "json"}

func hex16(v uint64) string {
	const digits = "0123456789abcdef"
	var b [16]byte
	for i := range b {
		b[i] = digits[v>>(60-4*i)&15]
	}
	return string(b[:])
}

func parseHex16(s string) (uint64, error) {
	if len(s) != 16 {
		return 0, fmt.Errorf("%q: want 16 hex digits", s)
	}
	v, err := strconv.ParseUint(s, 16, 64)
	if err != nil {
		return 0, fmt.Errorf("%q: want 16 hex digits", s)
	}
	return v, nil
}

func (st *stats) snapshot() StatsSnapshot {
	out := StatsSnapshot{N: st.n, MinLen: st.minLen, MaxLen: st.maxLen}
	for c, n := range st.chars {
		if n > 0 {
			if out.Chars == nil {
				out.Chars = map[string]uint32{}
			}
			out.Chars[Char(c).String()] = n
		}
	}
	for c, n := range st.first {
		if n > 0 {
			if out.First == nil {
				out.First = map[string]uint32{}
			}
			out.First[Char(c).String()] = n
		}
	}
	for k, n := range st.kinds {
		if n > 0 {
			if out.Kinds == nil {
				out.Kinds = map[string]uint32{}
			}
			out.Kinds[Kind(k).String()] = n
		}
	}
	return out
}

func (m *model) snapshot(where Where) ParamSnapshot {
	p := ParamSnapshot{Name: m.name, Stats: m.stats.snapshot(), Many: m.many, Sketch: hex16(m.sketch),
		Present: m.present, Repeated: m.repeated}
	if int(where) < len(whereNames) {
		p.Where = whereNames[where]
	}
	for _, v := range m.values {
		p.Values = append(p.Values, ValueSnapshot{Hash: hex16(v.hash), Count: v.count})
	}
	slices.SortFunc(p.Values, func(a, b ValueSnapshot) int { return cmp.Compare(a.Hash, b.Hash) })
	return p
}

// Snapshot returns the Set's models, scopes sorted by key and parameters by name.
func (s *Set) Snapshot() Snapshot {
	out := Snapshot{Version: SnapshotVersion, All: s.all.snapshot()}
	for key, sp := range s.scopes {
		ss := ScopeSnapshot{Key: hex16(key), Requests: sp.requests, Overflow: sp.overflow, Novel: sp.novel,
			All: sp.all.snapshot(), Names: sp.names.snapshot()}
		for k, m := range sp.params {
			ss.Params = append(ss.Params, m.snapshot(Where(k[0])))
		}
		slices.SortFunc(ss.Params, func(a, b ParamSnapshot) int {
			return cmp.Or(cmp.Compare(a.Where, b.Where), cmp.Compare(a.Name, b.Name))
		})
		if sp.other != nil {
			o := sp.other.snapshot(0)
			ss.Other = &o
		}
		out.Scopes = append(out.Scopes, ss)
	}
	slices.SortFunc(out.Scopes, func(a, b ScopeSnapshot) int { return cmp.Compare(a.Key, b.Key) })
	return out
}

// Restore returns a Set with cfg holding the models of snap.
func Restore(cfg Config, snap Snapshot) (*Set, error) {
	s, err := New(cfg)
	if err != nil {
		return nil, err
	}
	if err := s.Merge(snap); err != nil {
		return nil, err
	}
	return s, nil
}

// Merge adds the models of snap to s, as if s had also learned what snap's Set learned:
// counts add, length ranges widen, remembered values unite (a parameter with more than
// MaxValues distinct values in the union becomes "many"), sketches unite. The Set's caps
// hold: scopes beyond MaxScopes are dropped, parameters beyond MaxParams go to "{other}".
// Two counts cannot be added: the character classes of a scope's names are recounted from
// the union of its names, and the count of learning requests that brought a new name is
// the larger of the two (each replica saw the names new; the sum would make new names look
// common, and so less surprising). On error s is unchanged.
func (s *Set) Merge(snap Snapshot) error {
	if snap.Version != SnapshotVersion {
		return fmt.Errorf("param snapshot version %d: want %d", snap.Version, SnapshotVersion)
	}
	// Check everything first, so that a bad snapshot changes nothing.
	type parsed struct {
		key    uint64
		all    stats
		names  stats
		params []parsedParam
		other  *parsedParam
	}
	var errs []error
	all, err := snap.All.parse()
	if err != nil {
		errs = append(errs, fmt.Errorf("all: %w", err))
	}
	var scopes []parsed
	for i, ss := range snap.Scopes {
		var p parsed
		var e1, e2, e3 error
		p.key, e1 = parseHex16(ss.Key)
		p.all, e2 = ss.All.parse()
		p.names, e3 = ss.Names.parse()
		if err := errors.Join(e1, e2, e3); err != nil {
			errs = append(errs, fmt.Errorf("scope %d: %w", i, err))
			continue
		}
		for _, ps := range ss.Params {
			pp, err := ps.parse(s.cfg.Limits.MaxKeyBytes)
			if err != nil {
				errs = append(errs, fmt.Errorf("scope %s: param %q: %w", ss.Key, ps.Name, err))
				continue
			}
			p.params = append(p.params, pp)
		}
		if ss.Other != nil {
			pp, err := ss.Other.parse(len("{other}"))
			if err != nil {
				errs = append(errs, fmt.Errorf("scope %s: other: %w", ss.Key, err))
			}
			p.other = &pp
		}
		scopes = append(scopes, p)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("param snapshot: %w", err)
	}
	s.all.merge(&all)
	for i := range scopes {
		p := &scopes[i]
		sp := s.scopes[p.key]
		if sp == nil {
			if len(s.scopes) >= s.cfg.MaxScopes {
				continue
			}
			sp = &scope{params: make(map[string]*model)}
			s.scopes[p.key] = sp
		}
		ss := &snap.Scopes[i]
		sp.requests = satAdd(sp.requests, ss.Requests)
		sp.overflow = satAdd(sp.overflow, ss.Overflow)
		sp.novel = max(sp.novel, ss.Novel)
		sp.all.merge(&p.all)
		for j := range p.params {
			pp := &p.params[j]
			m := sp.params[pp.key]
			if m == nil {
				m = s.newModel(sp, []byte(pp.key))
			}
			if m != nil {
				m.merge(&pp.m, s.cfg.MaxValues)
			}
		}
		if p.other != nil {
			if sp.other == nil && s.models < s.cfg.MaxModels {
				sp.other = &model{name: "{other}"}
				s.models++
			}
			if sp.other != nil {
				sp.other.merge(&p.other.m, s.cfg.MaxValues)
			}
		}
		sp.names = stats{}
		for k := range sp.params {
			nv := analyse([]byte(k[1:]), len(k)-1, 0)
			sp.names.add(&nv)
		}
	}
	return nil
}

type parsedParam struct {
	key string // where byte + name
	m   model
}

func (p ParamSnapshot) parse(maxKey int) (parsedParam, error) {
	var out parsedParam
	var errs []error
	w := Where(0)
	for i, n := range whereNames {
		if n != "" && n == p.Where {
			w = Where(i)
		}
	}
	if w == 0 && p.Name != "{other}" {
		errs = append(errs, fmt.Errorf("where %q: want query, form or json", p.Where))
	}
	// Names are bounded as the parser bounds them ("body." or "body" and a path of at most
	// MaxDepth segments of at most maxKey bytes each); a stored name is not trusted more.
	if len(p.Name) > 16*maxKey {
		errs = append(errs, fmt.Errorf("name of %d bytes is too long", len(p.Name)))
	}
	st, err := p.Stats.parse()
	if err != nil {
		errs = append(errs, err)
	}
	out.m.stats = st
	out.m.name = p.Name
	out.m.many = p.Many
	out.m.present, out.m.repeated = p.Present, p.Repeated
	if p.Repeated > p.Present {
		errs = append(errs, fmt.Errorf("repeated %d above present %d", p.Repeated, p.Present))
	}
	if len(p.Values) > maxMaxValues {
		errs = append(errs, fmt.Errorf("%d values: at most %d", len(p.Values), maxMaxValues))
	}
	for _, v := range p.Values {
		h, err := parseHex16(v.Hash)
		if err != nil {
			errs = append(errs, fmt.Errorf("value hash: %w", err))
			continue
		}
		out.m.values = append(out.m.values, valueCount{hash: h, count: v.Count})
	}
	if p.Sketch != "" {
		if out.m.sketch, err = parseHex16(p.Sketch); err != nil {
			errs = append(errs, fmt.Errorf("sketch: %w", err))
		}
	}
	out.key = string(byte(w)) + p.Name
	return out, errors.Join(errs...)
}

func (ss StatsSnapshot) parse() (stats, error) {
	st := stats{n: ss.N, minLen: ss.MinLen, maxLen: ss.MaxLen}
	var errs []error
	for name, n := range ss.Chars {
		c, ok := parseChar(name)
		if !ok {
			errs = append(errs, fmt.Errorf("unknown character class %q", name))
			continue
		}
		st.chars[c] = n
		if n > 0 {
			st.seen |= 1 << c
		}
	}
	for name, n := range ss.First {
		c, ok := parseChar(name)
		if !ok {
			errs = append(errs, fmt.Errorf("unknown character class %q", name))
			continue
		}
		st.first[c] = n
	}
	for name, n := range ss.Kinds {
		k := slices.Index(kindNames[:], name)
		if k < 0 {
			errs = append(errs, fmt.Errorf("unknown kind %q", name))
			continue
		}
		st.kinds[k] = n
	}
	if ss.MinLen > ss.MaxLen {
		errs = append(errs, fmt.Errorf("min_len %d above max_len %d", ss.MinLen, ss.MaxLen))
	}
	return st, errors.Join(errs...)
}

func parseChar(name string) (Char, bool) {
	for c := Char(0); int(c) < NumChars; c++ {
		if c.String() == name {
			return c, true
		}
	}
	return 0, false
}

func (st *stats) merge(o *stats) {
	if o.n == 0 {
		return
	}
	if st.n == 0 || o.minLen < st.minLen {
		st.minLen = o.minLen
	}
	st.maxLen = max(st.maxLen, o.maxLen)
	st.n = satAdd(st.n, o.n)
	st.seen |= o.seen
	for i := range st.chars {
		st.chars[i] = satAdd(st.chars[i], o.chars[i])
	}
	for i := range st.first {
		st.first[i] = satAdd(st.first[i], o.first[i])
	}
	for i := range st.kinds {
		st.kinds[i] = satAdd(st.kinds[i], o.kinds[i])
	}
}

func (m *model) merge(o *model, maxValues int) {
	m.stats.merge(&o.stats)
	m.sketch |= o.sketch
	m.present, m.repeated = satAdd(m.present, o.present), satAdd(m.repeated, o.repeated)
	if m.many || o.many {
		m.many, m.values = true, nil
		return
	}
	for _, v := range o.values {
		found := false
		for i := range m.values {
			if m.values[i].hash == v.hash {
				m.values[i].count = satAdd(m.values[i].count, v.count)
				found = true
				break
			}
		}
		if found {
			continue
		}
		if len(m.values) >= maxValues {
			m.many, m.values = true, nil
			return
		}
		m.values = append(m.values, v)
	}
}
