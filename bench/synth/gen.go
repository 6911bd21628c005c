package main

import (
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"time"

	"github.com/meshguard/meshguard/flowmodel"
)

// Attack kinds, the labels of injected events.
const (
	kindNewIP      = "new_ip"      // beacons to an IP no service uses, no Host
	kindHostSpoof  = "host_spoof"  // a known Host header sent to an IP that name does not resolve to
	kindNewShape   = "new_shape"   // a request shape never sent, to a known host at a known IP
	kindRateChange = "rate_change" // about 5 requests an hour to a known destination become 50
	kindSlowExfil  = "slow_exfil"  // large uploads every half hour for a day, to a known upload host
)

var kinds = []string{kindNewIP, kindHostSpoof, kindNewShape, kindRateChange, kindSlowExfil}

// genConfig is what a synthetic suite is made from; the same config gives the same bytes.
type genConfig struct {
	Seed uint64
	// Days of event time from start; LearnDays of them are left free of attacks, for
	// learning.
	Days, LearnDays int
	// Scale multiplies the services' request rates (and the attacked rate of rate_change).
	Scale float64
	// Instances is how many times each attack kind is injected.
	Instances int
}

// start is the suite's first instant, a Monday.
var start = time.Date(2026, 1, 5, 0, 0, 0, 0, time.UTC)

func (c genConfig) check() error {
	var errs []error
	if c.Days < 2 || c.Days > 366 {
		errs = append(errs, fmt.Errorf("days must be 2 to 366, got %d", c.Days))
	}
	if c.LearnDays < 1 || c.LearnDays >= c.Days {
		errs = append(errs, fmt.Errorf("learn days must be at least 1 and below days (%d), got %d", c.Days, c.LearnDays))
	}
	if !(c.Scale > 0 && c.Scale <= 100) {
		errs = append(errs, fmt.Errorf("scale must be in (0, 100], got %v", c.Scale))
	}
	if c.Instances < 1 || c.Instances > 100 {
		errs = append(errs, fmt.Errorf("instances must be 1 to 100, got %d", c.Instances))
	}
	return errors.Join(errs...)
}

// record is one generated event: a flow event plus its ground truth.
type record struct {
	flowmodel.Event
	// Label is the attack kind, "" for normal traffic.
	Label string `json:"label"`
	// Attack names the attack instance ("new_ip-2").
	Attack string `json:"attack,omitempty"`
}

// attack is one scheduled attack instance.
type attack struct {
	id, kind string
	service  int
	from, to float64 // hours from start
}

type generator struct {
	cfg genConfig
	end float64 // hours
	out []record
}

// generate returns the suite's events sorted by time (ties in generation order) and the
// attack schedule.
func generate(cfg genConfig) ([]record, []attack, error) {
	if err := cfg.check(); err != nil {
		return nil, nil, err
	}
	g := &generator{cfg: cfg, end: float64(cfg.Days * 24)}
	attacks := g.schedule()
	// Every service is deployed at the start and calls its main destination at once, so its
	// learning starts then.
	for i := range estate {
		s := &estate[i]
		r := g.rng("startup|" + s.name)
		g.emit(r, s, &s.dests[s.main], "", &s.dests[s.main].shapes[0], float64(i)/3600, "", "")
	}
	for i := range estate {
		s := &estate[i]
		for j := range s.dests {
			var skip []attack
			for _, a := range attacks {
				if a.kind == kindRateChange && a.service == i && s.low == j {
					skip = append(skip, a)
				}
			}
			g.background(s, &s.dests[j], skip)
		}
		if s.batch != nil {
			g.batch(s)
		}
	}
	for _, a := range attacks {
		g.inject(a)
	}
	slices.SortStableFunc(g.out, func(a, b record) int { return a.Time.Compare(b.Time.Time) })
	return g.out, attacks, nil
}

// rng returns a random stream of its own for one part of the suite, so that changing one
// part leaves the others' events as they were.
func (g *generator) rng(part string) *rand.Rand {
	h := fnv.New64a()
	h.Write([]byte(part))
	return rand.New(rand.NewPCG(g.cfg.Seed, h.Sum64()))
}

