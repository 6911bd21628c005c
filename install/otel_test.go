package install

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"maps"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
)

const (
	envEndpoint = "OTEL_EXPORTER_OTLP_ENDPOINT"
	envProtocol = "OTEL_EXPORTER_OTLP_PROTOCOL"
)

// layoutOTel is the OTEL_* environment one layout gives meshguard.
type layoutOTel struct {
	layout string
	env    map[string]string
}

// containerOTel collects the OTEL_* variables of a container: literal env values and the
// data of the ConfigMaps it loads with envFrom (env wins, as in Kubernetes).
func containerOTel(t *testing.T, c *corev1.Container, configMaps []*corev1.ConfigMap) map[string]string {
	t.Helper()
	env := map[string]string{}
	for _, from := range c.EnvFrom {
		if from.ConfigMapRef == nil {
			continue
		}
		i := slices.IndexFunc(configMaps, func(cm *corev1.ConfigMap) bool { return cm.Name == from.ConfigMapRef.Name })
		if i < 0 {
			t.Fatalf("container loads ConfigMap %s, which the layout does not define", from.ConfigMapRef.Name)
		}
		for k, v := range configMaps[i].Data {
			if strings.HasPrefix(k, "OTEL_") {
				env[k] = v
			}
		}
	}
	for _, e := range c.Env {
		if strings.HasPrefix(e.Name, "OTEL_") {
			if e.ValueFrom != nil {
				t.Fatalf("%s comes from %v, which this test cannot follow", e.Name, e.ValueFrom)
			}
			env[e.Name] = e.Value
		}
	}
	return env
}

// checkOTLPProtocol checks that an OTLP endpoint comes with the protocol its port speaks:
// 4317 is OTLP/gRPC, 4318 OTLP/HTTP. The SDK's default protocol is http/protobuf, so an
// endpoint on 4317 without OTEL_EXPORTER_OTLP_PROTOCOL=grpc loses every span.
func checkOTLPProtocol(env map[string]string) error {
	for k := range env {
		if strings.HasPrefix(k, "OTEL_EXPORTER_OTLP_TRACES_") {
			return fmt.Errorf("%s: signal-specific variables are not checked here; set the generic ones", k)
		}
	}
	ep, proto := env[envEndpoint], env[envProtocol]
	if ep == "" {
		if proto != "" {
			return fmt.Errorf("%s=%s without an endpoint", envProtocol, proto)
		}
		return nil
	}
	u, err := url.Parse(ep)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return fmt.Errorf("%s=%q is not an http(s) URL", envEndpoint, ep)
	}
	if proto == "" {
		return fmt.Errorf("%s=%s without %s: the SDK default http/protobuf is assumed", envEndpoint, ep, envProtocol)
	}
	switch want := map[string]string{"4317": "grpc", "4318": "http/protobuf"}[u.Port()]; {
	case want != "" && proto != want:
		return fmt.Errorf("%s=%s is an OTLP port for %s, but %s=%s: every span would be lost", envEndpoint, ep, want, envProtocol, proto)
	case proto != "grpc" && proto != "http/protobuf":
		return fmt.Errorf("%s=%q: meshguard exports grpc or http/protobuf", envProtocol, proto)
	}
	return nil
}

func TestCheckOTLPProtocol(t *testing.T) {
	tests := []struct {
		name, endpoint, protocol string
		ok                       bool
	}{
		{name: "grpc port with grpc", endpoint: "http://c:4317", protocol: "grpc", ok: true},
		{name: "http port with http/protobuf", endpoint: "http://c:4318/", protocol: "http/protobuf", ok: true},
		{name: "own port with a protocol", endpoint: "https://otlp.example:443", protocol: "grpc", ok: true},
		{name: "nothing", ok: true},
		{name: "grpc port without protocol", endpoint: "http://c:4317"},
		{name: "grpc port with http/protobuf", endpoint: "http://c:4317", protocol: "http/protobuf"},
		{name: "http port with grpc", endpoint: "http://c:4318", protocol: "grpc"},
		{name: "http port without protocol", endpoint: "http://c:4318"},
		{name: "own port without protocol", endpoint: "http://c:9999"},
		{name: "http/json", endpoint: "http://c:4318", protocol: "http/json"},
		{name: "not a URL", endpoint: "c:4317", protocol: "grpc"},
		{name: "protocol alone", protocol: "grpc"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := map[string]string{}
			if tt.endpoint != "" {
				env[envEndpoint] = tt.endpoint
			}
			if tt.protocol != "" {
				env[envProtocol] = tt.protocol
			}
			if err := checkOTLPProtocol(env); (err == nil) != tt.ok {
				t.Fatalf("checkOTLPProtocol(%v) = %v, want ok %v", env, err, tt.ok)
			}
		})
	}
}

