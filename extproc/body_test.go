package extproc

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/meshguard/meshguard/extproc/envoysim"
	"github.com/meshguard/meshguard/flowmodel"
	"github.com/prometheus/client_golang/prometheus"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

var bodyT0 = time.Date(2026, 1, 2, 15, 0, 0, 0, time.UTC)

// shopRequest is a request of shop/search to host, its body (when not "") sent BUFFERED.
func shopRequest(host, path, body string) envoysim.Request {
	r := envoysim.Request{
		Metadata: map[string]string{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
		Attributes: map[string]string{
			AttrNodeNamespace: "shop", AttrNodeWorkload: "search", AttrDestination: "203.0.113.7:443",
		},
		Headers: []envoysim.Header{
			{Key: ":method", Value: "GET"}, {Key: ":path", Value: path}, {Key: ":authority", Value: host},
			{Key: ":scheme", Value: "https"}, {Key: "accept", Value: "application/json"},
		},
		ProtocolConfig: &extprocv3.ProtocolConfiguration{RequestBodyMode: extprocfilterv3.ProcessingMode_BUFFERED},
	}
	if body != "" {
		r.Headers[0].Value = "POST"
		r.Headers = append(r.Headers, envoysim.Header{Key: "content-type", Value: "application/json"},
			envoysim.Header{Key: "content-length", Value: strconv.Itoa(len(body))})
		r.Body = []byte(body)
	}
	return r
}

// shop is a meshguard serving a real model over real gRPC on event time the test sets.
type shop struct {
	t       *testing.T
	model   *flowmodel.Model
	client  extprocv3.ExternalProcessorClient
	clock   atomic.Int64
	spans   *tracetest.SpanRecorder
	metrics *prometheus.Registry
}

func newShop(t *testing.T, cfg flowmodel.Config) *shop {
	m, err := flowmodel.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := &shop{t: t, model: m, spans: tracetest.NewSpanRecorder(), metrics: prometheus.NewRegistry()}
	met, err := NewMetrics(s.metrics)
	if err != nil {
		t.Fatal(err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(s.spans))
	s.client = startServer(t, m, Config{TracerProvider: tp, Metrics: met, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Now: func() time.Time { return time.Unix(0, s.clock.Load()) }})
	return s
}

func (s *shop) do(at time.Duration, r envoysim.Request) envoysim.Result {
	s.t.Helper()
	s.clock.Store(bodyT0.Add(at).UnixNano())
	res, err := envoysim.Do(context.Background(), s.client, r, 5*time.Second)
	if err != nil {
		s.t.Fatal(err)
	}
	return res
}

var shopWords = []string{"red", "blue", "shoes", "shirt", "green", "socks", "hat", "coat", "boots", "scarf"}

// learn has shop/search learn for three hours (a search a minute, an order every ten) over
// gRPC, then sets mode.
func (s *shop) learn(mode flowmodel.Mode) {
	for i := range 180 {
		at := time.Duration(i) * time.Minute
		s.do(at, shopRequest("api.example.com", fmt.Sprintf("/v1/search?q=%s+%s&page=%d&sort=%s",
			shopWords[i%10], shopWords[(i*7)%10], 1+i%9, []string{"price", "name", "new"}[i%3]), ""))
		if i%10 == 5 {
			s.do(at+time.Second, shopRequest("api.example.com", "/v1/orders", fmt.Sprintf(`{"sku":"AB-%04d","qty":%d}`, 1000+i, 1+i%5)))
		}
	}
	if err := s.model.SetMode("shop/search", flowmodel.ModeChange{Mode: mode, By: "test"}); err != nil {
		s.t.Fatal(err)
	}
}

// lastSpan returns the attributes of the latest decision span.
func (s *shop) lastSpan(n int) map[string]string {
	spans := endedSpans(s.spans, n)
	got := map[string]string{}
	for _, kv := range spans[len(spans)-1].Attributes() {
		got[string(kv.Key)] = kv.Value.Emit()
	}
	return got
}

// TestAdversaryParameterInjectionOverGRPC plays issue 11's blind spot end to end: a learned
// service sends an SQL injection in a known query parameter, or in a known field of a JSON
// body that Envoy sends BUFFERED. Monitor alerts; enforce alerts under the default block
// reasons and blocks (a 403 ImmediateResponse, at the body message for a body) once
// block-reasons include parameter_value. Benign values of the same shapes pass.
func TestAdversaryParameterInjectionOverGRPC(t *testing.T) {
	blockParams := flowmodel.DefaultBlockReasons.With(flowmodel.ReasonParameterValue)
	const sqli = "/v1/search?q=blue+hat&page=2%27%20OR%20%271%27%3D%271&sort=price"
	const sqliBody = `{"sku":"AB-1234' UNION SELECT password FROM users--","qty":2}`
	cases := []struct {
		name      string
		mode      flowmodel.Mode
		block     flowmodel.Reasons
		path      string
		body      string
		verdict   string
		param     string
		responses int // before the stream ended
	}{
		{"benign query, enforce", flowmodel.ModeEnforce, blockParams, "/v1/search?q=red+coat&page=4&sort=name", "", "allow", "", 1},
		{"benign body, enforce", flowmodel.ModeEnforce, blockParams, "/v1/orders", `{"sku":"AB-4242","qty":3}`, "allow", "", 2},
		{"query, monitor", flowmodel.ModeMonitor, 0, sqli, "", "alert", "page", 1},
		{"query, enforce, default block reasons", flowmodel.ModeEnforce, 0, sqli, "", "alert", "page", 1},
		{"query, enforce, parameter_value blocks", flowmodel.ModeEnforce, blockParams, sqli, "", "block", "page", 1},
		{"body, monitor", flowmodel.ModeMonitor, 0, "/v1/orders", sqliBody, "alert", "body.sku", 2},
		{"body, enforce, parameter_value blocks", flowmodel.ModeEnforce, blockParams, "/v1/orders", sqliBody, "block", "body.sku", 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := newShop(t, flowmodel.Config{BlockReasons: c.block})
			s.learn(c.mode)
			learned := len(s.spans.Ended())
			res := s.do(3*time.Hour+time.Minute, shopRequest("api.example.com", c.path, c.body))
			if len(res.Responses) != c.responses {
				t.Fatalf("%d responses, want %d", len(res.Responses), c.responses)
			}
			if blocked := res.Immediate != nil; blocked != (c.verdict == "block") {
				t.Fatalf("immediate response %v, want verdict %s", res.Immediate, c.verdict)
			}
			if res.Immediate != nil {
				var b BlockBody
				if err := json.Unmarshal(res.Immediate.GetBody(), &b); err != nil || res.Immediate.GetStatus().GetCode() != 403 ||
					!strings.Contains(strings.Join(b.Reasons, ","), "parameter_value") {
					t.Fatalf("block %v %+v %v", res.Immediate.GetStatus(), b, err)
				}
			}
			got := s.lastSpan(learned + 1)
			if got["meshguard.verdict"] != c.verdict || got["meshguard.parameter"] != c.param {
				t.Fatalf("span verdict %q parameter %q reasons %s, want %s %q", got["meshguard.verdict"],
					got["meshguard.parameter"], got["meshguard.reasons"], c.verdict, c.param)
			}
			if c.verdict != "allow" && got["meshguard.episode.new"] != "true" {
				t.Fatalf("episode attributes %q %q", got["meshguard.episode.id"], got["meshguard.episode.new"])
			}
		})
	}
}

// TestAlertStormIsOneEpisodeInMetrics: thirty alerts in a row to a new destination are thirty
// alert decisions but one episode, in the metrics and in the spans.
func TestAlertStormIsOneEpisodeInMetrics(t *testing.T) {
	s := newShop(t, flowmodel.Config{})
	s.learn(flowmodel.ModeMonitor)
	learned := len(s.spans.Ended())
	ids := map[string]int{}
	for i := range 30 {
		r := shopRequest("c2.example.net", "/beacon?id=1", "")
		r.Attributes[AttrDestination] = "198.51.100.9:443"
		s.do(3*time.Hour+time.Duration(i)*time.Second, r)
		got := s.lastSpan(learned + i + 1)
		if got["meshguard.verdict"] != "alert" || got["meshguard.episode.new"] != strconv.FormatBool(i == 0) {
			t.Fatalf("alert %d: %v", i, got)
		}
		ids[got["meshguard.episode.id"]]++
	}
	if len(ids) != 1 {
		t.Fatalf("episode ids %v, want one", ids)
	}
	if got := counters(t, s.metrics, "meshguard_alert_episodes_total"); len(got) != 1 || got["new_destination"] != 1 {
		t.Fatalf("meshguard_alert_episodes_total %v, want new_destination 1 and no other", got)
	}
	if got := counters(t, s.metrics, "meshguard_decisions_total"); got["alert"] != 30 {
		t.Fatalf("meshguard_decisions_total %v, want 30 alerts", got)
	}
	open, _ := s.model.Episodes("shop/search")
	if len(open) != 1 || open[0].Count != 30 || open[0].Examples[0] != "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Fatalf("open episodes %+v", open)
	}
}

