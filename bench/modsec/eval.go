package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/meshguard/meshguard/bench/roc"
	"github.com/meshguard/meshguard/flowmodel/param"
)

// Files of the dataset folder.
const (
	legitFile   = "legitimate_openappsec_6.json"
	sqlmapFile  = "malicious_sqlmap.json"
	handFile    = "malicious_openappsec.json"
	learnShare  = 0.7
	maxFPRate   = 0.01
	defaultSeed = 1
)

// Data is the dataset: legitimate queries and injection payloads (raw, percent-encoded
// values: the files' "p=" placeholder name removed).
type Data struct {
	Legit          []string
	Sqlmap, Handed []string
}

// Load reads the dataset from dir.
func Load(dir string) (*Data, error) {
	var d Data
	var errs []error
	read := func(name string, out *[]string) {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err == nil {
			err = json.Unmarshal(b, out)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		}
	}
	read(legitFile, &d.Legit)
	read(sqlmapFile, &d.Sqlmap)
	read(handFile, &d.Handed)
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	for _, ps := range [][]string{d.Sqlmap, d.Handed} {
		for i, p := range ps {
			ps[i] = strings.TrimPrefix(p, "p=")
		}
	}
	return &d, nil
}

// Sample is one scored query.
type Sample struct {
	Query    string
	Positive bool
	Source   string // "legit", "sqlmap" or "openappsec"
	Param    string // the parameter whose value was replaced
}

// Split divides the legitimate queries (shuffled with seed) into learning and test, and
// builds the test samples: every test query as it is (negative), and every payload once in
// a random test query, replacing the value of a random parameter that has one (positive).
//
// With distinct set, repeated legitimate queries are kept once (in file order) before the
// split, so that no test query is a copy of a learned one.
func Split(d *Data, seed uint64, distinct bool) (learn []string, test []Sample) {
	rng := rand.New(rand.NewPCG(seed, 0x6d6f6473656300))
	legit := append([]string(nil), d.Legit...)
	if distinct {
		seen := map[string]bool{}
		legit = legit[:0]
		for _, q := range d.Legit {
			if !seen[q] {
				seen[q] = true
				legit = append(legit, q)
			}
		}
	}
	rng.Shuffle(len(legit), func(i, j int) { legit[i], legit[j] = legit[j], legit[i] })
	n := int(float64(len(legit)) * learnShare)
	learn, rest := legit[:n], legit[n:]
	for _, q := range rest {
		test = append(test, Sample{Query: q, Source: "legit"})
	}
	for _, src := range []struct {
		name     string
		payloads []string
	}{{"sqlmap", d.Sqlmap}, {"openappsec", d.Handed}} {
		for _, p := range src.payloads {
			for {
				q := rest[rng.IntN(len(rest))]
				if inj, name, ok := Inject(q, p, rng); ok {
					test = append(test, Sample{Query: inj, Positive: true, Source: src.name, Param: name})
					break
				}
			}
		}
	}
	return learn, test
}

// Inject replaces the value of a random parameter of query q (one with '=') by payload.
func Inject(q, payload string, rng *rand.Rand) (string, string, bool) {
	pairs := strings.Split(q, "&")
	var with []int
	for i, kv := range pairs {
		if strings.Contains(kv, "=") {
			with = append(with, i)
		}
	}
	if len(with) == 0 {
		return "", "", false
	}
	i := with[rng.IntN(len(with))]
	k, _, _ := strings.Cut(pairs[i], "=")
	pairs[i] = k + "=" + payload
	return strings.Join(pairs, "&"), k, true
}

// Scorer scores queries after learning from some.
type Scorer interface {
	Learn(q string)
	Score(q string) (score float64, alert bool)
}

// Meshguard is flowmodel/param with its defaults, every query in one scope: the dataset has
// no paths, so one endpoint stands for the service.
type Meshguard struct{ set *param.Set }

// NewMeshguard returns the param scorer with cfg.
func NewMeshguard(cfg param.Config) (*Meshguard, error) {
	s, err := param.New(cfg)
	return &Meshguard{set: s}, err
}

func (m *Meshguard) Learn(q string) { m.set.Learn(0, &param.Request{Query: q}) }

