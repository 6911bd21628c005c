package extproc

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/meshguard/meshguard/extproc/envoysim"
	"github.com/meshguard/meshguard/flowmodel"
	"github.com/prometheus/client_golang/prometheus"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// FuzzProcess drives the real server, with a real flowmodel.Model as its decider, through
// arbitrary sequences of ProcessingRequest built from the fuzz input by streamOps: phases out
// of order, messages without a phase, missing and mistyped attributes, huge and binary header
// values, raw protobuf (which reaches unknown oneof cases and fields). It checks the contract
// of the package doc:
//   - no panic, and an error only as InvalidArgument or Unimplemented (a protocol error);
//   - in observability mode (taken from the first message) no response at all;
//   - otherwise each response answers the message received just before it, with the
//     matching kind or an ImmediateResponse, which is the last response and ends the stream;
//   - a stream that ends without error answered every message with a phase.
//
// The seeds run in every go test; go run ./bench/fuzz runs this target for longer.
func FuzzProcess(f *testing.F) {
	for _, seed := range fuzzSeeds() {
		f.Add(seed)
	}
	metrics, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		f.Fatal(err)
	}
	logger := slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelDebug}))
	f.Fuzz(func(t *testing.T, data []byte) {
		ops := newStreamOps(data)
		model, err := flowmodel.New(flowmodel.Config{DefaultMode: ops.mode})
		if err != nil {
			t.Fatal(err)
		}
		tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(tracetest.NewSpanRecorder()),
			sdktrace.WithSampler(sdktrace.AlwaysSample()))
		srv, err := NewServer(model, Config{Logger: logger, TracerProvider: tp, Metrics: metrics,
			OnMissing: ops.onMissing, DecisionLogsPerSecond: -1})
		if err != nil {
			t.Fatal(err)
		}
		reqs := ops.requests()
		ms := &memStream{ctx: metadata.NewIncomingContext(context.Background(), ops.md), reqs: reqs}
		perr := srv.Process(ms)
		checkContract(t, ms, perr)
	})
}

// checkContract checks the invariants listed on FuzzProcess.
func checkContract(t *testing.T, ms *memStream, perr error) {
	t.Helper()
	if perr != nil {
		if c := status.Code(perr); c != codes.InvalidArgument && c != codes.Unimplemented {
			t.Fatalf("Process error %v: want InvalidArgument or Unimplemented", perr)
		}
	}
	if len(ms.reqs) > 0 && ms.reqs[0].GetObservabilityMode() {
		if len(ms.sent) > 0 {
			t.Fatalf("%d responses in observability mode", len(ms.sent))
		}
		return
	}
	answered := make([]bool, len(ms.reqs))
	for i, resp := range ms.sent {
		n := ms.recvd[i]
		if n == 0 {
			t.Fatalf("response %d sent before any request", i)
		}
		req := ms.reqs[n-1]
		if answered[n-1] {
			t.Fatalf("request %d answered twice (second: %s)", n-1, respName(resp))
		}
		answered[n-1] = true
		if resp.GetImmediateResponse() != nil {
			if i != len(ms.sent)-1 || ms.next != n || perr != nil {
				t.Fatalf("ImmediateResponse to request %d did not end the stream (%d responses, %d requests read, err %v)",
					n-1, len(ms.sent), ms.next, perr)
			}
			return
		}
		if !envoysim.Answers(resp, req) {
			t.Fatalf("request %d (%s) answered with %s", n-1, envoysim.PhaseName(req), respName(resp))
		}
	}
	if perr != nil {
		return
	}
	if ms.next != len(ms.reqs) {
		t.Fatalf("stream ended cleanly after reading %d of %d requests", ms.next, len(ms.reqs))
	}
	for i, req := range ms.reqs {
		if !answered[i] && req.GetRequest() != nil {
			t.Fatalf("stream ended cleanly with request %d (%s) unanswered", i, envoysim.PhaseName(req))
		}
	}
}

func respName(resp *extprocv3.ProcessingResponse) string {
	return fmt.Sprintf("%T", resp.GetResponse())
}

// streamOps reads a stream's messages from fuzz bytes. The first bytes set up the stream
// (model mode, missing-identity policy, gRPC metadata, protocol config); then each message
// starts with an op byte:
//
//	op&0x0f%10
//	       0..5 a phase (request headers, body, trailers, response headers, body, trailers)
//	       6    a message without a phase
//	       7    a flow-control update only (client_window_update)
//	       8    raw protobuf: a length byte and that many bytes, unmarshalled as they are
//	       9    raw protobuf, then a phase's fields set over it
//	op&0x10     observability_mode on the message
//	op&0x20     attributes on the message
//	op&0x40     protocol_config on the message
//
// Header and attribute values are fuzz strings; a value's length byte 0xff repeats the next
// string up to 1 MiB, for huge values (maxHuge of them).
type streamOps struct {
	data      []byte
	huge      int // huge values made so far
	mode      flowmodel.Mode
	onMissing string
	md        metadata.MD
}

