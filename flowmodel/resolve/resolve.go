// Package resolve answers "which IPs does this host name resolve to, and until when", for
// checking that a request's Host agrees with the IP it was sent to. Whether they disagree
// (reason host_ip_mismatch) is the model's decision; this package only resolves.
//
// Lookup never waits on DNS: it returns what is cached and, when the name is missing or
// stale, starts a background refresh. Answers are cached with their DNS TTL (clamped), in a
// bounded LRU; negative answers (NXDOMAIN, no address records) are cached too; concurrent
// lookups of one name share one query; every lookup has a timeout.
//
// Queries go out with github.com/miekg/dns rather than net.Resolver because net.Resolver
// does not report TTLs, and an answer's lifetime is what this package is for.
//
// The package imports nothing else of meshguard, so flowmodel may depend on it.
package resolve

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/expirable"
	"github.com/miekg/dns"
)

// Answer is what a name resolves to.
type Answer struct {
	// Name is the name looked up: lower case, without a trailing dot.
	Name string
	// Addrs are the IPv4 and IPv6 addresses, sorted and distinct; empty when Negative.
	// Shared with the cache: the slice must not be modified.
	Addrs []netip.Addr
	// Expires is when the answer stops being fresh: the time it was fetched plus its
	// smallest TTL (clamped to [Config.MinTTL, Config.MaxTTL], or to Config.NegativeTTL at
	// most for a negative answer).
	Expires time.Time
	// Negative is set when the name does not exist or has no A or AAAA records.
	Negative bool
}

// Fresh reports whether the answer is still within its TTL at now.
func (a Answer) Fresh(now time.Time) bool { return now.Before(a.Expires) }

// Contains reports whether ip is one of the answer's addresses (IPv4-mapped IPv6 compares
// equal to IPv4).
func (a Answer) Contains(ip netip.Addr) bool {
	_, found := slices.BinarySearchFunc(a.Addrs, ip.Unmap().WithZone(""), netip.Addr.Compare)
	return found
}

// Config tunes a Resolver. The zero value of a field means its default.
type Config struct {
	// Servers are the DNS servers, "host:port", tried in order. Default: the nameservers
	// of ResolvConf.
	Servers []string
	// Search and NDots apply resolv.conf's search rule: a name with fewer than NDots dots
	// is tried with each search suffix first, then as is; other names as is first. With
	// Servers set they default to none and 1; otherwise to ResolvConf's.
	Search []string
	NDots  int
	// ResolvConf is the resolv.conf read for the defaults. Default /etc/resolv.conf.
	ResolvConf string

	// Timeout bounds one lookup: every server, name and record type. Default 2s.
	Timeout time.Duration
	// MaxEntries caps the names cached; the least recently used is dropped first. Default
	// 10,000.
	MaxEntries int
	// MinTTL and MaxTTL clamp the TTL of positive answers. Defaults 5s and 1h.
	MinTTL, MaxTTL time.Duration
	// NegativeTTL is how long a negative answer is cached when the server gives no SOA,
	// and the most it is cached otherwise. Default 30s.
	NegativeTTL time.Duration
	// MaxStale is how long past its expiry Lookup still returns an answer, while a refresh
	// is under way or failing. Default 5 minutes.
	MaxStale time.Duration
	// FailureBackoff is how long after a failed lookup (timeout, SERVFAIL) Lookup waits
	// before trying the name again. Default 5s.
	FailureBackoff time.Duration
	// MaxInflight caps the lookups running at once; Lookup starts no more past it (counted
	// in Stats.Dropped). Default 64.
	MaxInflight int

	// Now is the clock that expiry decisions use. Default time.Now.
	Now func() time.Time
	// Logger receives a debug line per failed lookup. Default: discard.
	Logger *slog.Logger
}

// Defaults for zero Config fields.
const (
	DefaultTimeout        = 2 * time.Second
	DefaultMaxEntries     = 10_000
	DefaultMinTTL         = 5 * time.Second
	DefaultMaxTTL         = time.Hour
	DefaultNegativeTTL    = 30 * time.Second
	DefaultMaxStale       = 5 * time.Minute
	DefaultFailureBackoff = 5 * time.Second
	DefaultMaxInflight    = 64
	DefaultResolvConf     = "/etc/resolv.conf"
)