// alertScore is flowmodel's alarm level: a detector alerts from score 0.5.
const alertScore = 0.5

func (m *Meshguard) Score(q string) (float64, bool) {
	r := m.set.Judge(0, &param.Request{Query: q})
	return r.Score, r.Score >= alertScore
}

// Baseline is the trivial baseline of issue 11: a query scores the share of its parameters
// whose pair (name, character classes of the decoded value) was not seen in learning, and
// alerts when there is one. Coarse classes are lower, upper, digit, space, other ASCII
// symbol and other byte (control or non-ASCII); fine classes are lower, upper, digit,
// non-ASCII, and every other byte on its own.
type Baseline struct {
	fine bool
	seen map[string]bool
}

// NewBaseline returns an empty baseline, with fine classes or coarse ones.
func NewBaseline(fine bool) *Baseline { return &Baseline{fine: fine, seen: map[string]bool{}} }

func (b *Baseline) pairs(q string) []string {
	var out []string
	for _, kv := range strings.Split(q, "&") {
		if kv == "" {
			continue
		}
		k, v, _ := strings.Cut(kv, "=")
		if dk, err := url.QueryUnescape(k); err == nil {
			k = dk
		}
		if dv, err := url.QueryUnescape(v); err == nil {
			v = dv
		}
		var cls [32]byte // a bit per class, named by a representative byte
		set := func(c byte) { cls[c>>3] |= 1 << (c & 7) }
		for i := 0; i < len(v); i++ {
			c := v[i]
			switch {
			case 'a' <= c && c <= 'z':
				set('a')
			case 'A' <= c && c <= 'Z':
				set('A')
			case '0' <= c && c <= '9':
				set('0')
			case c >= 0x80:
				set(0x80)
			case !b.fine && c < ' ' || c == 0x7f:
				set(0x80)
			case !b.fine && c > ' ':
				set('!')
			default:
				set(c)
			}
		}
		out = append(out, k+"\x00"+string(cls[:]))
	}
	return out
}

func (b *Baseline) Learn(q string) {
	for _, p := range b.pairs(q) {
		b.seen[p] = true
	}
}

func (b *Baseline) Score(q string) (float64, bool) {
	ps := b.pairs(q)
	unseen := 0
	for _, p := range ps {
		if !b.seen[p] {
			unseen++
		}
	}
	if len(ps) == 0 {
		return 0, false
	}
	return float64(unseen) / float64(len(ps)), unseen > 0
}

// Figures are one scorer's results on one set of positives against all negatives.
type Figures struct {
	Positives, Negatives int
	AUC                  float64
	// RecallAt1 is the best recall at a threshold flagging at most 1% of negatives.
	RecallAt1 float64
	// AlertRecall and AlertFPR are the shares of positives and negatives the scorer's own
	// alerts flag.
	AlertRecall, AlertFPR float64
}

// Measure scores test with s (after learning learn) and returns the figures for every
// positive source, and "all".
func Measure(s Scorer, learn []string, test []Sample) (map[string]Figures, error) {
	for _, q := range learn {
		s.Learn(q)
	}
	var neg []roc.Sample
	negAlerts := 0
	pos := map[string][]roc.Sample{}
	posAlerts := map[string]int{}
	for _, t := range test {
		score, alert := s.Score(t.Query)
		if !t.Positive {
			neg = append(neg, roc.Sample{Score: score})
			if alert {
				negAlerts++
			}
			continue
		}
		for _, k := range []string{t.Source, "all"} {
			pos[k] = append(pos[k], roc.Sample{Score: score, Positive: true})
			if alert {
				posAlerts[k]++
			}
		}
	}
	out := map[string]Figures{}
	for k, ps := range pos {
		c, err := roc.New(append(append([]roc.Sample(nil), neg...), ps...))
		if err != nil {
			return nil, err
		}
		rec, _, _ := c.RecallAtFalsePositives(maxFPRate * float64(len(neg)))
		out[k] = Figures{
			Positives: len(ps), Negatives: len(neg), AUC: c.AUC(), RecallAt1: rec,
			AlertRecall: float64(posAlerts[k]) / float64(len(ps)),
			AlertFPR:    float64(negAlerts) / float64(len(neg)),
		}
	}
	return out, nil
}