// otlpReceiver counts the spans it receives, by name, over OTLP/gRPC or OTLP/HTTP.
type otlpReceiver struct {
	collectortrace.UnimplementedTraceServiceServer
	mu    sync.Mutex
	names map[string]int
}

func (r *otlpReceiver) Export(_ context.Context, req *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	r.add(req)
	return &collectortrace.ExportTraceServiceResponse{}, nil
}

func (r *otlpReceiver) add(req *collectortrace.ExportTraceServiceRequest) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				r.names[s.GetName()]++
			}
		}
	}
}

func (r *otlpReceiver) got(name string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.names[name]
}

// receivers are OTLP receivers on loopback, by scheme ("http" plaintext, "https" TLS)
// and protocol; caFile holds the certificate the TLS ones present.
type receivers struct {
	addrs  map[string]map[string]string // scheme -> protocol -> host:port
	caFile string
}

// startReceivers starts OTLP/gRPC and OTLP/HTTP receivers on loopback, in plaintext and
// with TLS (a self-signed certificate for 127.0.0.1).
func startReceivers(t *testing.T, r *otlpReceiver) receivers {
	t.Helper()
	cert, caPEM := selfSigned(t)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	tlsConf := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	rs := receivers{addrs: map[string]map[string]string{}, caFile: caFile}
	for _, scheme := range []string{"http", "https"} {
		var creds []grpc.ServerOption
		if scheme == "https" {
			creds = append(creds, grpc.Creds(credentials.NewTLS(tlsConf)))
		}
		grpcLis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		gs := grpc.NewServer(creds...)
		collectortrace.RegisterTraceServiceServer(gs, r)
		go gs.Serve(grpcLis)
		t.Cleanup(gs.Stop)

		httpLis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			b, err := io.ReadAll(req.Body)
			var msg collectortrace.ExportTraceServiceRequest
			if req.Method != http.MethodPost || !strings.HasSuffix(req.URL.Path, "/v1/traces") || err != nil ||
				req.Header.Get("Content-Type") != "application/x-protobuf" || proto.Unmarshal(b, &msg) != nil {
				http.Error(w, "bad export", http.StatusBadRequest)
				return
			}
			r.add(&msg)
			out, _ := proto.Marshal(&collectortrace.ExportTraceServiceResponse{})
			w.Header().Set("Content-Type", "application/x-protobuf")
			w.Write(out)
		})}
		if scheme == "https" {
			srv.TLSConfig = tlsConf
			go srv.ServeTLS(httpLis, "", "")
		} else {
			go srv.Serve(httpLis)
		}
		t.Cleanup(func() { srv.Close() })
		rs.addrs[scheme] = map[string]string{"grpc": grpcLis.Addr().String(), "http/protobuf": httpLis.Addr().String()}
	}
	return rs
}

// selfSigned makes a certificate for 127.0.0.1 and returns it with its PEM.
func selfSigned(t *testing.T) (tls.Certificate, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "otlp receiver"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// receiverFor returns the receiver an environment's exporter must reach: the scheme of its
// endpoint and the protocol it names.
func (rs receivers) receiverFor(env map[string]string) (string, error) {
	u, err := url.Parse(env[envEndpoint])
	if err != nil {
		return "", err
	}
	addr, ok := rs.addrs[u.Scheme][env[envProtocol]]
	if !ok {
		return "", fmt.Errorf("no receiver for %s %s", u.Scheme, env[envProtocol])
	}
	return addr, nil
}

// exportWithEnv builds an OTLP trace exporter the standard way, from the OTEL_* process
// environment set to env (the exporter chosen by OTEL_EXPORTER_OTLP_PROTOCOL, as meshguard
// serve chooses it), with the endpoint's host:port replaced by receiver (scheme and path
// kept), and exports one span named name.
func exportWithEnv(t *testing.T, env map[string]string, receiver, caFile, name string) error {
	t.Helper()
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "OTEL_") {
			t.Setenv(k, "") // restored after the test
			os.Unsetenv(k)
		}
	}
	u, err := url.Parse(env[envEndpoint])
	if err != nil {
		return err
	}
	u.Host = receiver
	for k, v := range env {
		t.Setenv(k, v)
	}
	t.Setenv(envEndpoint, u.String())
	if u.Scheme == "https" {
		// The test receiver's certificate; a layout trusts the system roots.
		t.Setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", caFile)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var exp sdktrace.SpanExporter
	switch p := env[envProtocol]; p {
	case "grpc":
		exp, err = otlptracegrpc.New(ctx)
	case "http/protobuf":
		exp, err = otlptracehttp.New(ctx)
	default:
		return fmt.Errorf("protocol %q", p)
	}
	if err != nil {
		return err
	}
	defer exp.Shutdown(context.Background())
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID:    trace.TraceID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16},
		SpanID:     trace.SpanID{1, 2, 3, 4, 5, 6, 7, 8},
		TraceFlags: trace.FlagsSampled,
	})
	now := time.Now()
	span := tracetest.SpanStub{Name: name, SpanContext: sc, StartTime: now, EndTime: now.Add(time.Millisecond)}
	return exp.ExportSpans(ctx, []sdktrace.ReadOnlySpan{span.Snapshot()})
}