// Check applies defaults, reading ResolvConf when Servers is empty, and reports every
// problem in c.
func (c Config) Check() (Config, error) {
	var errs []error
	if len(c.Servers) == 0 {
		if c.ResolvConf == "" {
			c.ResolvConf = DefaultResolvConf
		}
		rc, err := dns.ClientConfigFromFile(c.ResolvConf)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("resolve: no servers given and %s: %w", c.ResolvConf, err))
		case len(rc.Servers) == 0:
			errs = append(errs, fmt.Errorf("resolve: no servers given and none in %s", c.ResolvConf))
		default:
			for _, s := range rc.Servers {
				c.Servers = append(c.Servers, net.JoinHostPort(s, rc.Port))
			}
			if c.Search == nil {
				c.Search = rc.Search
			}
			if c.NDots == 0 {
				c.NDots = rc.Ndots
			}
		}
	}
	for _, s := range c.Servers {
		if _, _, err := net.SplitHostPort(s); err != nil {
			errs = append(errs, fmt.Errorf("resolve: server %q: %w", s, err))
		}
	}
	if c.NDots <= 0 {
		c.NDots = 1
	}
	positive(&errs, "timeout", &c.Timeout, DefaultTimeout)
	positive(&errs, "min TTL", &c.MinTTL, DefaultMinTTL)
	positive(&errs, "max TTL", &c.MaxTTL, DefaultMaxTTL)
	positive(&errs, "negative TTL", &c.NegativeTTL, DefaultNegativeTTL)
	positive(&errs, "max stale", &c.MaxStale, DefaultMaxStale)
	positive(&errs, "failure backoff", &c.FailureBackoff, DefaultFailureBackoff)
	if c.MinTTL > c.MaxTTL {
		errs = append(errs, fmt.Errorf("resolve: min TTL %v exceeds max TTL %v", c.MinTTL, c.MaxTTL))
	}
	positive(&errs, "max entries", &c.MaxEntries, DefaultMaxEntries)
	positive(&errs, "max in-flight lookups", &c.MaxInflight, DefaultMaxInflight)
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c, errors.Join(errs...)
}

// positive sets a zero *v to def and adds an error to errs for a negative one.
func positive[T int | time.Duration](errs *[]error, name string, v *T, def T) {
	switch {
	case *v == 0:
		*v = def
	case *v < 0:
		*errs = append(*errs, fmt.Errorf("resolve: %s must be positive, got %v", name, *v))
	}
}

// Errors of Resolve.
var (
	ErrClosed   = errors.New("resolve: resolver closed")
	ErrBusy     = errors.New("resolve: too many lookups in flight")
	ErrBadName  = errors.New("resolve: not a host name")
	errNoServer = errors.New("no server answered")
)

// entry is a cached name. Entries are never modified once cached: an update replaces them.
type entry struct {
	ans     Answer
	ok      bool      // ans holds an answer; false after failures only
	retryAt time.Time // after a failure: no new lookup before this
}

// call is one lookup in flight.
type call struct {
	done chan struct{}
	ans  Answer
	err  error
}

// Resolver is a caching DNS resolver. It is safe for concurrent use.
type Resolver struct {
	cfg   Config
	cache *expirable.LRU[string, *entry]
	udp   *dns.Client
	tcp   *dns.Client

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	calls  map[string]*call
	closed bool

	hits, stale, misses, lookups, failures, dropped atomic.Int64

	// waiting, when set (by tests, before any Resolve), is called by Resolve with the
	// lookup it is about to wait on: an event for "every caller has joined the lookup".
	waiting func(*call)
}

// New returns a resolver.
func New(cfg Config) (*Resolver, error) {
	cfg, err := cfg.Check()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Resolver{
		cfg: cfg,
		// The LRU's own (wall-clock) expiry only frees memory of names nobody asks for any
		// more; freshness is decided on cfg.Now. Note that the LRU keeps one goroutine
		// running for good (golang-lru v2.0.7 cannot stop it).
		cache:  expirable.NewLRU[string, *entry](cfg.MaxEntries, nil, cfg.MaxTTL+cfg.MaxStale),
		udp:    &dns.Client{Net: "udp"},
		tcp:    &dns.Client{Net: "tcp"},
		ctx:    ctx,
		cancel: cancel,
		calls:  make(map[string]*call),
	}
	return r, nil
}

