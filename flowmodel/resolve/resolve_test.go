package resolve

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// zone is what the test server knows: records by owner name (fully qualified, lower case).
type zone map[string][]dns.RR

func rr(t testing.TB, s string) dns.RR {
	t.Helper()
	r, err := dns.NewRR(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// server is a real DNS server on loopback, UDP and TCP on one port. It answers from its
// zone, with NXDOMAIN (and an SOA) for unknown names, and counts the queries it gets.
type server struct {
	addr string
	zone zone
	soa  dns.RR
	// tcpOnly names get a truncated, empty answer over UDP.
	tcpOnly map[string]bool

	mu     sync.Mutex
	counts map[string]int // "name TYPE transport" → queries
	hold   chan struct{}  // when set, queries wait until it is closed
	held   chan struct{}  // receives once per query that starts waiting
}

func startServer(t *testing.T, z zone) *server {
	t.Helper()
	s := &server{zone: z, counts: make(map[string]int), tcpOnly: make(map[string]bool),
		soa: rr(t, "example.com. 3600 IN SOA ns.example.com. admin.example.com. 1 7200 900 1209600 20")}
	var pc net.PacketConn
	var ln net.Listener
	for range 20 { // find a port free for both UDP and TCP
		var err error
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		if ln, err = net.Listen("tcp", pc.LocalAddr().String()); err == nil {
			break
		}
		pc.Close()
		pc = nil
	}
	if pc == nil {
		t.Fatal("no port free for UDP and TCP")
	}
	s.addr = pc.LocalAddr().String()
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: s}, {Listener: ln, Handler: s}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go func() { _ = srv.ActivateAndServe() }()
		<-started
		t.Cleanup(func() { _ = srv.Shutdown() })
	}
	return s
}

func (s *server) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	q := req.Question[0]
	transport := w.RemoteAddr().Network()
	s.mu.Lock()
	s.counts[q.Name+" "+dns.TypeToString[q.Qtype]+" "+transport]++
	hold, held := s.hold, s.held
	rrs, known := s.zone[q.Name]
	tcpOnly := s.tcpOnly[q.Name]
	s.mu.Unlock()
	if hold != nil {
		held <- struct{}{}
		<-hold
	}
	resp := new(dns.Msg)
	resp.SetReply(req)
	switch {
	case !known:
		resp.Rcode = dns.RcodeNameError
		resp.Ns = []dns.RR{s.soa}
	case tcpOnly && transport == "udp":
		resp.Truncated = true
	default:
		for _, r := range rrs {
			if r.Header().Rrtype == q.Qtype || r.Header().Rrtype == dns.TypeCNAME {
				resp.Answer = append(resp.Answer, r)
			}
		}
		if len(resp.Answer) == 0 {
			resp.Ns = []dns.RR{s.soa}
		}
	}
	_ = w.WriteMsg(resp)
}

// count returns the queries for name (fully qualified) and type, over UDP and TCP.
func (s *server) count(name, typ string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.counts[name+" "+typ+" udp"] + s.counts[name+" "+typ+" tcp"]
}

func (s *server) countOver(name, typ, transport string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.counts[name+" "+typ+" "+transport]
}

func (s *server) total() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range s.counts {
		n += c
	}
	return n
}

// holdQueries makes queries wait until the returned release is called.
func (s *server) holdQueries() (held <-chan struct{}, release func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hold = make(chan struct{})
	s.held = make(chan struct{}, 100)
	hold := s.hold
	return s.held, func() { close(hold) }
}

// clock is a settable clock for expiry decisions.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

var epoch = time.Date(2026, 1, 2, 15, 4, 5, 0, time.UTC)

func testZone(t *testing.T) zone {
	return zone{
		"api.example.com.": {
			rr(t, "api.example.com. 60 IN A 203.0.113.7"),
			rr(t, "api.example.com. 60 IN A 203.0.113.8"),
			rr(t, "api.example.com. 30 IN AAAA 2001:db8::7"),
		},
		"www.example.com.":                 {rr(t, "www.example.com. 300 IN CNAME edge.example.net."), rr(t, "www.example.com. 300 IN A 198.51.100.1")},
		"v4only.example.com.":              {rr(t, "v4only.example.com. 120 IN A 192.0.2.1")},
		"empty.example.com.":               {},
		"zero.example.com.":                {rr(t, "zero.example.com. 0 IN A 192.0.2.2")},
		"long.example.com.":                {rr(t, "long.example.com. 86400 IN A 192.0.2.3")},
		"payments.shop.svc.cluster.local.": {rr(t, "payments.shop.svc.cluster.local. 5 IN A 10.96.3.4")},
	}
}

