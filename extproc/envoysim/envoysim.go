// Package envoysim plays the client side of Envoy's ext_proc HTTP filter, for meshguard's
// demo, integration tests and load generator: one gRPC stream per HTTP request, attributes
// and headers on the first message, each phase sent only after the previous one was
// answered, a per-message timeout like the filter's message_timeout, and the stream ended
// as soon as the server sends an ImmediateResponse.
package envoysim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/meshguard/meshguard/extproc/contract"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"
)

// AttributesKey is where Envoy's ext_proc filter puts attributes.
const AttributesKey = contract.AttributesKey

// Header is one HTTP header.
type Header struct{ Key, Value string }

// Request is one HTTP request as Envoy's filter would present it.
type Request struct {
	// Metadata is the stream's gRPC metadata (GrpcService.initial_metadata; traceparent).
	Metadata map[string]string
	// Attributes are the request_attributes values, keyed by expression.
	Attributes map[string]string
	Headers    []Header
	// Body, when not nil, is sent as one BUFFERED request_body message.
	Body []byte
	// ResponseHeaders, when not nil, are sent as response_headers after the request phases,
	// with ResponseAttributes.
	ResponseHeaders    []Header
	ResponseAttributes map[string]string
	// ObservabilityMode makes the filter expect no responses.
	ObservabilityMode bool
	ProtocolConfig    *extprocv3.ProtocolConfiguration
}

// Result is what the server answered.
type Result struct {
	// Immediate is set when the server answered with an ImmediateResponse; the stream ended
	// there.
	Immediate *extprocv3.ImmediateResponse
	// Responses are the server's answers, in order.
	Responses []*extprocv3.ProcessingResponse
}

// ErrMessageTimeout is returned when a response does not arrive within the message timeout,
// as Envoy's message_timeout.
var ErrMessageTimeout = errors.New("envoysim: message timeout")

// ProtocolError is a response that breaks the ext_proc contract.
type ProtocolError struct{ Msg string }

func (e *ProtocolError) Error() string { return "envoysim: protocol error: " + e.Msg }

// Do plays one request over a new stream. messageTimeout bounds each response wait (0 means
// 200ms, Envoy's default).
func Do(ctx context.Context, c extprocv3.ExternalProcessorClient, r Request, messageTimeout time.Duration) (Result, error) {
	if messageTimeout <= 0 {
		messageTimeout = 200 * time.Millisecond
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // a stream left open is reset, as Envoy does
	if len(r.Metadata) > 0 {
		ctx = metadata.NewOutgoingContext(ctx, metadata.New(r.Metadata))
	}
	stream, err := c.Process(ctx)
	if err != nil {
		return Result{}, fmt.Errorf("open stream: %w", err)
	}

	var msgs []*extprocv3.ProcessingRequest
	first := &extprocv3.ProcessingRequest{
		Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{
			Headers:     HeaderMap(r.Headers),
			EndOfStream: r.Body == nil,
		}},
		Attributes:        Attributes(r.Attributes),
		ObservabilityMode: r.ObservabilityMode,
		ProtocolConfig:    r.ProtocolConfig,
	}
	msgs = append(msgs, first)
	if r.Body != nil {
		msgs = append(msgs, &extprocv3.ProcessingRequest{
			Request:           &extprocv3.ProcessingRequest_RequestBody{RequestBody: &extprocv3.HttpBody{Body: r.Body, EndOfStream: true}},
			ObservabilityMode: r.ObservabilityMode,
		})
	}
	if r.ResponseHeaders != nil {
		msgs = append(msgs, &extprocv3.ProcessingRequest{
			Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{
				Headers: HeaderMap(r.ResponseHeaders), EndOfStream: true,
			}},
			Attributes:        Attributes(r.ResponseAttributes),
			ObservabilityMode: r.ObservabilityMode,
		})
	}

	var res Result
	for _, m := range msgs {
		if err := stream.Send(m); err != nil {
			if errors.Is(err, io.EOF) {
				// The server ended the stream (a refusal, say); Recv says how.
				if _, rerr := recvTimeout(stream, messageTimeout); rerr != nil && !errors.Is(rerr, io.EOF) {
					err = rerr
				}
			}
			return res, fmt.Errorf("send %s: %w", PhaseName(m), err)
		}
		if r.ObservabilityMode {
			continue
		}
		resp, err := recvTimeout(stream, messageTimeout)
		if err != nil {
			return res, fmt.Errorf("await %s response: %w", PhaseName(m), err)
		}
		res.Responses = append(res.Responses, resp)
		if ir := resp.GetImmediateResponse(); ir != nil {
			res.Immediate = ir
			return res, nil
		}
		if err := matches(m, resp); err != nil {
			return res, err
		}
	}
	if err := stream.CloseSend(); err != nil {
		return res, fmt.Errorf("close send: %w", err)
	}
	// The server must end the stream cleanly and send nothing more.
	resp, err := recvTimeout(stream, messageTimeout)
	switch {
	case errors.Is(err, io.EOF):
		return res, nil
	case err != nil:
		return res, fmt.Errorf("await end of stream: %w", err)
	default:
		return res, &ProtocolError{Msg: fmt.Sprintf("unexpected response after the last phase: %T", resp.GetResponse())}
	}
}

