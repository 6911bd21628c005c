package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/meshguard/meshguard/extproc"
	"github.com/meshguard/meshguard/extproc/certs/certtest"
	"github.com/meshguard/meshguard/extproc/envoysim"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// mtlsClient is an ext_proc client that presents cert (none when nil) and trusts roots.
func mtlsClient(t *testing.T, addr string, roots *x509.CertPool, cert *certtest.Leaf) extprocv3.ExternalProcessorClient {
	t.Helper()
	cfg := &tls.Config{RootCAs: roots, ServerName: "localhost"}
	if cert != nil {
		c := cert.TLS(t)
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &c, nil }
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return extprocv3.NewExternalProcessorClient(conn)
}

// httpsGet makes a GET over a new TLS connection, presenting cert (none when nil). It
// returns the status, the body and the server's certificate.
func httpsGet(t *testing.T, url string, roots *x509.CertPool, cert *certtest.Leaf) (int, string, *x509.Certificate) {
	t.Helper()
	cfg := &tls.Config{RootCAs: roots, ServerName: "localhost"}
	if cert != nil {
		c := cert.TLS(t)
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &c, nil }
	}
	tr := &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), resp.TLS.PeerCertificates[0]
}

// TestServeMutualTLS serves ext_proc and the admin API over mutual TLS from files made in
// the test, rotates the ext_proc certificate and checks that a new handshake sees it.
func TestServeMutualTLS(t *testing.T) {
	mesh, ops, other := certtest.NewCA(t, "mesh"), certtest.NewCA(t, "ops"), certtest.NewCA(t, "other")
	ep, adm := certtest.NewFiles(t.TempDir()), certtest.NewFiles(t.TempDir())
	ep.Write(t, mesh.Server(t, "meshguard-1"), mesh)
	adm.Write(t, ops.Server(t, "meshguard-admin"), ops)
	ts := startTestServer(t, t.TempDir(),
		"--tls-cert", ep.Cert, "--tls-key", ep.Key, "--tls-client-ca", ep.ClientCA,
		"--admin-tls-cert", adm.Cert, "--admin-tls-key", adm.Key, "--admin-tls-client-ca", adm.ClientCA,
		"--admin-cert-roles", "operator=operator", "--tls-reload-interval", "20ms")
	envoy, operator, stranger := mesh.ClientURI(t, "envoy", "spiffe://cluster.local/ns/shop/sa/checkout"), ops.Client(t, "operator"), other.Client(t, "stranger")
	intern := ops.Client(t, "intern") // verified, but --admin-cert-roles gives it no role
	req := checkout.request("203.0.113.10", 443, "api.stripe.com", "GET", "/", "")

	t.Run("ext_proc", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			cert *certtest.Leaf
			ok   bool
		}{{"Envoy's mesh certificate", envoy, true}, {"no certificate", nil, false}, {"another CA's certificate", stranger, false}} {
			t.Run(tc.name, func(t *testing.T) {
				res, err := envoysim.Do(context.Background(), mtlsClient(t, ts.extprocAddr, mesh.Pool(), tc.cert), req, 5*time.Second)
				if tc.ok && (err != nil || res.Immediate != nil) {
					t.Fatalf("over mTLS: %v %v", res.Immediate, err)
				}
				if !tc.ok && status.Code(err) != codes.Unavailable {
					t.Fatalf("got %v, want the handshake refused", err)
				}
			})
		}
	})

	t.Run("admin", func(t *testing.T) {
		base := "https://" + ts.adminAddr
		for _, tc := range []struct {
			name, path string
			cert       *certtest.Leaf
			want       int
		}{
			{"probe without certificate", "/healthz", nil, 200},
			{"readiness without certificate", "/readyz", nil, 200},
			{"API without certificate", "/v1/services", nil, 401},
			{"metrics without certificate", "/metrics", nil, 200}, // open, as the probes
			{"API with the operator's certificate", "/v1/services", operator, 200},
			{"API with a certificate that has no role", "/v1/services", intern, 403},
		} {
			t.Run(tc.name, func(t *testing.T) {
				if code, body, _ := httpsGet(t, base+tc.path, ops.Pool(), tc.cert); code != tc.want {
					t.Fatalf("GET %s: %d %s, want %d", tc.path, code, body, tc.want)
				}
			})
		}
		_, metrics, _ := httpsGet(t, base+"/metrics", ops.Pool(), operator)
		if err := contains(metrics, `meshguard_tls_certificate_expiry_timestamp_seconds{listener="ext_proc"}`,
			`meshguard_tls_certificate_expiry_timestamp_seconds{listener="admin"}`); err != nil {
			t.Error(err)
		}
	})

	t.Run("rotation", func(t *testing.T) {
		ep.Write(t, mesh.Server(t, "meshguard-2"), mesh)
		deadline := time.Now().Add(5 * time.Second)
		for {
			conn, err := tls.Dial("tcp", ts.extprocAddr, &tls.Config{RootCAs: mesh.Pool(), ServerName: "localhost", NextProtos: []string{"h2"},
				Certificates: []tls.Certificate{envoy.TLS(t)}})
			if err != nil {
				t.Fatal(err)
			}
			cn := conn.ConnectionState().PeerCertificates[0].Subject.CommonName
			conn.Close()
			if cn == "meshguard-2" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("still serving %s 5s after rotation", cn)
			}
			time.Sleep(20 * time.Millisecond)
		}
		if _, err := envoysim.Do(context.Background(), mtlsClient(t, ts.extprocAddr, mesh.Pool(), envoy), req, 5*time.Second); err != nil {
			t.Fatalf("after rotation: %v", err)
		}
		_, metrics, _ := httpsGet(t, "https://"+ts.adminAddr+"/metrics", ops.Pool(), operator)
		if err := contains(metrics, `meshguard_tls_reloads_total{listener="ext_proc",result="ok"} 1`); err != nil {
			t.Error(err)
		}
	})
}