func newResolver(t *testing.T, cfg Config) *Resolver {
	t.Helper()
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

func addrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParseAddr(s)
	}
	return out
}

func TestResolve(t *testing.T) {
	srv := startServer(t, testZone(t))
	clk := &clock{now: epoch}
	r := newResolver(t, Config{Servers: []string{srv.addr}, Now: clk.Now})
	cases := []struct {
		name string
		want Answer
	}{
		{"api.example.com", Answer{Name: "api.example.com", Addrs: addrs("203.0.113.7", "203.0.113.8", "2001:db8::7"), Expires: epoch.Add(30 * time.Second)}},
		{"WWW.Example.COM.", Answer{Name: "www.example.com", Addrs: addrs("198.51.100.1"), Expires: epoch.Add(300 * time.Second)}},
		{"v4only.example.com", Answer{Name: "v4only.example.com", Addrs: addrs("192.0.2.1"), Expires: epoch.Add(120 * time.Second)}},
		// The SOA says min(3600, 20) seconds.
		{"nope.example.com", Answer{Name: "nope.example.com", Negative: true, Expires: epoch.Add(20 * time.Second)}},
		{"empty.example.com", Answer{Name: "empty.example.com", Negative: true, Expires: epoch.Add(20 * time.Second)}},
		// TTLs clamped to [MinTTL, MaxTTL].
		{"zero.example.com", Answer{Name: "zero.example.com", Addrs: addrs("192.0.2.2"), Expires: epoch.Add(DefaultMinTTL)}},
		{"long.example.com", Answer{Name: "long.example.com", Addrs: addrs("192.0.2.3"), Expires: epoch.Add(DefaultMaxTTL)}},
		{"192.0.2.9", literal(netip.MustParseAddr("192.0.2.9"))},
		{"[2001:db8::1]", literal(netip.MustParseAddr("2001:db8::1"))},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := r.Resolve(context.Background(), tc.name)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
	if got := srv.count("api.example.com.", "A") + srv.count("api.example.com.", "AAAA"); got != 2 {
		t.Errorf("%d queries for api.example.com, want 2 (A and AAAA)", got)
	}
	if _, err := r.Resolve(context.Background(), "bad name!"); !errors.Is(err, ErrBadName) {
		t.Errorf("Resolve(bad name) error %v, want ErrBadName", err)
	}
	a, _ := r.Resolve(context.Background(), "api.example.com")
	if !a.Contains(netip.MustParseAddr("::ffff:203.0.113.8")) || a.Contains(netip.MustParseAddr("203.0.113.9")) {
		t.Errorf("Contains is wrong for %v", a.Addrs)
	}
}

func TestLookupCachesAndExpires(t *testing.T) {
	srv := startServer(t, testZone(t))
	clk := &clock{now: epoch}
	r := newResolver(t, Config{Servers: []string{srv.addr}, Now: clk.Now, MaxStale: time.Minute})
	ctx := context.Background()

	// Nothing cached: no answer, and a lookup starts in the background.
	if a, ok := r.Lookup("api.example.com"); ok {
		t.Fatalf("first Lookup returned %+v", a)
	}
	first, err := r.Resolve(ctx, "api.example.com") // joins the lookup Lookup started
	if err != nil {
		t.Fatal(err)
	}
	if n := srv.count("api.example.com.", "A"); n != 1 {
		t.Fatalf("%d A queries after Lookup and Resolve, want 1", n)
	}

	// Fresh: answered from the cache, no query.
	clk.Advance(29 * time.Second)
	if a, ok := r.Lookup("api.example.com"); !ok || !a.Fresh(clk.Now()) || !reflect.DeepEqual(a, first) {
		t.Fatalf("Lookup at 29s = %+v, %v; want the cached fresh answer", a, ok)
	}
	if n := srv.count("api.example.com.", "A"); n != 1 {
		t.Fatalf("%d A queries at 29s, want 1", n)
	}

	// Stale (TTL 30s): the old answer, and a refresh.
	clk.Advance(2 * time.Second)
	a, ok := r.Lookup("api.example.com")
	if !ok || a.Fresh(clk.Now()) || !reflect.DeepEqual(a, first) {
		t.Fatalf("Lookup at 31s = %+v, %v; want the stale answer", a, ok)
	}
	second, err := r.Resolve(ctx, "api.example.com")
	if err != nil {
		t.Fatal(err)
	}
	if n := srv.count("api.example.com.", "A"); n != 2 {
		t.Fatalf("%d A queries after the refresh, want 2", n)
	}
	if want := epoch.Add(31 * time.Second).Add(30 * time.Second); !second.Expires.Equal(want) {
		t.Errorf("refreshed answer expires %v, want %v", second.Expires, want)
	}

	// Too stale: nothing, until a lookup answers.
	srv.mu.Lock()
	delete(srv.zone, "api.example.com.") // now NXDOMAIN
	srv.mu.Unlock()
	clk.Advance(30*time.Second + time.Minute + time.Second)
	if a, ok := r.Lookup("api.example.com"); ok {
		t.Fatalf("Lookup past MaxStale = %+v", a)
	}
	neg, err := r.Resolve(ctx, "api.example.com")
	if err != nil {
		t.Fatal(err)
	}
	if !neg.Negative {
		t.Fatalf("after the name was removed: %+v, want negative", neg)
	}
	// Negative answers are cached too.
	if a, ok := r.Lookup("api.example.com"); !ok || !a.Negative || !a.Fresh(clk.Now()) {
		t.Errorf("Lookup of a negative answer = %+v, %v", a, ok)
	}
	if n := srv.count("api.example.com.", "A"); n != 3 {
		t.Errorf("%d A queries, want 3", n)
	}
	st := r.Stats()
	if st.Lookups != 3 || st.Stale != 1 || st.Misses != 2 || st.Entries != 1 {
		t.Errorf("stats %+v: want 3 lookups, 1 stale, 2 misses, 1 entry", st)
	}
}

func TestConcurrentLookupsShareOneQuery(t *testing.T) {
	srv := startServer(t, testZone(t))
	r := newResolver(t, Config{Servers: []string{srv.addr}})
	held, release := srv.holdQueries()

	// Lookup never waits, even while the server sits on the query.
	start := time.Now()
	if _, ok := r.Lookup("www.example.com"); ok {
		t.Fatal("Lookup answered before any query")
	}
	<-held // the query reached the server
	if _, ok := r.Lookup("www.example.com"); ok {
		t.Fatal("Lookup answered while the query is held")
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Lookup took %v with the server holding the query", d)
	}

	// The lookup Lookup started, still held by the server: every Resolve must join it.
	r.mu.Lock()
	held1 := r.calls["www.example.com"]
	r.mu.Unlock()
	if held1 == nil {
		t.Fatal("no lookup in flight while the server holds the query")
	}
	var wg sync.WaitGroup
	answers := make([]Answer, 50)
	errs := make([]error, 50)
	joined := make(chan *call, len(answers))
	r.waiting = func(c *call) { joined <- c }
	for i := range answers {
		wg.Go(func() {
			answers[i], errs[i] = r.Resolve(context.Background(), "www.example.com")
		})
	}
	timeout := time.After(10 * time.Second)
	for i := range answers {
		select {
		case c := <-joined:
			if c != held1 {
				t.Errorf("Resolve %d waits on another lookup than the one in flight", i)
			}
		case <-timeout:
			t.Fatalf("%d of %d Resolve calls joined the lookup within 10s", i, len(answers))
		}
	}
	release()
	wg.Wait()
	for i := range answers {
		if errs[i] != nil || !answers[i].Contains(netip.MustParseAddr("198.51.100.1")) {
			t.Fatalf("Resolve %d: %+v, %v", i, answers[i], errs[i])
		}
	}
	if a, aaaa := srv.count("www.example.com.", "A"), srv.count("www.example.com.", "AAAA"); a != 1 || aaaa != 1 {
		t.Errorf("server got %d A and %d AAAA queries, want 1 and 1", a, aaaa)
	}
	if st := r.Stats(); st.Lookups != 1 {
		t.Errorf("%d lookups started, want 1", st.Lookups)
	}
}

// blackhole is a UDP socket that reads queries and never answers.
func blackhole(t *testing.T) (addr string, queries func() int) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	n := 0
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			mu.Lock()
			n++
			mu.Unlock()
		}
	}()
	t.Cleanup(func() { pc.Close() })
	return pc.LocalAddr().String(), func() int { mu.Lock(); defer mu.Unlock(); return n }
}

