package extproc

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/meshguard/meshguard/extproc/contract"
	"github.com/meshguard/meshguard/extproc/envoysim"
	"github.com/meshguard/meshguard/flowmodel"
	"github.com/prometheus/client_golang/prometheus"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// The adversarial suite of the ext_proc server: each test plays the compromised workload,
// which controls everything in the HTTP request Envoy presents (authority, host, path,
// method, headers), against the real server over real gRPC on loopback, and most against a
// real flowmodel.Model.

// advService is the service every adversarial request comes from.
const advService = "shop/checkout"

// advRig is a real model behind a real server on a loopback port.
type advRig struct {
	model   *flowmodel.Model
	client  extprocv3.ExternalProcessorClient
	addr    string
	reg     *prometheus.Registry
	spans   *tracetest.SpanRecorder
	metrics *Metrics
}

// newAdvRig starts a server over a new model whose service advService is in mode.
func newAdvRig(t *testing.T, mode flowmodel.Mode, cfg Config) *advRig {
	t.Helper()
	return newAdvRigWith(t, flowmodel.Config{}, mode, cfg)
}

// staticResolver answers the model's DNS questions from a map, every answer fresh.
type staticResolver map[string][]netip.Addr

func (r staticResolver) Lookup(host string) ([]netip.Addr, bool) {
	a, ok := r[host]
	return a, ok
}

// newAdvRigWith is newAdvRig over a model configured by mc.
func newAdvRigWith(t *testing.T, mc flowmodel.Config, mode flowmodel.Mode, cfg Config) *advRig {
	t.Helper()
	m, err := flowmodel.New(mc)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.SetMode(advService, flowmodel.ModeChange{Mode: mode}); err != nil {
		t.Fatal(err)
	}
	r := &advRig{model: m, spans: tracetest.NewSpanRecorder()}
	r.metrics, r.reg = newMetrics(t)
	cfg.Metrics = r.metrics
	if cfg.Logger == nil {
		cfg.Logger = quietLogger
	}
	cfg.TracerProvider = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(r.spans), sdktrace.WithSampler(sdktrace.AlwaysSample()))
	r.client, r.addr = serveLoopback(t, m, cfg)
	return r
}

// serveLoopback serves ext_proc for d on a loopback port; it returns a client and the address.
func serveLoopback(t *testing.T, d Decider, cfg Config) (extprocv3.ExternalProcessorClient, string) {
	t.Helper()
	srv, err := NewServer(d, cfg)
	if err != nil {
		t.Fatal(err)
	}
	gs := NewGRPCServer(srv, health.NewServer())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	return dial(t, lis.Addr().String()), lis.Addr().String()
}

// dial opens a new connection (its own HTTP/2 connection) to addr.
func dial(t *testing.T, addr string, opts ...grpc.DialOption) extprocv3.ExternalProcessorClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return extprocv3.NewExternalProcessorClient(conn)
}

// gatewayRequest is a request as an egress gateway presents it: no destination.address, so
// the workload names the destination through :authority alone.
func gatewayRequest(authority string) envoysim.Request {
	return envoysim.Request{
		Metadata: map[string]string{contract.ServiceMetadataKey: advService},
		Headers: []envoysim.Header{
			{Key: ":method", Value: "GET"}, {Key: ":path", Value: "/v1/x"}, {Key: ":authority", Value: authority},
			{Key: ":scheme", Value: "https"},
		},
	}
}

// verdictOf plays r and returns the verdict Envoy sees: "allow" for CONTINUE, else the
// x-meshguard-verdict of the ImmediateResponse, with its body.
func verdictOf(t *testing.T, c extprocv3.ExternalProcessorClient, r envoysim.Request) (string, BlockBody) {
	t.Helper()
	res, err := envoysim.Do(context.Background(), c, r, 5*time.Second)
	if err != nil {
		t.Fatalf("ext_proc exchange: %v", err)
	}
	if res.Immediate == nil {
		return "allow", BlockBody{}
	}
	ir := res.Immediate
	if ir.GetStatus().GetCode() != 403 {
		t.Fatalf("immediate response status %v", ir.GetStatus().GetCode())
	}
	var body BlockBody
	if err := json.Unmarshal(ir.GetBody(), &body); err != nil {
		t.Fatalf("403 body %q: %v", ir.GetBody(), err)
	}
	if h := envoysim.HeaderValue(ir, contract.VerdictHeader); h != body.Verdict {
		t.Fatalf("%s %q, body verdict %q", contract.VerdictHeader, h, body.Verdict)
	}
	return body.Verdict, body
}