func newStreamOps(data []byte) *streamOps {
	o := &streamOps{data: data, md: metadata.MD{}}
	setup := o.byte()
	o.mode = flowmodel.Mode(1 + int(setup)%4)
	o.onMissing = []string{OnMissingAlert, OnMissingAllow, OnMissingBlock}[int(setup>>2)%3]
	if setup&0x20 != 0 {
		o.md.Set(ServiceMetadataKey, o.str())
	}
	if setup&0x40 != 0 {
		o.md.Set("traceparent", o.str())
	}
	return o
}

// maxMessages bounds a stream, to keep each run short.
const maxMessages = 32

func (o *streamOps) requests() []*extprocv3.ProcessingRequest {
	var out []*extprocv3.ProcessingRequest
	for len(o.data) > 0 && len(out) < maxMessages {
		op := o.byte()
		kind := (op & 0x0f) % 10
		var req *extprocv3.ProcessingRequest
		switch kind {
		case 6:
			req = &extprocv3.ProcessingRequest{}
		case 7:
			req = &extprocv3.ProcessingRequest{ClientWindowUpdate: &extprocv3.ProcessingRequest_ClientWindowUpdate{}}
		case 8, 9:
			req = &extprocv3.ProcessingRequest{}
			// Bytes that do not parse leave a partly filled message, as a broken peer would.
			_ = proto.Unmarshal(o.bytes(), req)
			if kind == 9 {
				o.phase(req, o.byte()%6)
			}
		default:
			req = &extprocv3.ProcessingRequest{}
			o.phase(req, kind)
		}
		if op&0x10 != 0 {
			req.ObservabilityMode = true
		}
		if op&0x20 != 0 {
			req.Attributes = map[string]*structpb.Struct{AttributesKey: o.attrs()}
		}
		if op&0x40 != 0 {
			modes := extprocfilterv3.ProcessingMode_BodySendMode_value
			b := o.byte()
			req.ProtocolConfig = &extprocv3.ProtocolConfiguration{
				RequestBodyMode:  extprocfilterv3.ProcessingMode_BodySendMode(int32(b&7) % int32(len(modes)+1)),
				ResponseBodyMode: extprocfilterv3.ProcessingMode_BodySendMode(int32(b>>3&7) % int32(len(modes)+1)),
			}
		}
		out = append(out, req)
	}
	return out
}

// phase sets the phase p (0..5) of req.
func (o *streamOps) phase(req *extprocv3.ProcessingRequest, p byte) {
	switch p {
	case 0:
		req.Request = &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: o.httpHeaders(true)}
	case 1:
		req.Request = &extprocv3.ProcessingRequest_RequestBody{RequestBody: o.body()}
	case 2:
		req.Request = &extprocv3.ProcessingRequest_RequestTrailers{RequestTrailers: &extprocv3.HttpTrailers{Trailers: o.headerMap(false)}}
	case 3:
		req.Request = &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: o.httpHeaders(false)}
	case 4:
		req.Request = &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: o.body()}
	default:
		req.Request = &extprocv3.ProcessingRequest_ResponseTrailers{ResponseTrailers: &extprocv3.HttpTrailers{Trailers: o.headerMap(false)}}
	}
}

func (o *streamOps) httpHeaders(request bool) *extprocv3.HttpHeaders {
	h := &extprocv3.HttpHeaders{Headers: o.headerMap(request)}
	if o.byte()&1 != 0 {
		h.EndOfStream = true
	}
	if o.byte()&1 != 0 {
		h.Attributes = map[string]*structpb.Struct{AttributesKey: o.attrs()}
	}
	return h
}

func (o *streamOps) body() *extprocv3.HttpBody {
	return &extprocv3.HttpBody{Body: []byte(o.str()), EndOfStream: o.byte()&1 != 0}
}

var (
	requestHeaderKeys  = []string{":method", ":path", ":authority", ":scheme", "content-type", "content-length", "traceparent", "x-request-id", "authorization"}
	responseHeaderKeys = []string{":status", "content-length", "content-type"}
	attrKeys           = append(append([]string{}, RequestAttributes...), AttrUpstreamAddress, "xds.node.metadata",
		`xds.node.metadata["NAMESPACE"]`, `xds.node.metadata["WORKLOAD_NAME"]`)
)