func TestTimeout(t *testing.T) {
	addr, queries := blackhole(t)
	clk := &clock{now: epoch}
	r := newResolver(t, Config{Servers: []string{addr}, Timeout: 300 * time.Millisecond, Now: clk.Now})

	start := time.Now()
	_, err := r.Resolve(context.Background(), "api.example.com")
	elapsed := time.Since(start)
	if err == nil {
		t.Fatal("Resolve against a server that never answers succeeded")
	}
	if elapsed < 250*time.Millisecond || elapsed > 2*time.Second {
		t.Errorf("Resolve gave up after %v, want about the 300ms timeout", elapsed)
	}
	if q := queries(); q != 2 {
		t.Errorf("server read %d queries, want 2 (A and AAAA)", q)
	}

	// Within the failure backoff Lookup starts nothing; after it, it tries again.
	if _, ok := r.Lookup("api.example.com"); ok {
		t.Error("Lookup after a failure answered")
	}
	if st := r.Stats(); st.Lookups != 1 || st.Failures != 1 {
		t.Errorf("stats %+v: want 1 lookup, 1 failure", st)
	}
	clk.Advance(DefaultFailureBackoff)
	r.Lookup("api.example.com")
	if st := r.Stats(); st.Lookups != 2 {
		t.Errorf("after the backoff, %d lookups started, want 2", st.Lookups)
	}

	// A context that ends first ends the wait, not the lookup.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := r.Resolve(ctx, "other.example.com"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Resolve with a short context: %v, want deadline exceeded", err)
	}
}