func withHeaders(r envoysim.Request, hs ...envoysim.Header) envoysim.Request {
	r.Headers = append(slices.Clone(r.Headers), hs...)
	return r
}

// without drops the headers named keys from r.
func without(r envoysim.Request, keys ...string) envoysim.Request {
	r.Headers = slices.DeleteFunc(slices.Clone(r.Headers), func(h envoysim.Header) bool { return slices.Contains(keys, h.Key) })
	return r
}

// TestAdversaryUnparseableDestination covers issue 10 case 1 (and the over-long, userinfo
// and port tricks a careful attacker tries next): without a destination.address the
// workload names the destination through :authority; one that cannot be parsed is blocked
// with unknown_destination in enforce and quarantine (403 body, span, metric), alerted in
// monitor, and never learned in learn.
func TestAdversaryUnparseableDestination(t *testing.T) {
	bad := []struct {
		name string
		req  envoysim.Request
	}{
		{"bang", gatewayRequest("evil2.example!")},
		{"unclosed bracket", gatewayRequest("[::1")},
		{"empty authority", gatewayRequest("")},
		{"no authority at all", without(gatewayRequest(""), ":authority")},
		{"empty label", gatewayRequest("a..b")},
		{"leading dot", gatewayRequest(".evil.example")},
		{"trailing dots", gatewayRequest("evil.example..")},
		{"label over 63", gatewayRequest(strings.Repeat("a", 64) + ".example")},
		{"name over 253", gatewayRequest(strings.Repeat("abcdefghi.", 26) + "example")},
		{"port out of range", gatewayRequest("192.0.2.50:65536")},
		{"port zero", gatewayRequest("api.example.com:0")},
		{"empty port", gatewayRequest("api.example.com:")},
		{"signed port", gatewayRequest("api.example.com:+443")},
		{"userinfo", gatewayRequest("a@b")},
		{"userinfo before a name", gatewayRequest("user@api.example.com")},
		{"bare ipv6", gatewayRequest("::1")},
		{"ipv6 zone", gatewayRequest("[fe80::1%25eth0]")},
		{"ipv4 in brackets", gatewayRequest("[192.0.2.1]")},
		{"short ipv4", gatewayRequest("127.1")},
		{"hex ipv4", gatewayRequest("0x7f.1")},
		{"not an ip", func() envoysim.Request {
			r := gatewayRequest("api.example.com")
			r.Attributes = map[string]string{contract.AttrDestination: "not-an-ip"}
			return r
		}()},
		{"bad sni without authority", func() envoysim.Request {
			r := without(gatewayRequest(""), ":authority")
			r.Attributes = map[string]string{contract.AttrRequestedServer: "evil2.example!"}
			return r
		}()},
		{"space", gatewayRequest("api.example.com evil.example")},
		{"non-ascii", gatewayRequest("аpi.example.com")}, // Cyrillic а
	}
	for _, tc := range []struct {
		mode    flowmodel.Mode
		verdict string
	}{
		{flowmodel.ModeEnforce, "block"},
		{flowmodel.ModeQuarantine, "block"},
		{flowmodel.ModeMonitor, "allow"},
		{flowmodel.ModeLearn, "allow"},
	} {
		t.Run(tc.mode.String(), func(t *testing.T) {
			rig := newAdvRig(t, tc.mode, Config{})
			for i, b := range bad {
				got, body := verdictOf(t, rig.client, b.req)
				if got != tc.verdict {
					t.Errorf("%s: verdict %s, want %s", b.name, got, tc.verdict)
					continue
				}
				if got == "block" && !slices.Equal(body.Reasons, []string{"unknown_destination"}) {
					t.Errorf("%s: reasons %v, want [unknown_destination]", b.name, body.Reasons)
				}
				action := "block"
				if tc.verdict == "allow" {
					action = "alert"
				}
				if n := metricValue(t, rig.reg, "meshguard_decision_reasons_total", "verdict", action, "reason", "unknown_destination"); n != float64(i+1) {
					t.Errorf("%s: unknown_destination %s count %v, want %d", b.name, action, n, i+1)
				}
			}
			spans := endedSpans(rig.spans, len(bad))
			for _, sp := range spans {
				if !spanHasReason(sp, "unknown_destination") {
					t.Errorf("span %v without unknown_destination", sp.Attributes())
				}
			}
			rec, ok := rig.model.Service(advService)
			if !ok {
				t.Fatal("service gone")
			}
			if len(rec.Destinations) != 0 {
				t.Errorf("learned %v from requests without a destination", rec.Destinations)
			}
		})
	}
}

