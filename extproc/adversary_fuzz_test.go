package extproc

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/meshguard/meshguard/extproc/contract"
	"github.com/meshguard/meshguard/extproc/envoysim"
	"github.com/meshguard/meshguard/flowmodel"
	"google.golang.org/grpc/metadata"
)

// FuzzAdversaryEnforce checks the guard's first promise against arbitrary requests: in
// enforce, no input to an unlearned destination is ever allowed. The service has learned
// api.example.com:443 and 203.0.113.7:443, with DNS consulted as the gateway layout does
// (--resolve-hosts: api.example.com lives at 203.0.113.7, every other name elsewhere) and
// host prefixes off (issue 10 case 12 is the model's); the fuzzer then controls
// everything a compromised workload controls, and a little more: :authority (once, twice or
// not at all), a host header, destination.address, the SNI, :path, :method, :scheme and the
// service named in the stream's metadata. Whenever the server lets the request through, an
// oracle that shares no code with the server checks that every destination the request
// names is a spelling of a learned one, and that it names one at all. It covers issue 10
// cases 1 and 3 and the smuggling, spelling and pseudo-header tricks of the adversarial suite.
func FuzzAdversaryEnforce(f *testing.F) {
	for _, s := range []struct {
		authority, host, dest, sni, path, method, meta string
		flags                                          uint8
	}{
		{"api.example.com", "", "", "", "/v1/x", "GET", "", 0},
		{"API.Example.COM.", "", "203.0.113.7:443", "", "/v1/x", "GET", "", 0},
		{"evil2.example!", "", "", "", "/v1/x", "GET", "", 0},
		{"[::1", "", "", "", "/", "GET", "", 0},
		{"", "", "", "", "/", "GET", "", 0},
		{"192.0.2.50:65536", "", "", "", "/", "GET", "", 0},
		{"api.example.com", "evil.example", "", "", "/", "GET", "", flagSecondAuthority},
		{"api.example.com", "evil.example", "", "", "/", "GET", "", flagHostHeader},
		{"evil.example", "", "203.0.113.7:443", "", "/", "GET", "", 0},
		{"api.example.com", "", "198.51.100.66:443", "", "/", "GET", "", 0},
		{"api.example.com:8443", "", "", "", "/", "GET", "", 0},
		{"", "", "", "evil.example", "/", "GET", "", flagNoAuthority},
		{"api.example.com", "", "", "", "/%2e%2e/admin", "CONNECT", "", flagNoPath},
		{"api.example.com", "", "", "", "/", "GET", "other/svc", 0},
		{"[::ffff:203.0.113.8]:443", "", "", "", "/", "GET", "", 0},
		{"a@api.example.com", "", "", "", "/", "GET", "", 0},
		{"0", "", "", "", "0", "0", " ", 0},
		{"198.51.100.1", "", "203.0.113.7:443", "", "/", "GET", "", 0},
	} {
		f.Add(s.authority, s.host, s.dest, s.sni, s.path, s.method, s.meta, s.flags)
	}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	f.Fuzz(func(t *testing.T, authority, host, dest, sni, path, method, meta string, flags uint8) {
		model, err := flowmodel.New(flowmodel.Config{DefaultMode: flowmodel.ModeEnforce, PrefixBits4: 32, PrefixBits6: 128,
			Resolver: fuzzResolver{}})
		if err != nil {
			t.Fatal(err)
		}
		// A request with no identity has no mode to be judged in: on-missing decides it, and an
		// enforcing layout sets it to block.
		srv, err := NewServer(model, Config{Logger: logger, DecisionLogsPerSecond: -1, OnMissing: OnMissingBlock})
		if err != nil {
			t.Fatal(err)
		}
		if err := model.SetMode(advService, flowmodel.ModeChange{Mode: flowmodel.ModeLearn}); err != nil {
			t.Fatal(err)
		}
		learnFlows := [][]*extprocv3.ProcessingRequest{
			{fuzzHeaders(map[string]string{contract.AttrDestination: "203.0.113.7:443"}, "api.example.com")},
			{fuzzHeaders(nil, "api.example.com")},
		}
		for _, reqs := range learnFlows {
			ms := &memStream{ctx: metadata.NewIncomingContext(context.Background(), metadata.Pairs(contract.ServiceMetadataKey, advService)), reqs: reqs}
			if err := srv.Process(ms); err != nil || len(ms.sent) != 1 || ms.sent[0].GetImmediateResponse() != nil {
				t.Fatalf("learning: %v %v", err, ms.sent)
			}
		}
		if err := model.SetMode(advService, flowmodel.ModeChange{Mode: flowmodel.ModeEnforce}); err != nil {
			t.Fatal(err)
		}

		var hs []envoysim.Header
		if flags&flagNoMethod == 0 {
			hs = append(hs, envoysim.Header{Key: ":method", Value: method})
		}
		if flags&flagNoPath == 0 {
			hs = append(hs, envoysim.Header{Key: ":path", Value: path})
		}
		if flags&flagNoAuthority == 0 {
			hs = append(hs, envoysim.Header{Key: ":authority", Value: authority})
		}
		if flags&flagSecondAuthority != 0 {
			hs = append(hs, envoysim.Header{Key: ":authority", Value: host})
		}
		if flags&flagHostHeader != 0 {
			hs = append(hs, envoysim.Header{Key: "host", Value: host})
		}
		if flags&flagNoScheme == 0 {
			hs = append(hs, envoysim.Header{Key: ":scheme", Value: "https"})
		}
		attrs := map[string]string{}
		if dest != "" {
			attrs[contract.AttrDestination] = dest
		}
		if sni != "" {
			attrs[contract.AttrRequestedServer] = sni
		}
		if flags&flagNodeIdentity != 0 {
			attrs[contract.AttrNodeNamespace], attrs[contract.AttrNodeWorkload] = "shop", "checkout"
		}
		md := metadata.Pairs(contract.ServiceMetadataKey, advService)
		if meta != "" {
			md = metadata.Pairs(contract.ServiceMetadataKey, meta)
		}
		req := &extprocv3.ProcessingRequest{
			Request:    &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{Headers: envoysim.HeaderMap(hs), EndOfStream: true}},
			Attributes: envoysim.Attributes(attrs),
		}
		ms := &memStream{ctx: metadata.NewIncomingContext(context.Background(), md), reqs: []*extprocv3.ProcessingRequest{req}}
		perr := srv.Process(ms)
		if len(ms.sent) == 0 {
			if perr == nil {
				t.Fatal("request_headers unanswered and no error")
			}
			return // a stream error: Envoy fails the request closed (failure_mode_allow off)
		}
		if ms.sent[0].GetImmediateResponse() != nil {
			return // blocked
		}
		// Allowed: every destination it names must be learned, and it must name one.
		named := false
		if dest != "" {
			named = true
			if !learnedAddress(dest) {
				t.Fatalf("allowed to destination.address %q", dest)
			}
		}
		var authorities []string
		if flags&flagNoAuthority == 0 {
			authorities = append(authorities, authority)
		}
		if flags&(flagSecondAuthority|flagHostHeader) != 0 {
			authorities = append(authorities, host)
		}
		for _, a := range authorities {
			if a == "" {
				continue
			}
			named = true
			if !learnedAuthority(a, dest == "") {
				t.Fatalf("allowed to authority %q (all: %q, destination.address %q)", a, authorities, dest)
			}
		}
		if len(authorities) == 0 && sni != "" {
			named = true
			if !learnedAuthority(sni, false) {
				t.Fatalf("allowed to SNI %q", sni)
			}
		}
		if !named {
			t.Fatalf("allowed without any destination (headers %v, attributes %v)", hs, attrs)
		}
	})
}