// counters gathers the non-zero values of a counter with one label, by label value.
func counters(t *testing.T, reg *prometheus.Registry, name string) map[string]float64 {
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if v := m.GetCounter().GetValue(); v != 0 {
				out[m.GetLabel()[0].GetValue()] = v
			}
		}
	}
	return out
}

// TestDecidingMessage: the message a request is decided at, and what the decider sees of its
// body. Headers-only requests, and bodies not sent BUFFERED, decide at the headers as before.
func TestDecidingMessage(t *testing.T) {
	long := `{"a":"` + strings.Repeat("x", 40) + `"}`
	cases := []struct {
		name      string
		mode      extprocfilterv3.ProcessingMode_BodySendMode
		noConfig  bool
		body      string
		maxBody   int
		host      string
		responses int // to a block: the deciding message is the last
		decBody   string
		truncated bool
		reqBytes  int64
	}{
		{"headers only, buffered", extprocfilterv3.ProcessingMode_BUFFERED, false, "", 0, "evil.example", 1, "", false, -1},
		{"body, buffered: decided at the body", extprocfilterv3.ProcessingMode_BUFFERED, false, `{"a":1}`, 0, "evil.example", 2, `{"a":1}`, false, 7},
		{"body, buffered partial", extprocfilterv3.ProcessingMode_BUFFERED_PARTIAL, false, `{"a":1}`, 0, "evil.example", 2, `{"a":1}`, false, 7},
		{"body past the cap", extprocfilterv3.ProcessingMode_BUFFERED, false, long, 16, "api.example.com", 2, long[:16], true, int64(len(long))},
		{"body, streamed: decided at the headers", extprocfilterv3.ProcessingMode_STREAMED, false, `{"a":1}`, 0, "evil.example", 1, "", false, 7},
		{"body, no protocol config: at the headers", 0, true, `{"a":1}`, 0, "evil.example", 1, "", false, 7},
		{"body inspection off", extprocfilterv3.ProcessingMode_BUFFERED, false, `{"a":1}`, -1, "evil.example", 1, "", false, 7},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := &fakeDecider{verdict: blockNew}
			cl := startServer(t, d, Config{MaxBodyBytes: c.maxBody})
			r := shopRequest(c.host, "/v1/orders?x=1", c.body)
			r.ProtocolConfig.RequestBodyMode = c.mode
			if c.noConfig {
				r.ProtocolConfig = nil
			}
			res, err := envoysim.Do(context.Background(), cl, r, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Responses) != c.responses {
				t.Fatalf("%d responses, want %d", len(res.Responses), c.responses)
			}
			decided, _ := d.flows()
			if len(decided) != 1 {
				t.Fatalf("decided %d times", len(decided))
			}
			f := decided[0]
			if f.Body != c.decBody || f.BodyTruncated != c.truncated || f.RequestBytes != c.reqBytes {
				t.Fatalf("decided body %q truncated %t bytes %d, want %q %t %d", f.Body, f.BodyTruncated, f.RequestBytes, c.decBody, c.truncated, c.reqBytes)
			}
			if fmt.Sprintf("%x", f.TraceID) != "4bf92f3577b34da6a3ce929d0e0e4736" {
				t.Fatalf("trace id %x", f.TraceID)
			}
		})
	}
}

func TestParseTraceparent(t *testing.T) {
	for _, c := range []struct {
		in string
		ok bool
	}{
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", true},
		{"00-00000000000000000000000000000000-00f067aa0ba902b7-01", false},
		{"00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01", false},
		{"00-4bf92f3577b34da6a3ce929d0e0e4736", false},
		{"", false},
	} {
		if _, ok := parseTraceparent(c.in); ok != c.ok {
			t.Errorf("%q: ok %t, want %t", c.in, ok, c.ok)
		}
	}
}