func spanHasReason(sp sdktrace.ReadOnlySpan, reason string) bool {
	for _, kv := range sp.Attributes() {
		if kv.Key == AttrKeyReasons && slices.Contains(kv.Value.AsStringSlice(), reason) {
			return true
		}
	}
	return false
}

// TestAdversaryHeaderSmuggling covers the careful attacker's header smuggling: two
// :authority headers, or :authority and host naming different sites, in the hope that
// meshguard judges one and the upstream routes by the other. Both are blocked in enforce as
// unknown_destination, whichever comes first, even when one of them is a learned host.
func TestAdversaryHeaderSmuggling(t *testing.T) {
	rig := newAdvRig(t, flowmodel.ModeLearn, Config{})
	learned := sidecarRequest("api.example.com")
	if got, _ := verdictOf(t, rig.client, learned); got != "allow" {
		t.Fatalf("learning request: %s", got)
	}
	if err := rig.model.SetMode(advService, flowmodel.ModeChange{Mode: flowmodel.ModeEnforce}); err != nil {
		t.Fatal(err)
	}
	if got, _ := verdictOf(t, rig.client, learned); got != "allow" {
		t.Fatalf("the learned request itself is %s in enforce", got)
	}
	for _, tc := range []struct {
		name    string
		headers []envoysim.Header
	}{
		{"two authorities, learned first", []envoysim.Header{{Key: ":authority", Value: "api.example.com"}, {Key: ":authority", Value: "evil.example"}}},
		{"two authorities, learned last", []envoysim.Header{{Key: ":authority", Value: "evil.example"}, {Key: ":authority", Value: "api.example.com"}}},
		{"host disagrees with authority", []envoysim.Header{{Key: ":authority", Value: "api.example.com"}, {Key: "host", Value: "evil.example"}}},
		{"host disagrees on the port", []envoysim.Header{{Key: ":authority", Value: "api.example.com:443"}, {Key: "host", Value: "api.example.com:8443"}}},
		{"two host headers", []envoysim.Header{{Key: "host", Value: "api.example.com"}, {Key: "host", Value: "evil.example"}}},
		{"host header malformed", []envoysim.Header{{Key: ":authority", Value: "api.example.com"}, {Key: "host", Value: "api.example.com!"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := withHeaders(without(learned, ":authority"), tc.headers...)
			got, body := verdictOf(t, rig.client, r)
			if got != "block" || !slices.Contains(body.Reasons, "unknown_destination") {
				t.Fatalf("verdict %s %v, want block [unknown_destination]", got, body.Reasons)
			}
		})
	}
	t.Run("host agreeing with authority is the same request", func(t *testing.T) {
		r := withHeaders(learned, envoysim.Header{Key: "host", Value: "API.example.com."})
		if got, body := verdictOf(t, rig.client, r); got != "allow" {
			t.Fatalf("verdict %s %v, want allow", got, body.Reasons)
		}
	})
}

// TestAdversaryHostSpellings covers the careful attacker's spellings of one destination:
// mixed case, a trailing dot, an IPv4-mapped IPv6 address. Each must be the same destination
// the model learned, never a different one (which would be a second baseline entry to hide
// behind, or a new destination that slips past a host rule).
func TestAdversaryHostSpellings(t *testing.T) {
	d := &fakeDecider{}
	c := startServer(t, d, Config{Logger: quietLogger})
	spellings := []struct {
		authority, dest string
	}{
		{"api.example.com", ""},
		{"API.Example.COM", ""},
		{"api.example.com.", ""},
		{"Api.Example.Com.:443", ""},
		{"api.example.com", "203.0.113.7:443"},
		{"api.example.com", "[::ffff:203.0.113.7]:443"},
		{"API.EXAMPLE.COM.", "[::ffff:cb00:7107]:443"},
	}
	for _, s := range spellings {
		r := gatewayRequest(s.authority)
		if s.dest != "" {
			r.Attributes = map[string]string{contract.AttrDestination: s.dest}
		}
		if got, _ := verdictOf(t, c, r); got != "allow" {
			t.Fatalf("%+v: %s", s, got)
		}
	}
	ips := []string{"203.0.113.7", "[::ffff:203.0.113.7]", "[::FFFF:CB00:7107]:443"}
	for _, a := range ips {
		if got, _ := verdictOf(t, c, gatewayRequest(a)); got != "allow" {
			t.Fatalf("%s: %s", a, got)
		}
	}
	decided, _ := d.flows()
	if len(decided) != len(spellings)+len(ips) {
		t.Fatalf("%d decisions, want %d", len(decided), len(spellings)+len(ips))
	}
	for i, f := range decided[:len(spellings)] {
		if f.Destination.Host != "api.example.com" || f.Destination.Port != 443 {
			t.Errorf("%+v: destination %+v, want api.example.com:443", spellings[i], f.Destination)
		}
		if s := spellings[i]; s.dest != "" && f.Destination.IP.String() != "203.0.113.7" {
			t.Errorf("%+v: IP %v, want 203.0.113.7", s, f.Destination.IP)
		}
	}
	for i, f := range decided[len(spellings):] {
		if f.Destination.IP.String() != "203.0.113.7" || f.Destination.Host != "" {
			t.Errorf("%s: destination %+v, want 203.0.113.7", ips[i], f.Destination)
		}
	}

	// And through the real model: learning every spelling leaves one host in the baseline. A
	// gateway's host-only flow is learned at the host's fresh DNS answers (never by name
	// alone), so the model has a resolver that knows it.
	rig := newAdvRigWith(t, flowmodel.Config{Resolver: staticResolver{"api.example.com": {netip.MustParseAddr("203.0.113.7")}}}, flowmodel.ModeLearn, Config{})
	for _, s := range spellings[:4] {
		verdictOf(t, rig.client, gatewayRequest(s.authority))
	}
	rec, _ := rig.model.Service(advService)
	var hosts []string
	for _, dr := range rec.Destinations {
		hosts = append(hosts, dr.Destination)
	}
	if !slices.Equal(hosts, []string{"api.example.com:443"}) {
		t.Fatalf("learned %q, want only api.example.com:443", hosts)
	}
}

// TestAdversaryPseudoHeaderTricks covers the careful attacker's HTTP/2 pseudo-header tricks
// and percent-encoded paths: each request gets a decision from the model or a fail-closed
// verdict, never a silent CONTINUE. In enforce, every one of them to an unlearned destination
// is blocked, and malformed ones are blocked even to a learned destination.
func TestAdversaryPseudoHeaderTricks(t *testing.T) {
	rig := newAdvRig(t, flowmodel.ModeLearn, Config{})
	learned := sidecarRequest("api.example.com")
	verdictOf(t, rig.client, learned)
	if err := rig.model.SetMode(advService, flowmodel.ModeChange{Mode: flowmodel.ModeEnforce}); err != nil {
		t.Fatal(err)
	}
	evil := sidecarRequest("evil.example")
	evil.Attributes = map[string]string{contract.AttrNodeNamespace: "shop", contract.AttrNodeWorkload: "checkout",
		contract.AttrDestination: "198.51.100.66:443"}
	replace := func(r envoysim.Request, key string, values ...string) envoysim.Request {
		r = without(r, key)
		for _, v := range values {
			r.Headers = append(r.Headers, envoysim.Header{Key: key, Value: v})
		}
		return r
	}
	for _, tc := range []struct {
		name   string
		req    envoysim.Request
		reason string // the reason the block must carry
	}{
		{"percent-encoded path to a new destination", replace(evil, ":path", "/%2e%2e/%2fadmin%00"), "new_destination"},
		{"CONNECT to a new destination", replace(without(evil, ":path"), ":method", "CONNECT"), "new_destination"},
		{"no :path", without(learned, ":path"), "invalid_request"},
		{"absolute-form :path", replace(learned, ":path", "http://evil.example/"), "invalid_request"},
		{"relative :path", replace(learned, ":path", "v1/charges"), "invalid_request"},
		{"two :path", replace(learned, ":path", "/v1/charges", "/admin"), "invalid_request"},
		{"two :method", replace(learned, ":method", "GET", "CONNECT"), "invalid_request"},
		{"no :method", without(learned, ":method"), "invalid_request"},
		{"asterisk path with GET", replace(learned, ":path", "*"), "invalid_request"},
		{"two :scheme", replace(learned, ":scheme", "https", "http"), "invalid_request"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := metricValue(t, rig.reg, "meshguard_decisions_total", "verdict", "block")
			got, body := verdictOf(t, rig.client, tc.req)
			if got != "block" || !slices.Contains(body.Reasons, tc.reason) {
				t.Fatalf("verdict %s %v, want block with %s", got, body.Reasons, tc.reason)
			}
			if after := metricValue(t, rig.reg, "meshguard_decisions_total", "verdict", "block"); after != before+1 {
				t.Fatalf("blocks counted %v -> %v", before, after)
			}
		})
	}
	t.Run("well-formed tricks to a learned destination stay allowed", func(t *testing.T) {
		for _, r := range []envoysim.Request{
			replace(learned, ":path", "/v1/charges?id=1"),
			replace(replace(learned, ":method", "OPTIONS"), ":path", "*"),
		} {
			if got, body := verdictOf(t, rig.client, r); got == "block" && slices.Contains(body.Reasons, "invalid_request") {
				t.Errorf("%v: blocked as invalid_request", r.Headers)
			}
		}
	})
}

