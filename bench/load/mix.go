package main

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/meshguard/meshguard/extproc/contract"
	"google.golang.org/protobuf/types/known/structpb"
)

// MixConfig describes the traffic: which services send to which destinations, and which
// ext_proc phases each HTTP request goes through.
//
// Every address below is only text inside ext_proc messages sent to the server under test on
// loopback; the load generator never dials any of them.
type MixConfig struct {
	Services        int     // services (namespace/workload pairs)
	Namespaces      int     // services are spread over this many namespaces
	DestsPerService int     // known destinations per service
	NewDestShare    float64 // share of requests to a destination never used before
	Body            bool    // request_body phase (BUFFERED) for requests that carry a body
	BodyBytes       int     // size of those bodies
	Response        bool    // response_headers phase
	ProtocolConfig  bool    // protocol_config on the first message, as recent Envoys send
}

// service is the fixed identity of one simulated workload.
type service struct {
	name      string // NAMESPACE/WORKLOAD_NAME, the name meshguard gives it
	namespace string
	workload  string
	nodeID    string // Istio sidecar node id
	podIP     string
	peerMeta  string // x-envoy-peer-metadata, base64 as Istio's metadata exchange sends it
	userAgent string
}

// Mix generates Envoy-shaped ext_proc messages for a MixConfig. It is read-only after NewMix
// and safe for concurrent use; callers bring their own *rand.Rand.
type Mix struct {
	cfg      MixConfig
	services []service
}

// Ranges the synthetic addresses come from (text only, never dialled).
var (
	knownDestBase = netip.MustParseAddr("10.0.0.0")   // known destinations: 10.0.0.0/8
	podBase       = netip.MustParseAddr("172.16.0.0") // pod (source) addresses: 172.16.0.0/12
	unseenBase    = netip.MustParseAddr("100.64.0.0") // never-seen and scanned: 100.64.0.0/10
)

const unseenSpan = 1 << 22 // addresses in 100.64.0.0/10

var userAgents = []string{"Go-http-client/1.1", "okhttp/4.12.0", "python-requests/2.32.3", "grpc-java-netty/1.66.0", "curl/8.9.1", "Apache-HttpClient/5.3.1 (Java/21.0.4)"}

// NewMix checks cfg and precomputes the services.
func NewMix(cfg MixConfig) (*Mix, error) {
	switch {
	case cfg.Services < 1:
		return nil, fmt.Errorf("mix: need at least one service, got %d", cfg.Services)
	case cfg.DestsPerService < 1:
		return nil, fmt.Errorf("mix: need at least one destination per service, got %d", cfg.DestsPerService)
	case cfg.Services*cfg.DestsPerService > 1<<24:
		return nil, fmt.Errorf("mix: %d services × %d destinations exceed the 10.0.0.0/8 range", cfg.Services, cfg.DestsPerService)
	case cfg.Services > 1<<20:
		return nil, fmt.Errorf("mix: %d services exceed the 172.16.0.0/12 pod range", cfg.Services)
	case cfg.NewDestShare < 0 || cfg.NewDestShare > 1:
		return nil, fmt.Errorf("mix: new destination share %v outside [0,1]", cfg.NewDestShare)
	case cfg.BodyBytes < 0:
		return nil, fmt.Errorf("mix: negative body size %d", cfg.BodyBytes)
	}
	if cfg.Namespaces < 1 {
		cfg.Namespaces = 1
	}
	m := &Mix{cfg: cfg, services: make([]service, cfg.Services)}
	for i := range m.services {
		ns := "ns-" + strconv.Itoa(i%cfg.Namespaces)
		wl := "wl-" + strconv.Itoa(i)
		ip := offsetAddr(podBase, uint32(i)+1).String()
		pod := fmt.Sprintf("%s-7d9f8c6b5-%05x", wl, i&0xfffff)
		meta := fmt.Sprintf(`{"NAMESPACE":"%s","WORKLOAD_NAME":"%s","NAME":"%s","CLUSTER_ID":"Kubernetes","MESH_ID":"cluster.local","LABELS":{"app":"%s","version":"v1","security.istio.io/tlsMode":"istio","service.istio.io/canonical-name":"%s","service.istio.io/canonical-revision":"v1"},"ISTIO_VERSION":"1.24.2","PLATFORM_METADATA":{},"SERVICE_ACCOUNT":"%s"}`, ns, wl, pod, wl, wl, wl)
		m.services[i] = service{
			name:      ns + "/" + wl,
			namespace: ns,
			workload:  wl,
			nodeID:    "sidecar~" + ip + "~" + pod + "." + ns + "~" + ns + ".svc.cluster.local",
			podIP:     ip,
			peerMeta:  base64.StdEncoding.EncodeToString([]byte(meta)),
			userAgent: userAgents[i%len(userAgents)],
		}
	}
	return m, nil
}