func TestFailureKeepsStaleAnswer(t *testing.T) {
	srv := startServer(t, testZone(t))
	hole, _ := blackhole(t)
	clk := &clock{now: epoch}
	// The good server first: the answer is cached. Then only the black hole.
	r := newResolver(t, Config{Servers: []string{srv.addr}, Now: clk.Now, Timeout: 200 * time.Millisecond})
	first, err := r.Resolve(context.Background(), "v4only.example.com")
	if err != nil {
		t.Fatal(err)
	}
	r.cfg.Servers = []string{hole}
	clk.Advance(121 * time.Second)
	if a, ok := r.Lookup("v4only.example.com"); !ok || !reflect.DeepEqual(a, first) {
		t.Fatalf("stale Lookup = %+v, %v", a, ok)
	}
	if _, err := r.Resolve(context.Background(), "v4only.example.com"); err == nil {
		t.Fatal("refresh against the black hole succeeded")
	}
	if a, ok := r.Lookup("v4only.example.com"); !ok || !reflect.DeepEqual(a, first) {
		t.Errorf("Lookup after a failed refresh = %+v, %v; want the stale answer", a, ok)
	}
}

func TestSecondServerAnswers(t *testing.T) {
	srv := startServer(t, testZone(t))
	hole, queries := blackhole(t)
	r := newResolver(t, Config{Servers: []string{hole, srv.addr}, Timeout: time.Second})
	a, err := r.Resolve(context.Background(), "v4only.example.com")
	if err != nil || !a.Contains(netip.MustParseAddr("192.0.2.1")) {
		t.Fatalf("Resolve = %+v, %v", a, err)
	}
	if queries() != 2 || srv.count("v4only.example.com.", "A") != 1 {
		t.Errorf("black hole got %d queries, server %d; want 2 and 1", queries(), srv.count("v4only.example.com.", "A"))
	}
}

func TestSearchDomains(t *testing.T) {
	srv := startServer(t, testZone(t))
	r := newResolver(t, Config{Servers: []string{srv.addr}, Search: []string{"shop.svc.cluster.local", "svc.cluster.local"}, NDots: 5})
	// A short name: the first search suffix has it.
	a, err := r.Resolve(context.Background(), "payments")
	if err != nil || !reflect.DeepEqual(a.Addrs, addrs("10.96.3.4")) || a.Name != "payments" {
		t.Fatalf("Resolve(payments) = %+v, %v", a, err)
	}
	// Fewer dots than NDots: both suffixes are tried (NXDOMAIN), then the name as is.
	a, err = r.Resolve(context.Background(), "v4only.example.com")
	if err != nil || !reflect.DeepEqual(a.Addrs, addrs("192.0.2.1")) {
		t.Fatalf("Resolve(v4only.example.com) = %+v, %v", a, err)
	}
	for _, name := range []string{"v4only.example.com.shop.svc.cluster.local.", "v4only.example.com.svc.cluster.local.", "v4only.example.com."} {
		if n := srv.count(name, "A"); n != 1 {
			t.Errorf("%d A queries for %s, want 1", n, name)
		}
	}
}