// TestAdversarySecondRequestHeaders covers issue 10 case 3: a second request_headers on a
// stream whose first was allowed is decided too, and blocked when it goes somewhere new.
func TestAdversarySecondRequestHeaders(t *testing.T) {
	d := &fakeDecider{verdict: blockNew}
	c := startServer(t, d, Config{Logger: quietLogger})
	first := sidecarRequest("api.example.com")
	second := sidecarRequest("evil.example")
	msg := func(r envoysim.Request) *extprocv3.ProcessingRequest {
		return &extprocv3.ProcessingRequest{
			Request:    &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{Headers: envoysim.HeaderMap(r.Headers)}},
			Attributes: envoysim.Attributes(r.Attributes),
		}
	}
	resps, err := rawStream(t, c, msg(first), msg(second))
	if err != nil {
		t.Fatal(err)
	}
	if len(resps) != 2 || resps[0].GetRequestHeaders() == nil || resps[1].GetImmediateResponse() == nil {
		t.Fatalf("responses %v, want CONTINUE then a 403", resps)
	}
	if decided, _ := d.flows(); len(decided) != 2 || decided[1].Destination.Host != "evil.example" {
		t.Fatalf("decided %v, want both requests", decided)
	}
}

// rawCodec sends pre-encoded bytes as they are, for messages Go's protobuf would refuse to
// marshal (invalid UTF-8), and decodes responses as protobuf.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) {
	if b, ok := v.([]byte); ok {
		return b, nil
	}
	return proto.Marshal(v.(proto.Message))
}
func (rawCodec) Unmarshal(data []byte, v any) error { return proto.Unmarshal(data, v.(proto.Message)) }
func (rawCodec) Name() string                       { return "proto" }

