package main

import (
	"encoding/json"
	"fmt"
	"math/bits"
	"mime"
	"net/url"
	"slices"
	"strings"

	"github.com/meshguard/meshguard/flowmodel"
)

// Baseline is issue 11's trivial baseline: a request's tuple is its method, its path (numbers
// in it templated as {id}), its query keys with the character classes of each value, its
// form or JSON body keys with theirs, and a size bucket of its body (the bit length of its
// size). A request scores 1/(1+n) for a tuple seen n times in learning: 1 when never seen.
// Classes are lower, upper, digit, space, other ASCII symbol, other byte (control or
// non-ASCII), as in bench/modsec's coarse baseline.
type Baseline struct{ seen map[string]int }

// NewBaseline returns an empty baseline.
func NewBaseline() *Baseline { return &Baseline{seen: map[string]int{}} }

// Learn counts f's tuple.
func (b *Baseline) Learn(f *flowmodel.Flow) { b.seen[Tuple(f)]++ }

// Score is 1/(1+n) for f's tuple seen n times.
func (b *Baseline) Score(f *flowmodel.Flow) float64 { return 1 / float64(1+b.seen[Tuple(f)]) }

// Tuple returns the baseline's tuple of f.
func Tuple(f *flowmodel.Flow) string {
	path, query, _ := strings.Cut(f.Path, "?")
	var b strings.Builder
	b.WriteString(f.Method)
	b.WriteByte(' ')
	for i, seg := range strings.Split(path, "/") {
		if i > 0 {
			b.WriteByte('/')
		}
		b.WriteString(templateSeg(seg))
	}
	b.WriteString(" q:")
	b.WriteString(strings.Join(formPairs(query), ","))
	mt, _, _ := mime.ParseMediaType(f.ContentType)
	var body []string
	switch mt {
	case "application/x-www-form-urlencoded":
		body = formPairs(f.Body)
	case "application/json":
		var v any
		if json.Unmarshal([]byte(f.Body), &v) == nil {
			body = jsonPairs(nil, "", v)
			slices.Sort(body)
		} else {
			body = []string{"{bad json}"}
		}
	}
	b.WriteString(" b:")
	b.WriteString(strings.Join(body, ","))
	fmt.Fprintf(&b, " s:%d", bits.Len(uint(len(f.Body))))
	return b.String()
}

// templateSeg replaces the digits of a path segment that has any by {id}: "123.jpg" is
// "{id}.jpg".
func templateSeg(seg string) string {
	i := strings.IndexAny(seg, "0123456789")
	if i < 0 {
		return seg
	}
	j := i
	for j < len(seg) && seg[j] >= '0' && seg[j] <= '9' {
		j++
	}
	return seg[:i] + "{id}" + templateSeg(seg[j:])
}

// formPairs returns the sorted key:classes pairs of a query or form body.
func formPairs(s string) []string {
	var out []string
	for kv := range strings.SplitSeq(s, "&") {
		if kv == "" {
			continue
		}
		k, v, _ := strings.Cut(kv, "=")
		if d, err := url.QueryUnescape(k); err == nil {
			k = d
		}
		if d, err := url.QueryUnescape(v); err == nil {
			v = d
		}
		out = append(out, k+":"+classes(v))
	}
	slices.Sort(out)
	return out
}

func jsonPairs(out []string, key string, v any) []string {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			out = jsonPairs(out, key+"."+k, e)
		}
	case []any:
		for _, e := range v {
			out = jsonPairs(out, key+"[]", e)
		}
	default:
		out = append(out, key+":"+classes(fmt.Sprint(v)))
	}
	return out
}

// classes names the character classes of v: a, A, 0, space, ! (other ASCII symbol), ~ (other
// byte), in that order.
func classes(v string) string {
	var has [6]bool
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case 'a' <= c && c <= 'z':
			has[0] = true
		case 'A' <= c && c <= 'Z':
			has[1] = true
		case '0' <= c && c <= '9':
			has[2] = true
		case c == ' ':
			has[3] = true
		case c > ' ' && c < 0x7f:
			has[4] = true
		default:
			has[5] = true
		}
	}
	out := make([]byte, 0, 6)
	for i, h := range has {
		if h {
			out = append(out, "aA0 !~"[i])
		}
	}
	return string(out)
}