// Config returns the mix's configuration.
func (m *Mix) Config() MixConfig { return m.cfg }

// ServiceName returns the name meshguard derives for service i (NAMESPACE/WORKLOAD_NAME).
func (m *Mix) ServiceName(i int) string { return m.services[i].name }

// Req is one HTTP request to simulate. Dest >= 0 picks a known destination of Service;
// Dest < 0 means the never-seen address Unseen.
type Req struct {
	Service int
	Dest    int
	Unseen  uint32
}

// Known returns the request for known destination d of service s.
func (m *Mix) Known(s, d int) Req { return Req{Service: s, Dest: d} }

// Pair returns the k-th (service, destination) pair in service-major order, for teaching
// every destination once: k in [0, Services*DestsPerService).
func (m *Mix) Pair(k int) Req {
	return Req{Service: k / m.cfg.DestsPerService, Dest: k % m.cfg.DestsPerService}
}

// Unseen returns a request from service s to the i-th address of 100.64.0.0/10, a range no
// known destination uses.
func (m *Mix) Unseen(s int, i uint32) Req { return Req{Service: s, Dest: -1, Unseen: i % unseenSpan} }

// Pick draws a request of the steady-state mix: a uniform service, a uniform known destination
// of it, or with probability NewDestShare a never-seen address drawn from 4M.
func (m *Mix) Pick(r *rand.Rand) Req {
	s := r.IntN(len(m.services))
	if m.cfg.NewDestShare > 0 && r.Float64() < m.cfg.NewDestShare {
		return m.Unseen(s, r.Uint32N(unseenSpan))
	}
	return Req{Service: s, Dest: r.IntN(m.cfg.DestsPerService)}
}