// TestAdversaryUndecodableMessages covers issue 10 case 7's decoding half: a message over
// max-message-bytes, or with invalid UTF-8 in an attribute string (an SNI, say, which the
// workload chooses and Envoy passes on), is answered with a 403, not with a stream error
// that failure_mode_allow would turn into an allow.
func TestAdversaryUndecodableMessages(t *testing.T) {
	metrics, reg := newMetrics(t)
	_, addr := serveLoopback(t, &fakeDecider{}, Config{Logger: quietLogger, Metrics: metrics, MaxMessageBytes: MinMaxMessageBytes})

	valid := sidecarRequest("api.example.com")
	const marker = "SNI-MARKER"
	valid.Attributes[contract.AttrRequestedServer] = marker
	good, err := proto.Marshal(&extprocv3.ProcessingRequest{
		Request:    &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{Headers: envoysim.HeaderMap(valid.Headers)}},
		Attributes: envoysim.Attributes(valid.Attributes),
	})
	if err != nil {
		t.Fatal(err)
	}
	invalidUTF8 := []byte(strings.Replace(string(good), marker, "\xff\xfe\xfd"+marker[3:], 1))
	oversized, err := proto.Marshal(&extprocv3.ProcessingRequest{
		Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{Headers: envoysim.HeaderMap(
			append(slices.Clone(valid.Headers), envoysim.Header{Key: "x-pad", Value: strings.Repeat("a", MinMaxMessageBytes)}))}},
		Attributes: envoysim.Attributes(valid.Attributes),
	})
	if err != nil {
		t.Fatal(err)
	}

	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	for _, tc := range []struct {
		name string
		msgs [][]byte
	}{
		{"invalid utf-8 first", [][]byte{invalidUTF8}},
		{"oversized first", [][]byte{oversized}},
		{"oversized after a good message", [][]byte{good, oversized}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			cs, err := conn.NewStream(ctx, &extprocv3.ExternalProcessor_ServiceDesc.Streams[0], extprocv3.ExternalProcessor_Process_FullMethodName)
			if err != nil {
				t.Fatal(err)
			}
			var last *extprocv3.ProcessingResponse
			for _, m := range tc.msgs {
				if err := cs.SendMsg(m); err != nil && !errors.Is(err, io.EOF) {
					t.Fatal(err)
				}
				last = &extprocv3.ProcessingResponse{}
				if err := cs.RecvMsg(last); err != nil {
					t.Fatalf("no answer but %v", err)
				}
			}
			ir := last.GetImmediateResponse()
			if ir.GetStatus().GetCode() != 403 || ir.GetDetails() != contract.UndecodableDetails {
				t.Fatalf("answer %v, want a 403 %s", last, contract.UndecodableDetails)
			}
			if err := cs.RecvMsg(&extprocv3.ProcessingResponse{}); !errors.Is(err, io.EOF) {
				t.Fatalf("after the 403: %v, want a clean end", err)
			}
		})
	}
	if n := metricValue(t, reg, "meshguard_decision_reasons_total", "verdict", "block", "reason", "invalid_request"); n != 3 {
		t.Errorf("invalid_request blocks %v, want 3", n)
	}
}