// TestAdversaryXDSNeedsClientCertificate (issue 10, case 8: xDS and ALS are open): with
// --xds-tls-*, the xDS and access-log server speaks only TLS and takes only client
// certificates of its CA; a workload without one, with a certificate of another CA, or in
// plaintext is refused.
func TestAdversaryXDSNeedsClientCertificate(t *testing.T) {
	mesh, other := certtest.NewCA(t, "mesh"), certtest.NewCA(t, "other")
	files := certtest.NewFiles(t.TempDir())
	files.Write(t, mesh.Server(t, "meshguard-xds"), mesh)
	ts := startTestServer(t, t.TempDir(), "--xds-tls-cert", files.Cert, "--xds-tls-key", files.Key, "--xds-tls-client-ca", files.ClientCA)
	check := func(creds credentials.TransportCredentials) error {
		conn, err := grpc.NewClient(ts.control.addr, grpc.WithTransportCredentials(creds))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	}
	client := func(leaf *certtest.Leaf) credentials.TransportCredentials {
		cfg := &tls.Config{RootCAs: mesh.Pool(), ServerName: "localhost"}
		if leaf != nil {
			c := leaf.TLS(t)
			cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &c, nil }
		}
		return credentials.NewTLS(cfg)
	}
	for _, tc := range []struct {
		name  string
		creds credentials.TransportCredentials
		ok    bool
	}{
		{"the mesh's client certificate", client(mesh.Client(t, "envoy")), true},
		{"no client certificate", client(nil), false},
		{"another CA's certificate", client(other.Client(t, "stranger")), false},
		{"plaintext", insecure.NewCredentials(), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := check(tc.creds)
			if tc.ok && err != nil {
				t.Fatalf("refused: %v", err)
			}
			if !tc.ok && status.Code(err) != codes.Unavailable {
				t.Fatalf("got %v, want the connection refused", err)
			}
		})
	}
	_, metrics := ts.http(t, "GET", "/metrics", nil)
	if err := contains(metrics, `meshguard_tls_certificate_expiry_timestamp_seconds{listener="xds"}`); err != nil {
		t.Error(err)
	}
}

func TestPprofOnlyWhenAsked(t *testing.T) {
	for _, tc := range []struct {
		name  string
		flags []string
		want  int
	}{{"default", nil, http.StatusNotFound}, {"--pprof", []string{"--pprof"}, http.StatusOK}} {
		t.Run(tc.name, func(t *testing.T) {
			ts := startTestServer(t, t.TempDir(), tc.flags...)
			code, _ := ts.http(t, "GET", "/debug/pprof/", nil)
			if code != tc.want {
				t.Fatalf("GET /debug/pprof/: %d, want %d", code, tc.want)
			}
			if tc.want != http.StatusOK {
				return
			}
			// What bench/load fetches: a CPU profile (gzipped protobuf).
			code, body := ts.http(t, "GET", "/debug/pprof/profile?seconds=1", nil)
			if code != http.StatusOK || !strings.HasPrefix(body, "\x1f\x8b") {
				t.Fatalf("profile: %d, %d bytes", code, len(body))
			}
			// The admin API is still there.
			if code, _ := ts.http(t, "GET", "/v1/services", nil); code != http.StatusOK {
				t.Fatalf("GET /v1/services with --pprof: %d", code)
			}
		})
	}
}