// schedule spreads the attack instances over the days after learning: kinds interleaved,
// each in a slot of its own, starting at a random point of the slot's first 70%.
func (g *generator) schedule() []attack {
	r := g.rng("schedule")
	from := float64(g.cfg.LearnDays * 24)
	slots := len(kinds) * g.cfg.Instances
	width := (g.end - from) / float64(slots)
	var out []attack
	for i := 0; i < g.cfg.Instances; i++ {
		for k, kind := range kinds {
			slot := i*len(kinds) + k
			a := attack{id: kind + "-" + strconv.Itoa(i+1), kind: kind}
			a.from = from + (float64(slot)+0.05+0.65*r.Float64())*width
			a.to = min(a.from+duration(kind), g.end)
			switch kind {
			case kindSlowExfil:
				uploads := []int{2, 3} // services with an upload destination
				a.service = uploads[i%len(uploads)]
			default:
				a.service = (k + 2*i) % len(estate)
			}
			out = append(out, a)
		}
	}
	return out
}

// duration is how long an attack instance lasts, in hours.
func duration(kind string) float64 {
	switch kind {
	case kindNewIP:
		return 6
	case kindHostSpoof:
		return 4
	case kindNewShape:
		return 2
	case kindRateChange:
		return 3
	default: // slow exfiltration
		return 24
	}
}

// rate is the request rate of s to d at hour t, per hour.
func (g *generator) rate(s *service, d *dest, t float64) float64 {
	day := start.Add(time.Duration(t * float64(time.Hour))).Weekday()
	hod := math.Mod(t, 24)
	r := d.rate * g.cfg.Scale * (1 + s.amplitude*math.Cos(2*math.Pi*(hod-s.peak)/24))
	if day == time.Saturday || day == time.Sunday {
		r *= s.weekend
	}
	return r
}

// background draws s's requests to d as a Poisson process with the service's daily cycle
// (thinning), leaving out the windows in skip.
func (g *generator) background(s *service, d *dest, skip []attack) {
	r := g.rng("background|" + s.name + "|" + d.host)
	peak := d.rate * g.cfg.Scale * (1 + s.amplitude) * max(1, s.weekend)
	for t := r.ExpFloat64() / peak; t < g.end; t += r.ExpFloat64() / peak {
		if r.Float64()*peak > g.rate(s, d, t) {
			continue
		}
		if slices.ContainsFunc(skip, func(a attack) bool { return t >= a.from && t < a.to }) {
			continue
		}
		g.emit(r, s, d, "", pick(r, d.shapes), t, "", "")
	}
}

// batch emits s's weekly job.
func (g *generator) batch(s *service) {
	b := s.batch
	r := g.rng("batch|" + s.name)
	for day := 0; day < g.cfg.Days; day++ {
		if int(start.AddDate(0, 0, day).Weekday()) != b.weekday {
			continue
		}
		for k := 0; k < b.count; k++ {
			t := float64(day*24) + b.hour + float64(k)*20/3600
			g.emit(r, s, &b.dest, "", &b.dest.shapes[0], t, "", "")
		}
	}
}

// attackerIP is an address in 192.0.2.0/24, which no service uses.
func attackerIP(r *rand.Rand) string {
	return "192.0.2." + strconv.Itoa(1+r.IntN(254))
}

// inject emits one attack instance.
func (g *generator) inject(a attack) {
	r := g.rng("attack|" + a.id)
	s := &estate[a.service]
	every := func(lo, hi float64, emit func(t float64)) {
		for t := a.from; t < a.to; t += (lo + (hi-lo)*r.Float64()) / 60 {
			emit(t)
		}
	}
	switch a.kind {
	case kindNewIP:
		c2 := &dest{ips: []string{attackerIP(r)}, port: 443}
		beacon := &shape{userAgent: "Go-http-client/1.1", method: "POST", path: "/api/v2/sync", headers: []string{"content-type", "user-agent"}, contentType: "application/octet-stream", req: size{400, 0.3}, resp: size{120, 0.5}, status: 200}
		every(5, 15, func(t float64) { g.emit(r, s, c2, "", beacon, t, a.kind, a.id) })
	case kindHostSpoof:
		d := &s.dests[s.main]
		ip := attackerIP(r)
		every(6, 18, func(t float64) { g.emit(r, s, d, ip, pick(r, d.shapes), t, a.kind, a.id) })
	case kindNewShape:
		d := &s.dests[s.main]
		export := &shape{userAgent: "python-requests/2.31", method: "GET", path: "/internal/admin/export?limit=100000", headers: []string{"accept", "authorization", "user-agent", "x-debug"}, resp: size{3e6, 0.3}, status: 200}
		every(4, 12, func(t float64) { g.emit(r, s, d, "", export, t, a.kind, a.id) })
	case kindRateChange:
		d := &s.dests[s.low]
		attacked := 50 * g.cfg.Scale
		for t := a.from + r.ExpFloat64()/attacked; t < a.to; t += r.ExpFloat64() / attacked {
			g.emit(r, s, d, "", pick(r, d.shapes), t, a.kind, a.id)
		}
	case kindSlowExfil:
		d := &s.dests[s.upload]
		up := d.shapes[0]
		up.req = size{250000, 0.3}
		every(20, 40, func(t float64) { g.emit(r, s, d, "", &up, t, a.kind, a.id) })
	}
}