// TestAdversaryIdentityMismatch covers issue 10 case 11 (identity half): the service named
// in the stream's gRPC metadata and the node's own identity must agree. A mismatch is blocked
// in enforce with identity_mismatch, alerted otherwise, and judged by the stricter mode of
// the two services, so that naming a learning service from an enforcing node gains nothing.
func TestAdversaryIdentityMismatch(t *testing.T) {
	node := map[string]string{contract.AttrNodeNamespace: "pay", contract.AttrNodeWorkload: "api", contract.AttrDestination: "203.0.113.7:443"}
	for _, tc := range []struct {
		name             string
		metaMode, nodeMd flowmodel.Mode
		verdict          string
	}{
		{"both enforce", flowmodel.ModeEnforce, flowmodel.ModeEnforce, "block"},
		{"metadata names a learning service", flowmodel.ModeLearn, flowmodel.ModeEnforce, "block"},
		{"node is learning", flowmodel.ModeEnforce, flowmodel.ModeLearn, "block"},
		{"both monitor", flowmodel.ModeMonitor, flowmodel.ModeMonitor, "allow"},
		{"both learn", flowmodel.ModeLearn, flowmodel.ModeLearn, "allow"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rig := newAdvRig(t, tc.metaMode, Config{})
			if err := rig.model.SetMode("pay/api", flowmodel.ModeChange{Mode: tc.nodeMd}); err != nil {
				t.Fatal(err)
			}
			r := sidecarRequest("api.example.com")
			r.Metadata = map[string]string{contract.ServiceMetadataKey: advService}
			r.Attributes = node
			got, body := verdictOf(t, rig.client, r)
			if got != tc.verdict {
				t.Fatalf("verdict %s %v, want %s", got, body.Reasons, tc.verdict)
			}
			if got == "block" && !slices.Equal(body.Reasons, []string{"identity_mismatch"}) {
				t.Fatalf("reasons %v, want [identity_mismatch]", body.Reasons)
			}
			action := map[string]string{"block": "block", "allow": "alert"}[tc.verdict]
			if n := metricValue(t, rig.reg, "meshguard_decision_reasons_total", "verdict", action, "reason", "identity_mismatch"); n != 1 {
				t.Fatalf("identity_mismatch %s count %v", action, n)
			}
			for _, svc := range []string{advService, "pay/api"} {
				if rec, _ := rig.model.Service(svc); len(rec.Destinations) != 0 {
					t.Fatalf("%s learned %v from a mismatched stream", svc, rec.Destinations)
				}
			}
		})
	}
	t.Run("agreeing identities are decided as usual", func(t *testing.T) {
		rig := newAdvRig(t, flowmodel.ModeLearn, Config{})
		r := sidecarRequest("api.example.com")
		r.Metadata = map[string]string{contract.ServiceMetadataKey: advService}
		if got, body := verdictOf(t, rig.client, r); got != "allow" || len(body.Reasons) != 0 {
			t.Fatalf("verdict %s %v", got, body.Reasons)
		}
		if rec, _ := rig.model.Service(advService); len(rec.Destinations) == 0 {
			t.Fatal("nothing learned from an agreeing stream")
		}
	})
}