// TestMaxStreamsFlag: allowed requests waiting for their responses hold no --max-streams
// slot; with --max-streams decisions in progress (the decider held), one more stream fails at
// once with RESOURCE_EXHAUSTED.
func TestMaxStreamsFlag(t *testing.T) {
	held := newHeldDecider()
	ts := startWrappedTestServer(t, t.TempDir(), held.wrap, "--max-streams", "2")
	req := checkout.request("203.0.113.10", 443, "api.stripe.com", "GET", "/", "")
	first := &extprocv3.ProcessingRequest{
		Request:    &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{Headers: envoysim.HeaderMap(req.Headers)}},
		Attributes: envoysim.Attributes(req.Attributes),
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	open := func() extprocv3.ExternalProcessor_ProcessClient {
		s, err := ts.client.Process(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Send(first); err != nil {
			t.Fatal(err)
		}
		return s
	}
	for i := range 2 {
		if r, err := open().Recv(); err != nil || r.GetRequestHeaders() == nil {
			t.Fatalf("allowed stream %d: %v %v", i, r, err)
		}
	}
	held.hold.Store(true)
	deciding := []extprocv3.ExternalProcessor_ProcessClient{open(), open()}
	for range deciding {
		select {
		case <-held.entered:
		case <-time.After(10 * time.Second):
			t.Fatal("a decision never reached the decider: the waiting streams held its slot")
		}
	}
	start := time.Now()
	_, err := envoysim.Do(ctx, ts.client, req, time.Second)
	if status.Code(err) != codes.ResourceExhausted || time.Since(start) > 500*time.Millisecond {
		t.Fatalf("third decision: %v after %v, want RESOURCE_EXHAUSTED at once", err, time.Since(start))
	}
	code, metrics := ts.http(t, "GET", "/metrics", nil)
	if code != 200 || !strings.Contains(metrics, "meshguard_extproc_streams_rejected_total 1") {
		t.Fatalf("metrics: %d, no meshguard_extproc_streams_rejected_total 1", code)
	}
	close(held.release)
	for i, s := range deciding {
		if r, err := s.Recv(); err != nil || r.GetRequestHeaders() == nil {
			t.Fatalf("held decision %d: %v %v", i, r, err)
		}
	}
}

func TestParseServeFaultFlags(t *testing.T) {
	for _, tc := range []struct {
		name  string
		args  []string
		wants []string // error fragments; none: valid
	}{
		{"TLS cert without key", []string{"--tls-cert", "c.pem"}, []string{"--tls-cert and --tls-key go together"}},
		{"client CA without cert", []string{"--tls-client-ca", "ca.pem", "--admin-tls-client-ca", "ca.pem"},
			[]string{"--tls-client-ca needs --tls-cert", "--admin-tls-client-ca needs --admin-tls-cert"}},
		{"budget", []string{"--decision-budget", "-1s", "--on-budget", "maybe", "--max-streams", "-1"},
			[]string{"decision budget -1s must not be negative", `on-budget "maybe"`, "max streams -1 must not be negative"}},
		{"reload interval", []string{"--tls-reload-interval", "0s"}, []string{"--tls-reload-interval must be positive"}},
		{"remote admin with client certificates", []string{"--admin-listen", "0.0.0.0:9002",
			"--admin-tls-cert", "c.pem", "--admin-tls-key", "k.pem", "--admin-tls-client-ca", "ca.pem"}, nil},
		{"remote admin with TLS but no client certificates", []string{"--admin-listen", "0.0.0.0:9002",
			"--admin-tls-cert", "c.pem", "--admin-tls-key", "k.pem"}, []string{"is not a loopback address"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := parseServe(tc.args)
			if len(tc.wants) == 0 {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("want an error")
			}
			if err := contains(err.Error(), tc.wants...); err != nil {
				t.Fatalf("%v in:\n%v", err, err)
			}
			_ = cfg
		})
	}
	cfg, err := parseServe([]string{"--decision-budget", "25ms", "--on-budget", "block", "--max-streams", "7"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.extproc.DecisionBudget != 25*time.Millisecond || cfg.extproc.OnBudget != extproc.OnBudgetBlock || cfg.extproc.MaxStreams != 7 {
		t.Fatalf("extproc config %+v", cfg.extproc)
	}
}