// Flags of FuzzAdversaryEnforce.
const (
	flagNoMethod uint8 = 1 << iota
	flagNoPath
	flagNoAuthority
	flagSecondAuthority
	flagHostHeader
	flagNoScheme
	flagNodeIdentity
)

func fuzzHeaders(attrs map[string]string, authority string) *extprocv3.ProcessingRequest {
	hs := []envoysim.Header{{Key: ":method", Value: "GET"}, {Key: ":path", Value: "/v1/x"}, {Key: ":authority", Value: authority}, {Key: ":scheme", Value: "https"}}
	return &extprocv3.ProcessingRequest{
		Request:    &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{Headers: envoysim.HeaderMap(hs), EndOfStream: true}},
		Attributes: envoysim.Attributes(attrs),
	}
}

// fuzzResolver answers at once: the learned host lives at the learned IP, every other name
// at 192.0.2.1.
type fuzzResolver struct{}

func (fuzzResolver) Lookup(host string) ([]netip.Addr, bool) {
	if host == learnedHost {
		return []netip.Addr{learnedIP.Addr()}, true
	}
	return []netip.Addr{netip.MustParseAddr("192.0.2.1")}, true
}

// learnedIP is the learned address, and learnedHost the learned host, of FuzzAdversaryEnforce.
var (
	learnedIP   = netip.MustParseAddrPort("203.0.113.7:443")
	learnedHost = "api.example.com"
)

// learnedAddress is the oracle for destination.address: the learned IP and port, in any
// spelling netip accepts.
func learnedAddress(s string) bool {
	ap, err := netip.ParseAddrPort(s)
	return err == nil && ap.Addr().Unmap() == learnedIP.Addr() && ap.Port() == learnedIP.Port()
}

// learnedAuthority is the oracle for an authority: the learned host or IP, in any case, with
// a trailing dot or brackets; with checkPort, an explicit port must be the learned one (in a
// sidecar destination.address says the port).
func learnedAuthority(a string, checkPort bool) bool {
	a = strings.ToLower(a)
	host, port := a, ""
	if i := strings.LastIndexByte(a, ':'); i >= 0 && !strings.HasSuffix(a, "]") && strings.Count(a, ":") == 1 || strings.HasPrefix(a, "[") && strings.Contains(a, "]:") {
		i := strings.LastIndexByte(a, ':')
		host, port = a[:i], a[i+1:]
	}
	if checkPort && port != "" && port != "443" {
		return false
	}
	if ip, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		return ip.Unmap() == learnedIP.Addr()
	}
	return strings.TrimSuffix(host, ".") == learnedHost
}