// TestAdversaryIdleStreamsDoNotStarve covers issue 10 case 7's stream half: streams that
// never send a message hold no max-streams slot, are closed after first-message-timeout
// (and not before: the client's own context is never cancelled during the test), and
// are capped per connection; with more idle streams open than max-streams, on connections at
// their cap, a real request on another connection still gets its verdict at once, and one
// on a full connection gets it once the idle streams there are closed.
func TestAdversaryIdleStreamsDoNotStarve(t *testing.T) {
	const (
		maxStreams = 4
		perConn    = 8
		firstMsg   = 3 * time.Second
	)
	metrics, reg := newMetrics(t)
	d := &fakeDecider{verdict: blockNew}
	_, addr := serveLoopback(t, d, Config{Logger: quietLogger, Metrics: metrics, MaxStreams: maxStreams,
		MaxStreamsPerConnection: perConn, FirstMessageTimeout: firstMsg})

	// Two attacker connections, each at its cap with idle streams: 2*perConn > maxStreams.
	attackers := []extprocv3.ExternalProcessorClient{dial(t, addr), dial(t, addr)}
	type idle struct {
		s      extprocv3.ExternalProcessor_ProcessClient
		opened time.Time
	}
	var idles []idle
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, a := range attackers {
		for range perConn {
			s, err := a.Process(ctx)
			if err != nil {
				t.Fatal(err)
			}
			idles = append(idles, idle{s, time.Now()})
		}
	}
	waitFor(t, 10*time.Second, func() bool {
		return metricValue(t, reg, "meshguard_extproc_streams_awaiting_first_message") == 2*perConn
	}, "idle streams to reach the server")

	// A real request on its own connection: decided at once, however many streams idle.
	honest := dial(t, addr)
	if got, _ := verdictOf(t, honest, sidecarRequest("evil.example")); got != "block" {
		t.Fatalf("real request: %s, want its verdict (block)", got)
	}
	if n := metricValue(t, reg, "meshguard_extproc_streams_awaiting_first_message"); n != 2*perConn {
		t.Fatalf("the verdict came after the idle streams were closed (%v still open): it waited for them", n)
	}

	// A real request on a full attacker connection waits for a slot there, and gets it once
	// the idle streams are closed.
	var wg sync.WaitGroup
	wg.Add(1)
	var queuedVerdict string
	go func() {
		defer wg.Done()
		res, err := envoysim.Do(context.Background(), attackers[0], sidecarRequest("api.example.com"), 10*time.Second)
		switch {
		case err != nil:
			queuedVerdict = err.Error()
		case res.Immediate != nil:
			queuedVerdict = "block"
		default:
			queuedVerdict = "allow"
		}
	}()

	for i, id := range idles {
		// The server cancels the stream's context: the client sees the stream reset
		// (CANCELLED) or, when the status is written first, DEADLINE_EXCEEDED.
		_, err := id.s.Recv()
		if c := status.Code(err); c != codes.DeadlineExceeded && c != codes.Canceled {
			t.Fatalf("idle stream %d ended with %v, want it closed by the server", i, err)
		}
		if lived := time.Since(id.opened); lived < firstMsg/2 {
			t.Fatalf("idle stream %d closed after %v, before the first-message timeout", i, lived)
		}
	}
	wg.Wait()
	if queuedVerdict != "allow" {
		t.Fatalf("request queued behind idle streams: %s, want allow", queuedVerdict)
	}
	if n := metricValue(t, reg, "meshguard_extproc_stream_errors_total", "code", "DeadlineExceeded"); n != 2*perConn {
		t.Errorf("first-message timeouts counted %v, want %d", n, 2*perConn)
	}
	if n := metricValue(t, reg, "meshguard_extproc_streams_awaiting_first_message"); n != 0 {
		t.Errorf("%v streams still awaiting a first message", n)
	}
	if n := metricValue(t, reg, "meshguard_extproc_streams_rejected_total"); n != 0 {
		t.Errorf("%v streams rejected: idle streams took max-streams slots", n)
	}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, deadline time.Duration, cond func() bool, what string) {
	t.Helper()
	end := time.Now().Add(deadline)
	for !cond() {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestStreamBoundsConfig(t *testing.T) {
	c, err := Config{}.Check()
	if err != nil {
		t.Fatal(err)
	}
	if c.FirstMessageTimeout != 2*time.Second || c.MaxStreamsPerConnection != 1000 || c.MaxMessageBytes != 1<<20 {
		t.Fatalf("defaults %v %d %d", c.FirstMessageTimeout, c.MaxStreamsPerConnection, c.MaxMessageBytes)
	}
	_, err = Config{FirstMessageTimeout: -1, MaxStreamsPerConnection: -1, MaxMessageBytes: 1000}.Check()
	for _, want := range []string{"first-message-timeout", "max-streams-per-connection", "max-message-bytes"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Check error %v does not name %s", err, want)
		}
	}
}

// TestAdversaryIdleStreamWithoutTap covers issue 10 case 7 on a server built without
// StreamOptions (no tap handle): the first-message timeout still closes a silent stream,
// through recvFirst's goroutine, and a stream that speaks in time is served.
func TestAdversaryIdleStreamWithoutTap(t *testing.T) {
	metrics, reg := newMetrics(t)
	srv, err := NewServer(&fakeDecider{}, Config{Logger: quietLogger, Metrics: metrics, FirstMessageTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	extprocv3.RegisterExternalProcessorServer(gs, srv)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	c := dial(t, lis.Addr().String())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := c.Process(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("silent stream ended with %v, want DEADLINE_EXCEEDED", err)
	}
	if n := metricValue(t, reg, "meshguard_extproc_stream_errors_total", "code", "DeadlineExceeded"); n != 1 {
		t.Fatalf("first-message timeouts %v, want 1", n)
	}
	if got, _ := verdictOf(t, c, sidecarRequest("api.example.com")); got != "allow" {
		t.Fatalf("a request in time: %s", got)
	}
}