// pick draws a shape by weight.
func pick(r *rand.Rand, shapes []shape) *shape {
	var total float64
	for i := range shapes {
		total += shapes[i].weight
	}
	x := r.Float64() * total
	for i := range shapes {
		if x -= shapes[i].weight; x < 0 {
			return &shapes[i]
		}
	}
	return &shapes[len(shapes)-1]
}

// ipOf draws one of d's addresses by weight.
func ipOf(r *rand.Rand, d *dest) string {
	if len(d.ips) == 1 {
		return d.ips[0]
	}
	if d.ipWeights == nil {
		return d.ips[r.IntN(len(d.ips))]
	}
	x := r.Float64()
	for i, w := range d.ipWeights {
		if x -= w; x < 0 {
			return d.ips[i]
		}
	}
	return d.ips[len(d.ips)-1]
}

func (z size) draw(r *rand.Rand) *int64 {
	if z.median == 0 {
		return nil
	}
	n := int64(math.Round(z.median * math.Exp(z.sigma*r.NormFloat64())))
	return &n
}

// emit appends one event of s to d at hour t. ip overrides d's addresses when set.
func (g *generator) emit(r *rand.Rand, s *service, d *dest, ip string, sh *shape, t float64, label, id string) {
	if ip == "" {
		ip = ipOf(r, d)
	}
	var rec record
	rec.Time.Time = start.Add(time.Duration(math.Round(t*3600e3)) * time.Millisecond)
	rec.Service = s.name
	rec.Destination.IP = ip
	rec.Destination.Port = d.port
	rec.Destination.Host = d.host
	rec.Request.Method = sh.method
	rec.Request.Path = fillPath(r, sh.path)
	if len(sh.headers) > 0 {
		rec.Request.Headers = make(map[string]string, len(sh.headers))
		for _, k := range sh.headers {
			rec.Request.Headers[k] = headerValue(k, s, sh)
		}
	}
	rec.Request.BodyBytes = sh.req.draw(r)
	rec.Response.Status = sh.status
	rec.Response.BodyBytes = sh.resp.draw(r)
	if r.Float64() < 0.01 { // an upstream failure now and then
		rec.Response.Status = 503
		n := int64(19)
		rec.Response.BodyBytes = &n
	}
	rec.Label, rec.Attack = label, id
	g.out = append(g.out, rec)
}

func fillPath(r *rand.Rand, p string) string {
	out := make([]byte, 0, len(p)+8)
	for i := 0; i < len(p); i++ {
		switch {
		case p[i] == '{' && len(p) >= i+4 && p[i:i+4] == "{id}":
			out = strconv.AppendInt(out, 100000+r.Int64N(900000), 10)
			i += 3
		case p[i] == '{' && len(p) >= i+6 && p[i:i+6] == "{word}":
			out = append(out, searchWords[r.IntN(len(searchWords))]...)
			i += 5
		default:
			out = append(out, p[i])
		}
	}
	return string(out)
}

// headerValue is a fixed value per header: only the names matter to the model.
func headerValue(k string, s *service, sh *shape) string {
	switch k {
	case "content-type":
		return sh.contentType
	case "user-agent":
		if sh.userAgent != "" {
			return sh.userAgent
		}
		return s.name + "/1.0"
	case "accept":
		return "application/json"
	case "authorization", "x-api-key":
		return "redacted"
	case "content-encoding":
		return "gzip"
	}
	return "-"
}