func TestTruncatedAnswerRetriesOverTCP(t *testing.T) {
	z := testZone(t)
	srv := startServer(t, z)
	srv.mu.Lock()
	srv.tcpOnly["www.example.com."] = true
	srv.mu.Unlock()
	r := newResolver(t, Config{Servers: []string{srv.addr}})
	a, err := r.Resolve(context.Background(), "www.example.com")
	if err != nil || !reflect.DeepEqual(a.Addrs, addrs("198.51.100.1")) {
		t.Fatalf("Resolve = %+v, %v", a, err)
	}
	if u, tc := srv.countOver("www.example.com.", "A", "udp"), srv.countOver("www.example.com.", "A", "tcp"); u != 1 || tc != 1 {
		t.Errorf("%d UDP and %d TCP queries, want 1 and 1", u, tc)
	}
}

func TestBounds(t *testing.T) {
	srv := startServer(t, testZone(t))
	r := newResolver(t, Config{Servers: []string{srv.addr}, MaxEntries: 2})
	for _, n := range []string{"api.example.com", "www.example.com", "v4only.example.com"} {
		if _, err := r.Resolve(context.Background(), n); err != nil {
			t.Fatal(err)
		}
	}
	if st := r.Stats(); st.Entries != 2 {
		t.Errorf("%d entries cached, want at most 2", st.Entries)
	}

	// Past MaxInflight, Lookup starts nothing and counts it.
	r2 := newResolver(t, Config{Servers: []string{srv.addr}, MaxInflight: 1})
	held, release := srv.holdQueries()
	r2.Lookup("api.example.com")
	<-held
	r2.Lookup("www.example.com")
	if _, err := r2.Resolve(context.Background(), "v4only.example.com"); !errors.Is(err, ErrBusy) {
		t.Errorf("Resolve past MaxInflight: %v, want ErrBusy", err)
	}
	release()
	if st := r2.Stats(); st.Lookups != 1 || st.Dropped != 2 {
		t.Errorf("stats %+v: want 1 lookup and 2 dropped", st)
	}
}

func TestClose(t *testing.T) {
	srv := startServer(t, testZone(t))
	r := newResolver(t, Config{Servers: []string{srv.addr}})
	r.Close()
	if _, err := r.Resolve(context.Background(), "api.example.com"); !errors.Is(err, ErrClosed) {
		t.Errorf("Resolve after Close: %v, want ErrClosed", err)
	}
	if _, ok := r.Lookup("api.example.com"); ok {
		t.Error("Lookup after Close answered")
	}
	if srv.total() != 0 {
		t.Errorf("server got %d queries after Close", srv.total())
	}
}

func TestConfigFromResolvConf(t *testing.T) {
	path := filepath.Join(t.TempDir(), "resolv.conf")
	conf := "nameserver 10.96.0.10\nnameserver fd00::a\nsearch shop.svc.cluster.local svc.cluster.local\noptions ndots:5\n"
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Config{ResolvConf: path}.Check()
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"10.96.0.10:53", "[fd00::a]:53"}; !reflect.DeepEqual(cfg.Servers, want) {
		t.Errorf("servers %v, want %v", cfg.Servers, want)
	}
	if want := []string{"shop.svc.cluster.local", "svc.cluster.local"}; !reflect.DeepEqual(cfg.Search, want) || cfg.NDots != 5 {
		t.Errorf("search %v ndots %d", cfg.Search, cfg.NDots)
	}
	_, err = Config{ResolvConf: filepath.Join(t.TempDir(), "missing"), Timeout: -1, MinTTL: 2 * time.Hour}.Check()
	for _, want := range []string{"missing", "timeout must be positive", "min TTL"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Check error %v, want it to mention %q", err, want)
		}
	}
}

// BenchmarkLookup measures the request-path call on a cached name, against a map read as
// the baseline.
func BenchmarkLookup(b *testing.B) {
	srv := startServerTB(b)
	r, err := New(Config{Servers: []string{srv}})
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	if _, err := r.Resolve(context.Background(), "long.example.com"); err != nil {
		b.Fatal(err)
	}
	b.Run("cached", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := r.Lookup("long.example.com"); !ok {
				b.Fatal("not cached")
			}
		}
	})
	b.Run("map baseline", func(b *testing.B) {
		m := map[string][]netip.Addr{"long.example.com": addrs("192.0.2.3")}
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := m["long.example.com"]; !ok {
				b.Fatal("missing")
			}
		}
	})
}