func recvTimeout(s extprocv3.ExternalProcessor_ProcessClient, d time.Duration) (*extprocv3.ProcessingResponse, error) {
	type result struct {
		r   *extprocv3.ProcessingResponse
		err error
	}
	ch := make(chan result, 1)
	go func() {
		r, err := s.Recv()
		ch <- result{r, err}
	}()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case r := <-ch:
		return r.r, r.err
	case <-t.C:
		return nil, ErrMessageTimeout
	}
}

// PhaseName names a request's phase as the ext_proc protocol does ("request_headers", ...).
func PhaseName(m *extprocv3.ProcessingRequest) string {
	switch m.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		return "request_headers"
	case *extprocv3.ProcessingRequest_RequestBody:
		return "request_body"
	case *extprocv3.ProcessingRequest_RequestTrailers:
		return "request_trailers"
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		return "response_headers"
	case *extprocv3.ProcessingRequest_ResponseBody:
		return "response_body"
	case *extprocv3.ProcessingRequest_ResponseTrailers:
		return "response_trailers"
	case nil:
		return "no phase"
	}
	return fmt.Sprintf("%T", m.GetRequest())
}

// Answers reports whether r is the kind of response that answers m's phase (an
// ImmediateResponse answers any phase but is not of its kind).
func Answers(r *extprocv3.ProcessingResponse, m *extprocv3.ProcessingRequest) bool {
	switch m.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		return r.GetRequestHeaders() != nil
	case *extprocv3.ProcessingRequest_RequestBody:
		return r.GetRequestBody() != nil
	case *extprocv3.ProcessingRequest_RequestTrailers:
		return r.GetRequestTrailers() != nil
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		return r.GetResponseHeaders() != nil
	case *extprocv3.ProcessingRequest_ResponseBody:
		return r.GetResponseBody() != nil
	case *extprocv3.ProcessingRequest_ResponseTrailers:
		return r.GetResponseTrailers() != nil
	}
	return false
}

func matches(m *extprocv3.ProcessingRequest, r *extprocv3.ProcessingResponse) error {
	if !Answers(r, m) {
		return &ProtocolError{Msg: fmt.Sprintf("%s answered with %T", PhaseName(m), r.GetResponse())}
	}
	return nil
}

// HeaderMap is hs as Envoy sends headers (raw_value).
func HeaderMap(hs []Header) *corev3.HeaderMap {
	m := &corev3.HeaderMap{Headers: make([]*corev3.HeaderValue, 0, len(hs))}
	for _, h := range hs {
		m.Headers = append(m.Headers, &corev3.HeaderValue{Key: h.Key, RawValue: []byte(h.Value)})
	}
	return m
}

// Attributes is a as Envoy sends request or response attributes, under AttributesKey; nil
// when a is empty.
func Attributes(a map[string]string) map[string]*structpb.Struct {
	if len(a) == 0 {
		return nil
	}
	s := &structpb.Struct{Fields: make(map[string]*structpb.Value, len(a))}
	for k, v := range a {
		s.Fields[k] = structpb.NewStringValue(v)
	}
	return map[string]*structpb.Struct{AttributesKey: s}
}

// HeaderValue returns the value of a header in an ImmediateResponse's header mutation.
func HeaderValue(ir *extprocv3.ImmediateResponse, key string) string {
	for _, o := range ir.GetHeaders().GetSetHeaders() {
		if h := o.GetHeader(); h.GetKey() == key {
			if len(h.GetRawValue()) > 0 {
				return string(h.GetRawValue())
			}
			return h.GetValue()
		}
	}
	return ""
}