func (o *streamOps) headerMap(request bool) *corev3.HeaderMap {
	keys := responseHeaderKeys
	if request {
		keys = requestHeaderKeys
	}
	m := &corev3.HeaderMap{}
	for n := o.byte() % 12; n > 0; n-- {
		k := o.byte()
		key := keys[int(k)%len(keys)]
		if k&0x80 != 0 {
			key = o.str() // any key, even an empty or binary one
		}
		hv := &corev3.HeaderValue{Key: key}
		if k&0x40 != 0 {
			hv.Value = o.str() // older Envoys set value, not raw_value
		} else {
			hv.RawValue = []byte(o.str())
		}
		m.Headers = append(m.Headers, hv)
	}
	return m
}

func (o *streamOps) attrs() *structpb.Struct {
	s := &structpb.Struct{Fields: map[string]*structpb.Value{}}
	for n := o.byte() % 10; n > 0; n-- {
		k := o.byte()
		key := attrKeys[int(k)%len(attrKeys)]
		if k&0x80 != 0 {
			key = o.str()
		}
		s.Fields[key] = o.value(2)
	}
	return s
}

// value is a structpb.Value of any kind, nested at most depth levels.
func (o *streamOps) value(depth int) *structpb.Value {
	switch k := o.byte() % 8; {
	case k == 0:
		return structpb.NewNullValue()
	case k == 1:
		return structpb.NewNumberValue(float64(int8(o.byte())) * 1e3)
	case k == 2:
		return structpb.NewBoolValue(o.byte()&1 != 0)
	case k == 3 && depth > 0:
		inner := &structpb.Struct{Fields: map[string]*structpb.Value{}}
		for n := o.byte() % 4; n > 0; n-- {
			key := o.str()
			if o.byte()&1 != 0 {
				key = []string{"NAMESPACE", "WORKLOAD_NAME"}[o.byte()&1]
			}
			inner.Fields[key] = o.value(depth - 1)
		}
		return structpb.NewStructValue(inner)
	case k == 4 && depth > 0:
		var vs []*structpb.Value
		for n := o.byte() % 4; n > 0; n-- {
			vs = append(vs, o.value(depth-1))
		}
		return structpb.NewListValue(&structpb.ListValue{Values: vs})
	case k == 5:
		return &structpb.Value{} // no kind at all
	default:
		return structpb.NewStringValue(o.str())
	}
}

func (o *streamOps) byte() byte {
	if len(o.data) == 0 {
		return 0
	}
	b := o.data[0]
	o.data = o.data[1:]
	return b
}

func (o *streamOps) bytes() []byte {
	n := int(o.byte())
	n = min(n, len(o.data))
	b := o.data[:n]
	o.data = o.data[n:]
	return b
}

// hugeValue is the size a value with length byte 0xff is repeated up to, and maxHuge how
// many such values one stream may have (the rest are read as 255-byte values): enough to
// find what a huge value breaks without spending each run allocating.
const (
	hugeValue = 1 << 20
	maxHuge   = 2
)

func (o *streamOps) str() string {
	if len(o.data) > 0 && o.data[0] == 0xff && o.huge < maxHuge {
		o.huge++
		o.data = o.data[1:]
		unit := o.bytes()
		if len(unit) == 0 {
			unit = []byte{0}
		}
		return string(bytes.Repeat(unit, hugeValue/len(unit)))
	}
	return string(o.bytes())
}