// startServerTB starts a server answering long.example.com, for benchmarks.
func startServerTB(b *testing.B) string {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	a := rr(b, "long.example.com. 86400 IN A 192.0.2.3")
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		resp := new(dns.Msg)
		resp.SetReply(req)
		if req.Question[0].Qtype == dns.TypeA {
			resp.Answer = []dns.RR{a}
		}
		_ = w.WriteMsg(resp)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go func() { _ = srv.ActivateAndServe() }()
	<-started
	b.Cleanup(func() { _ = srv.Shutdown() })
	return pc.LocalAddr().String()
}

func TestNormalize(t *testing.T) {
	cases := []struct {
		in   string
		key  string
		ip   string
		fail bool
	}{
		{in: "API.Example.com.", key: "api.example.com"},
		{in: " api.example.com ", key: "api.example.com"},
		{in: "1password.com", key: "1password.com"},
		{in: "_grpc._tcp.example.com", key: "_grpc._tcp.example.com"},
		{in: "payments", key: "payments"},
		{in: "10.0.0.1", ip: "10.0.0.1"},
		{in: "[2001:db8::1]", ip: "2001:db8::1"},
		{in: "fe80::1%eth0", ip: "fe80::1"},
		{in: "::ffff:192.0.2.1", ip: "192.0.2.1"},
		{in: "", fail: true},
		{in: ".", fail: true},
		{in: "a..b", fail: true},
		{in: ".a", fail: true},
		{in: "ex ample.com", fail: true},
		{in: "[nope]", fail: true},
		{in: strings.Repeat("a", 254), fail: true},
	}
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			key, ip, err := normalize(tc.in)
			if tc.fail {
				if !errors.Is(err, ErrBadName) {
					t.Errorf("normalize(%q) = %q, %v, %v; want ErrBadName", tc.in, key, ip, err)
				}
				return
			}
			var wantIP netip.Addr
			if tc.ip != "" {
				wantIP = netip.MustParseAddr(tc.ip)
			}
			if err != nil || key != tc.key || ip != wantIP {
				t.Errorf("normalize(%q) = %q, %v, %v; want %q, %v", tc.in, key, ip, err, tc.key, wantIP)
			}
		})
	}
}

// TestFreshOnlyAnswersFromCache: Fresh never waits. A miss answers nothing and starts a
// background lookup; a fresh positive answer is returned; a stale or negative one is not
// (a stale answer may be an address the name has left).
func TestFreshOnlyAnswersFromCache(t *testing.T) {
	srv := startServer(t, testZone(t))
	clk := &clock{now: epoch}
	r := newResolver(t, Config{Servers: []string{srv.addr}, Now: clk.Now, MaxStale: time.Minute})
	f := FreshOnly{R: r}
	if a, ok := f.Lookup("api.example.com"); ok {
		t.Fatalf("miss answered %v", a)
	}
	// Wait for the background lookup the miss started: it caches its answer before done is
	// closed; when it is no longer in flight, it has cached already.
	r.mu.Lock()
	c := r.calls["api.example.com"]
	r.mu.Unlock()
	if c != nil {
		select {
		case <-c.done:
		case <-time.After(10 * time.Second):
			t.Fatal("the background lookup a miss starts never answered")
		}
	}
	if n := srv.count("api.example.com.", "A"); n != 1 {
		t.Fatalf("%d A queries after a miss, want 1 (from the background lookup)", n)
	}
	a, ok := f.Lookup("api.example.com")
	if !ok || !reflect.DeepEqual(a, addrs("203.0.113.7", "203.0.113.8", "2001:db8::7")) {
		t.Fatalf("fresh answer = %v, %v", a, ok)
	}
	clk.Advance(31 * time.Second) // past the AAAA TTL: stale, though Lookup still returns it
	if _, ok := r.Lookup("api.example.com"); !ok {
		t.Fatal("Lookup dropped the stale answer")
	}
	if a, ok := f.Lookup("api.example.com"); ok {
		t.Errorf("stale answer used as evidence: %v", a)
	}
	if _, err := r.Resolve(context.Background(), "empty.example.com"); err != nil {
		t.Fatal(err)
	}
	if a, ok := f.Lookup("empty.example.com"); ok {
		t.Errorf("negative answer used as evidence: %v", a)
	}
}