// normalize returns the cache key of a name (lower case, no trailing dot), or the address
// of an IP literal. It allocates only for a name that needs lower-casing.
func normalize(name string) (string, netip.Addr, error) {
	name = strings.TrimSuffix(strings.TrimSpace(name), ".")
	if name == "" || len(name) > 253 {
		return "", netip.Addr{}, fmt.Errorf("%w: %q", ErrBadName, name)
	}
	ipLike, upper := true, false
	for i := 0; i < len(name); i++ {
		switch c := name[i]; {
		case '0' <= c && c <= '9', c == '.':
		case c == ':', c == '[', c == ']', c == '%':
			// IPv6 (bracketed, zoned) literals; a host name has none of these.
			ip, err := netip.ParseAddr(strings.Trim(name, "[]"))
			if err != nil {
				return "", netip.Addr{}, fmt.Errorf("%w: %q", ErrBadName, name)
			}
			return "", ip.Unmap().WithZone(""), nil
		case 'a' <= c && c <= 'z', c == '-', c == '_':
			ipLike = false
		case 'A' <= c && c <= 'Z':
			ipLike, upper = false, true
		default:
			return "", netip.Addr{}, fmt.Errorf("%w: %q", ErrBadName, name)
		}
	}
	if ipLike {
		if ip, err := netip.ParseAddr(name); err == nil {
			return "", ip, nil
		}
	}
	if strings.HasPrefix(name, ".") || strings.Contains(name, "..") {
		return "", netip.Addr{}, fmt.Errorf("%w: %q", ErrBadName, name)
	}
	if upper {
		name = strings.ToLower(name)
	}
	return name, netip.Addr{}, nil
}

// literal is the answer for an IP literal: itself, for good.
func literal(ip netip.Addr) Answer {
	return Answer{Name: ip.String(), Addrs: []netip.Addr{ip}, Expires: time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)}
}

// Lookup returns the cached answer for name without waiting. When the name is not cached,
// or its answer is stale, it starts a background lookup (unless one is running, the name
// failed less than FailureBackoff ago, or MaxInflight lookups are running). A stale answer
// is returned for up to MaxStale past its expiry; check Answer.Fresh to tell. ok is false
// when there is nothing to return yet, or name is not a host name. An IP literal answers
// itself.
func (r *Resolver) Lookup(name string) (Answer, bool) {
	key, ip, err := normalize(name)
	if err != nil {
		return Answer{}, false
	}
	if ip.IsValid() {
		return literal(ip), true
	}
	now := r.cfg.Now()
	e, found := r.cache.Get(key)
	if found && e.ok && e.ans.Fresh(now) {
		r.hits.Add(1)
		return e.ans, true
	}
	if !found || !now.Before(e.retryAt) {
		// A refresh that cannot start (closed, or too many in flight) is counted there;
		// the caller gets what the cache has either way.
		_, _ = r.start(key)
	}
	if found && e.ok && now.Before(e.ans.Expires.Add(r.cfg.MaxStale)) {
		r.stale.Add(1)
		return e.ans, true
	}
	r.misses.Add(1)
	return Answer{}, false
}

// Fresh returns name's addresses when a fresh, positive answer is cached: the evidence a
// security decision may rest on (a stale answer may be an address the name has left, a
// negative one has none). Otherwise it returns false and, as Lookup does, starts a
// background lookup; it never waits. Its signature is flowmodel.Resolver's Lookup (see
// FreshOnly).
func (r *Resolver) Fresh(name string) ([]netip.Addr, bool) {
	a, ok := r.Lookup(name)
	if !ok || a.Negative || len(a.Addrs) == 0 || !a.Fresh(r.cfg.Now()) {
		return nil, false
	}
	return a.Addrs, true
}

// FreshOnly adapts a Resolver to flowmodel.Resolver: its Lookup is the Resolver's Fresh.
type FreshOnly struct{ R *Resolver }