// fuzzSeeds are streams Envoy sends, and a few it should not.
func fuzzSeeds() [][]byte {
	str := func(s string) []byte { return append([]byte{byte(len(s))}, s...) }
	attr := func(key byte, v string) []byte { return append([]byte{key, 7}, str(v)...) } // a string value
	hdr := func(key byte, v string) []byte { return append([]byte{key}, str(v)...) }
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	idx := func(key string, keys []string) byte {
		for i, k := range keys {
			if k == key {
				return byte(i)
			}
		}
		panic(key)
	}
	attrs := cat([]byte{4},
		attr(idx(AttrNodeNamespace, attrKeys), "shop"), attr(idx(AttrNodeWorkload, attrKeys), "checkout"),
		attr(idx(AttrDestination, attrKeys), "203.0.113.7:443"), attr(idx(AttrSourceAddress, attrKeys), "10.1.0.11:40000"))
	reqHeaders := cat([]byte{4},
		hdr(idx(":method", requestHeaderKeys), "GET"), hdr(idx(":path", requestHeaderKeys), "/v1/x?y=1"),
		hdr(idx(":authority", requestHeaderKeys), "api.example.com"), hdr(idx(":scheme", requestHeaderKeys), "https"))
	respHeaders := cat([]byte{1}, hdr(idx(":status", responseHeaderKeys), "200"))
	// A message is its op byte, its phase's fields, then its attributes (op&0x20).
	requestHeaders := cat([]byte{0x20 | 0}, reqHeaders, []byte{1, 0}, attrs)
	responseHeaders := cat([]byte{3}, respHeaders, []byte{1, 0})

	var normal bytes.Buffer
	normal.Write([]byte{2}) // enforce mode: every destination is new, so blocked
	normal.Write(requestHeaders)
	learn := cat([]byte{0}, requestHeaders, []byte{1}, str(`{"a":1}`), []byte{1}, responseHeaders)
	observability := cat([]byte{0}, []byte{0x10 | 0x20 | 0}, reqHeaders, []byte{1, 0}, attrs, []byte{0x10 | 3}, respHeaders, []byte{1, 0})
	outOfOrder := cat([]byte{0}, responseHeaders, []byte{2, 0}, requestHeaders, []byte{5, 0})
	// A 1 MiB :authority, then a 1 MiB binary header name with a binary value.
	huge := cat([]byte{0}, []byte{0x20 | 0}, []byte{2, idx(":authority", requestHeaderKeys), 0xff, 3, 'a', '.', 'b',
		0x80, 0xff, 2, 0, 0xfe, 3, 'x', 0, 0xfe}, []byte{1, 0}, attrs)
	empty := []byte{0, 6}
	windowUpdate := cat([]byte{0}, requestHeaders, []byte{7}, responseHeaders)
	raw, err := proto.Marshal(&extprocv3.ProcessingRequest{
		Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{
			Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: ":authority", RawValue: []byte("x.example")}}},
		}},
		Attributes: map[string]*structpb.Struct{AttributesKey: {Fields: map[string]*structpb.Value{
			AttrSourceAddress: structpb.NewStringValue("10.0.0.1"),
		}}},
	})
	if err != nil || len(raw) > 255 {
		panic(fmt.Sprintf("seed proto: %v, %d bytes", err, len(raw)))
	}
	rawSeed := cat([]byte{0, 8, byte(len(raw))}, raw, []byte{9, 2, 0x42, 3}, responseHeaders)
	// Field 99 is no field of ProcessingRequest: an unknown oneof case of a newer Envoy.
	unknown := cat([]byte{0, 8, 4}, []byte{0x9a, 0x06, 1, 0})
	return [][]byte{normal.Bytes(), learn, observability, outOfOrder, huge, empty, windowUpdate, rawSeed, unknown}
}

// TestFuzzSeedsCoverTheContract makes sure the seeds reach what they are meant to: a block,
// a full exchange, observability mode, a protocol error and an unknown phase.
func TestFuzzSeedsCoverTheContract(t *testing.T) {
	var mu sync.Mutex
	seen := map[string]bool{}
	for _, seed := range fuzzSeeds() {
		ops := newStreamOps(seed)
		model, err := flowmodel.New(flowmodel.Config{DefaultMode: ops.mode})
		if err != nil {
			t.Fatal(err)
		}
		srv, err := NewServer(model, Config{Logger: quietLogger, OnMissing: ops.onMissing})
		if err != nil {
			t.Fatal(err)
		}
		ms := &memStream{ctx: metadata.NewIncomingContext(context.Background(), ops.md), reqs: ops.requests()}
		perr := srv.Process(ms)
		checkContract(t, ms, perr)
		mu.Lock()
		switch {
		case perr != nil:
			seen["error "+status.Code(perr).String()] = true
		case len(ms.reqs) > 0 && ms.reqs[0].GetObservabilityMode():
			seen["observability"] = true
		case len(ms.sent) > 0 && ms.sent[len(ms.sent)-1].GetImmediateResponse() != nil:
			seen["block"] = true
		case len(ms.sent) >= 3:
			seen["exchange"] = true
		}
		for _, r := range ms.reqs {
			for _, h := range r.GetRequestHeaders().GetHeaders().GetHeaders() {
				if len(h.GetRawValue()) >= hugeValue/2 {
					seen["huge header"] = true
				}
			}
		}
		mu.Unlock()
	}
	var missing []string
	for _, want := range []string{"block", "exchange", "observability", "error InvalidArgument", "huge header"} {
		if !seen[want] {
			missing = append(missing, want)
		}
	}
	if len(missing) > 0 {
		t.Errorf("no seed reaches %s (seen: %v)", strings.Join(missing, ", "), seen)
	}
}