// layoutsOTel gathers the OTEL_* environment of every layout that runs meshguard.
func layoutsOTel(t *testing.T) []layoutOTel {
	t.Helper()
	var out []layoutOTel
	for _, file := range []string{"kubernetes/meshguard.yaml", "istio/egress-gateway/meshguard.yaml"} {
		objs := decodeFile(t, file)
		spec, _, _ := workloadPod(t, objs)
		out = append(out, layoutOTel{file, containerOTel(t, meshguardContainer(t, spec), only[*corev1.ConfigMap](objs))})
	}
	pod := renderInjectionTemplate(t)
	out = append(out, layoutOTel{"istio/sidecar/injection-values.yaml", containerOTel(t, meshguardContainer(t, &pod.Spec), nil)})
	c := loadChart(t)
	for _, values := range []string{
		"",
		"otel:\n  exporterEndpoint: http://otel-collector.observability:4317\n",
		"otel:\n  exporterEndpoint: http://otel-collector.observability:4318\n",
		"otel:\n  exporterEndpoint: https://otlp.example.com/otlp\n  exporterProtocol: http/protobuf\n",
	} {
		rendered, err := renderChart(c, values)
		if err != nil {
			t.Fatalf("helm %q: %v", values, err)
		}
		objs := decodeRendered(t, rendered)
		spec, _, _ := workloadPod(t, objs)
		out = append(out, layoutOTel{"helm " + strings.ReplaceAll(strings.TrimSpace(values), "\n", " "), containerOTel(t, meshguardContainer(t, spec), only[*corev1.ConfigMap](objs))})
	}
	return out
}

// TestLayoutSpansArrive runs every layout's OTEL_* environment against real OTLP receivers
// on loopback, one per protocol: the exporter the environment selects must deliver a span
// to the receiver that speaks that protocol.
func TestLayoutSpansArrive(t *testing.T) {
	layouts := layoutsOTel(t)
	rcv := &otlpReceiver{names: map[string]int{}}
	rs := startReceivers(t, rcv)
	var exported int
	for i, l := range layouts {
		t.Run(l.layout, func(t *testing.T) {
			if err := checkOTLPProtocol(l.env); err != nil {
				t.Fatal(err)
			}
			if l.env[envEndpoint] == "" {
				t.Logf("no endpoint: spans are off (%v)", l.env)
				return
			}
			exported++
			name := fmt.Sprintf("layout-%d", i)
			addr, err := rs.receiverFor(l.env)
			if err != nil {
				t.Fatal(err)
			}
			if err := exportWithEnv(t, l.env, addr, rs.caFile, name); err != nil {
				t.Fatalf("export with %v: %v", l.env, err)
			}
			if n := rcv.got(name); n != 1 {
				t.Fatalf("the %s receiver got %d spans named %s, want 1", l.env[envProtocol], n, name)
			}
		})
	}
	if exported < 5 {
		t.Errorf("only %d layouts export spans; every static layout sets an endpoint", exported)
	}
}

// TestMismatchedProtocolLosesSpans shows what checkOTLPProtocol guards against: the same
// export with the other protocol's exporter does not arrive.
func TestMismatchedProtocolLosesSpans(t *testing.T) {
	rcv := &otlpReceiver{names: map[string]int{}}
	rs := startReceivers(t, rcv)
	addrs := rs.addrs["http"]
	for _, proto := range slices.Sorted(maps.Keys(addrs)) {
		t.Run(proto, func(t *testing.T) {
			other := "grpc"
			if proto == "grpc" {
				other = "http/protobuf"
			}
			// A short export timeout: the gRPC exporter retries until it runs out.
			env := map[string]string{envEndpoint: "http://collector:4317", envProtocol: other, "OTEL_EXPORTER_OTLP_TIMEOUT": "1000"}
			if proto == "http/protobuf" {
				env[envEndpoint] = "http://collector:4318"
			}
			if checkOTLPProtocol(env) == nil {
				t.Fatalf("port check accepts %v", env)
			}
			name := "mismatch-" + proto
			if err := exportWithEnv(t, env, addrs[proto], rs.caFile, name); err == nil {
				t.Errorf("%s exporter to the %s receiver reported success", other, proto)
			}
			if n := rcv.got(name); n != 0 {
				t.Errorf("%s exporter delivered %d spans to the %s receiver", other, n, proto)
			}
		})
	}
}