func offsetAddr(base netip.Addr, off uint32) netip.Addr {
	b := base.As4()
	v := binary.BigEndian.Uint32(b[:]) + off
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

var destPorts = []int{8080, 80, 443, 9090, 5000}

// destination returns the address, port and :authority of req's destination.
func (m *Mix) destination(req Req) (ip netip.Addr, port int, authority string) {
	if req.Dest < 0 {
		ip = offsetAddr(unseenBase, req.Unseen)
		return ip, 80, ip.String()
	}
	g := req.Service*m.cfg.DestsPerService + req.Dest
	ip = offsetAddr(knownDestBase, uint32(g)+1)
	port = destPorts[g%len(destPorts)]
	var host string
	if g%4 == 3 {
		host = "api-" + strconv.Itoa(g) + ".partner.example.com"
	} else {
		host = "svc-" + strconv.Itoa(g) + "." + m.services[req.Service].namespace + ".svc.cluster.local"
	}
	if port == 80 {
		return ip, port, host
	}
	return ip, port, host + ":" + strconv.Itoa(port)
}

var pathTemplates = []string{"/api/v1/orders/%d", "/api/v1/items/%d/stock", "/v2/users/%d/profile", "/healthz", "/graphql", "/api/v1/search?q=item-%d&limit=20"}

// Exchange is the ext_proc messages of one HTTP request, in the order Envoy sends them:
// request headers (with attributes), then optionally the request body, then optionally the
// response headers (with response attributes).
type Exchange struct {
	Msgs []*extprocv3.ProcessingRequest
}

// Build makes the messages for req, drawing the per-request details (method, path, ids) from r.
func (m *Mix) Build(req Req, r *rand.Rand) Exchange {
	svc := &m.services[req.Service]
	ip, port, authority := m.destination(req)
	method := "GET"
	switch x := r.IntN(100); {
	case req.Dest < 0:
	case x < 15:
		method = "POST"
	case x < 20:
		method = "PUT"
	}
	hasBody := method != "GET" && m.cfg.BodyBytes > 0
	path := "/"
	if req.Dest >= 0 {
		path = pathTemplates[(req.Service+req.Dest)%len(pathTemplates)]
		if pre, post, ok := strings.Cut(path, "%d"); ok {
			path = pre + strconv.Itoa(r.IntN(100000)) + post
		}
	}
	reqID, traceparent := ids(r)
	hdrs := []*corev3.HeaderValue{
		hv(":authority", authority),
		hv(":path", path),
		hv(":method", method),
		hv(":scheme", "http"),
		hv("user-agent", svc.userAgent),
		hv("accept", "application/json"),
		hv("accept-encoding", "gzip, deflate"),
		hv("x-forwarded-proto", "http"),
		hv("x-request-id", reqID),
		hv(contract.TraceparentKey, traceparent),
		hv("x-envoy-peer-metadata-id", svc.nodeID),
		hv("x-envoy-peer-metadata", svc.peerMeta),
	}
	if hasBody {
		hdrs = append(hdrs, hv("content-type", "application/json"), hv("content-length", strconv.Itoa(m.cfg.BodyBytes)))
	}
	attrs := &structpb.Struct{Fields: map[string]*structpb.Value{
		contract.AttrNodeID:        structpb.NewStringValue(svc.nodeID),
		contract.AttrNodeNamespace: structpb.NewStringValue(svc.namespace),
		contract.AttrNodeWorkload:  structpb.NewStringValue(svc.workload),
		contract.AttrDestination:   structpb.NewStringValue(netip.AddrPortFrom(ip, uint16(port)).String()),
		contract.AttrSourceAddress: structpb.NewStringValue(svc.podIP + ":" + strconv.Itoa(32768+r.IntN(28000))),
	}}
	first := &extprocv3.ProcessingRequest{
		Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{
			Headers:     &corev3.HeaderMap{Headers: hdrs},
			EndOfStream: !hasBody,
		}},
		Attributes: map[string]*structpb.Struct{contract.AttributesKey: attrs},
	}
	if m.cfg.ProtocolConfig {
		mode := extprocfilterv3.ProcessingMode_NONE
		if m.cfg.Body {
			mode = extprocfilterv3.ProcessingMode_BUFFERED
		}
		first.ProtocolConfig = &extprocv3.ProtocolConfiguration{RequestBodyMode: mode, ResponseBodyMode: extprocfilterv3.ProcessingMode_NONE}
	}
	ex := Exchange{Msgs: append(make([]*extprocv3.ProcessingRequest, 0, 3), first)}
	if m.cfg.Body && hasBody {
		ex.Msgs = append(ex.Msgs, &extprocv3.ProcessingRequest{
			Request: &extprocv3.ProcessingRequest_RequestBody{RequestBody: &extprocv3.HttpBody{
				Body: jsonBody(m.cfg.BodyBytes, r), EndOfStream: true,
			}},
		})
	}
	if m.cfg.Response {
		status := "200"
		switch x := r.IntN(100); {
		case x < 2:
			status = "503"
		case x < 6:
			status = "404"
		}
		ex.Msgs = append(ex.Msgs, &extprocv3.ProcessingRequest{
			Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{
				Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
					hv(":status", status),
					hv("content-type", "application/json"),
					hv("content-length", strconv.Itoa(64+r.IntN(4096))),
					hv("date", "Tue, 02 Jun 2026 15:04:05 GMT"),
					hv("x-envoy-upstream-service-time", strconv.Itoa(1+r.IntN(40))),
					hv("server", "envoy"),
				}},
				EndOfStream: false,
			}},
			Attributes: map[string]*structpb.Struct{contract.AttributesKey: {Fields: map[string]*structpb.Value{
				contract.AttrUpstreamAddress: structpb.NewStringValue(netip.AddrPortFrom(ip, uint16(port)).String()),
			}}},
		})
	}
	return ex
}

func hv(k, v string) *corev3.HeaderValue { return &corev3.HeaderValue{Key: k, RawValue: []byte(v)} }

// ids returns a random x-request-id (UUID v4) and W3C traceparent.
func ids(r *rand.Rand) (requestID, traceparent string) {
	var b [40]byte // 16 bytes of UUID, 16 of trace id, 8 of span id
	for i := 0; i < len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	u := make([]byte, 0, 36)
	for i, end := range []int{4, 6, 8, 10, 16} {
		if i > 0 {
			u = append(u, '-')
		}
		u = hex.AppendEncode(u, b[[]int{0, 4, 6, 8, 10}[i]:end])
	}
	tp := make([]byte, 0, 55)
	tp = append(tp, "00-"...)
	tp = hex.AppendEncode(tp, b[16:32])
	tp = append(tp, '-')
	tp = hex.AppendEncode(tp, b[32:40])
	tp = append(tp, "-01"...)
	return string(u), string(tp)
}

// jsonBody returns n bytes of JSON-looking text.
func jsonBody(n int, r *rand.Rand) []byte {
	b := make([]byte, 0, n)
	b = append(b, `{"items":[`...)
	for len(b) < n-2 {
		b = strconv.AppendInt(b, int64(r.IntN(1_000_000)), 10)
		b = append(b, ',')
	}
	for len(b) < n {
		b = append(b, ']')
		if len(b) < n {
			b = append(b, '}')
		}
	}
	return b[:n]
}
