package main

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/meshguard/meshguard/flowmodel"
)

// genConfig says what to generate.
type genConfig struct {
	Seed uint64
	// LearnSessions and TestSessions are the browser sessions of the learning day and of the
	// test half-day after it.
	LearnSessions, TestSessions int
	// PerClass is how many attacks of each class are mixed into the test part.
	PerClass int
	// SQLi holds the SQL injection payloads (percent-encoded); without them the sqli and
	// smuggle classes are left out.
	SQLi []string
}

func (c genConfig) check() error {
	var errs []error
	if c.LearnSessions < 1 || c.TestSessions < 1 {
		errs = append(errs, errors.New("sessions must be positive"))
	}
	if c.PerClass < 1 {
		errs = append(errs, errors.New("attacks per class must be positive"))
	}
	return errors.Join(errs...)
}

// Where the application lives and who calls it.
const (
	service  = "shop/ingress"
	destHost = "shop.example.com"
	destIP   = "192.0.2.15"
	destPort = 8080
)

// start is the event time of the first session; the model learns for learnWindow from the
// service's first request, the default learn window of `meshguard replay`.
var start = time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC)

const (
	learnWindow = 24 * time.Hour
	testSpan    = 12 * time.Hour
)

// record is one flow event as written (flowmodel.Event, the format meshguard replay reads),
// with its label.
type record struct {
	flowmodel.Event
	Label  string `json:"label,omitempty"`
	Attack string `json:"attack,omitempty"`
}

type timed struct {
	t     time.Time
	req   *Req
	label string
}

// sessions returns the requests of n sessions starting uniformly in [from, from+span).
func sessions(r *rand.Rand, n int, from time.Time, span time.Duration) []timed {
	var out []timed
	for range n {
		s := newSession(r)
		t := from.Add(time.Duration(r.Int64N(int64(span))))
		for _, q := range s.walk() {
			out = append(out, timed{t: t, req: q})
			// Static files follow their page at once; pages follow reading.
			if strings.HasPrefix(q.Path, "/static/") || strings.HasPrefix(q.Path, "/images/") {
				t = t.Add(time.Duration(r.IntN(300)) * time.Millisecond)
			} else {
				t = t.Add(time.Duration(2+r.IntN(40)) * time.Second)
			}
		}
	}
	return out
}

// generate returns the labelled events of cfg, in time order.
func generate(c genConfig) ([]record, error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	r := rand.New(rand.NewPCG(c.Seed, 0x7765625f73686f70))
	learn := sessions(r, c.LearnSessions, start, learnWindow-time.Hour)
	// The test part starts an hour after the learn window, which runs from the first request.
	test := sessions(r, c.TestSessions, start.Add(learnWindow+time.Hour), testSpan)
	all := append(learn, test...)
	for _, class := range Classes {
		if (class == ClassSQLi || class == ClassSmuggle) && len(c.SQLi) == 0 {
			continue
		}
		for made := 0; made < c.PerClass; {
			base := test[r.IntN(len(test))]
			a := makeAttack(class, base.req, r, c.SQLi)
			if a == nil {
				continue
			}
			all = append(all, timed{t: base.t.Add(time.Duration(1+r.IntN(1000)) * time.Millisecond), req: a, label: class})
			made++
		}
	}
	slices.SortStableFunc(all, func(a, b timed) int { return a.t.Compare(b.t) })
	out := make([]record, len(all))
	for i, e := range all {
		out[i] = toRecord(e)
		if e.label != "" {
			out[i].Attack = fmt.Sprintf("%s-%d", e.label, i)
		}
	}
	return out, nil
}

func toRecord(e timed) record {
	var rec record
	q := e.req
	rec.Time.Time = e.t
	rec.Service = service
	rec.Destination.IP, rec.Destination.Port, rec.Destination.Host = destIP, destPort, destHost
	rec.Request.Method = q.Method
	rec.Request.Path = q.Target()
	h := map[string]string{
		"user-agent":      q.Session.ua,
		"accept":          "text/html,application/xhtml+xml,*/*;q=0.8",
		"accept-language": q.Session.lang,
		"cookie":          q.Session.cookie,
	}
	if strings.HasPrefix(q.Path, "/api/") {
		h["accept"] = "application/json"
		h["x-requested-with"] = "XMLHttpRequest"
	}
	if body, ct := q.Body(); body != "" {
		h["content-type"] = ct
		n := int64(len(body))
		rec.Request.BodyBytes = &n
		rec.Request.Body = body
	}
	rec.Request.Headers = h
	rec.Label = e.label
	return rec
}

// loadSQLi reads the modsec-learn injection payloads from dir (sqlmap's and the hand-written
// ones), their "p=" placeholder name removed.
func loadSQLi(dir string) ([]string, error) {
	var out []string
	for _, name := range []string{"malicious_sqlmap.json", "malicious_openappsec.json"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil, err
		}
		var ps []string
		if err := json.Unmarshal(b, &ps); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		for _, p := range ps {
			if p = strings.TrimPrefix(p, "p="); p != "" {
				out = append(out, p)
			}
		}
	}
	slices.SortFunc(out, cmp.Compare)
	return slices.Compact(out), nil
}