// Lookup returns the fresh, positive answer for host (see Resolver.Fresh).
func (f FreshOnly) Lookup(host string) ([]netip.Addr, bool) { return f.R.Fresh(host) }

// Resolve returns a fresh answer for name, waiting for a lookup when the cache has none
// (sharing it with any lookup of the same name in flight). It fails when the lookup fails
// or ctx ends first.
func (r *Resolver) Resolve(ctx context.Context, name string) (Answer, error) {
	key, ip, err := normalize(name)
	if err != nil {
		return Answer{}, err
	}
	if ip.IsValid() {
		return literal(ip), nil
	}
	// The cache is checked under the lock that a finishing lookup caches its answer and
	// leaves r.calls under: a lookup still in r.calls has not cached yet, so a caller that
	// found no fresh answer never joins the lookup whose answer it has just found stale.
	r.mu.Lock()
	if e, found := r.cache.Get(key); found && e.ok && e.ans.Fresh(r.cfg.Now()) {
		r.mu.Unlock()
		r.hits.Add(1)
		return e.ans, nil
	}
	c, err := r.startLocked(key)
	r.mu.Unlock()
	if err != nil {
		return Answer{}, err
	}
	if r.waiting != nil {
		r.waiting(c)
	}
	select {
	case <-c.done:
		return c.ans, c.err
	case <-ctx.Done():
		return Answer{}, ctx.Err()
	}
}

// start returns the lookup of key in flight, starting one if there is none.
func (r *Resolver) start(key string) (*call, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.startLocked(key)
}

func (r *Resolver) startLocked(key string) (*call, error) {
	if r.closed {
		return nil, ErrClosed
	}
	if c := r.calls[key]; c != nil {
		return c, nil
	}
	if len(r.calls) >= r.cfg.MaxInflight {
		r.dropped.Add(1)
		return nil, ErrBusy
	}
	c := &call{done: make(chan struct{})}
	r.calls[key] = c
	r.lookups.Add(1)
	r.wg.Add(1)
	go r.run(key, c)
	return c, nil
}

func (r *Resolver) run(key string, c *call) {
	defer r.wg.Done()
	ctx, cancel := context.WithTimeout(r.ctx, r.cfg.Timeout)
	c.ans, c.err = r.query(ctx, key)
	cancel()
	now := r.cfg.Now()
	if c.err != nil {
		r.failures.Add(1)
		r.cfg.Logger.Debug("resolve: lookup failed", slog.String("name", key), slog.Any("error", c.err))
	}
	// The answer is cached and the call leaves the in-flight set at once: otherwise a
	// caller that saw the new answer cached could, later, still join this call and get
	// its answer after it has expired.
	r.mu.Lock()
	if c.err != nil {
		e := &entry{retryAt: now.Add(r.cfg.FailureBackoff)}
		if old, found := r.cache.Peek(key); found && old.ok {
			e.ans, e.ok = old.ans, true // keep serving the old answer while it is not too stale
		}
		r.cache.Add(key, e)
	} else {
		r.cache.Add(key, &entry{ans: c.ans, ok: true})
	}
	delete(r.calls, key)
	r.mu.Unlock()
	close(c.done)
}

// Close stops starting lookups, cancels those in flight and waits for them to end.
func (r *Resolver) Close() {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	r.cancel()
	r.wg.Wait()
}

// Stats counts what the resolver did.
type Stats struct {
	Hits     int64 // fresh answers returned from the cache
	Stale    int64 // stale answers returned by Lookup
	Misses   int64 // Lookup calls that had nothing to return
	Lookups  int64 // lookups started (each one name, every record type and server)
	Failures int64 // lookups that failed (timeout, server failure)
	Dropped  int64 // lookups not started because MaxInflight were running
	Entries  int   // names cached now
}

// Stats returns the counters.
func (r *Resolver) Stats() Stats {
	return Stats{
		Hits: r.hits.Load(), Stale: r.stale.Load(), Misses: r.misses.Load(), Lookups: r.lookups.Load(),
		Failures: r.failures.Load(), Dropped: r.dropped.Load(), Entries: r.cache.Len(),
	}
}
