package certs

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshguard/meshguard/extproc/certs/certtest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// reloads collects OnReload calls.
type reloads struct {
	mu   sync.Mutex
	errs []error
	ch   chan error
}

func newReloads() *reloads { return &reloads{ch: make(chan error, 100)} }

func (r *reloads) on(err error) {
	r.mu.Lock()
	r.errs = append(r.errs, err)
	r.mu.Unlock()
	r.ch <- err
}

// next waits for the next reload attempt.
func (r *reloads) next(t *testing.T) error {
	t.Helper()
	select {
	case err := <-r.ch:
		return err
	case <-time.After(5 * time.Second):
		t.Fatal("no reload within 5s")
		return nil
	}
}

// polls counts the polls of a Source's Run (through its polled hook).
type polls struct {
	mu     sync.Mutex
	n      int
	signal chan struct{} // a token when n moved; never blocks the poller
}

func (p *polls) polled() {
	p.mu.Lock()
	p.n++
	p.mu.Unlock()
	select {
	case p.signal <- struct{}{}:
	default:
	}
}

func (p *polls) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n
}

// wait waits until Run has finished n more polls.
func (p *polls) wait(t *testing.T, n int) {
	t.Helper()
	target := p.count() + n
	timeout := time.After(10 * time.Second)
	for p.count() < target {
		select {
		case <-p.signal:
		case <-timeout:
			t.Fatalf("%d polls within 10s, want %d", p.count()-target+n, n)
		}
	}
}

// startSource makes a Source over files and polls them every 10ms until the test ends.
func startSource(t *testing.T, cfg Config) (*Source, *reloads, *syncBuffer) {
	src, r, logs, _ := startCountedSource(t, cfg)
	return src, r, logs
}

// startCountedSource is startSource that also counts Run's polls.
func startCountedSource(t *testing.T, cfg Config) (*Source, *reloads, *syncBuffer, *polls) {
	t.Helper()
	var logs syncBuffer
	r := newReloads()
	cfg.Interval, cfg.OnReload = 10*time.Millisecond, r.on
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	src, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	p := &polls{signal: make(chan struct{}, 1)}
	src.polled = p.polled
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { src.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return src, r, &logs, p
}

// serveHTTPS serves "ok" over TLS from src on a loopback port and returns its URL.
func serveHTTPS(t *testing.T, src *Source) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler:  http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") }),
		ErrorLog: slog.NewLogLogger(slog.NewTextHandler(io.Discard, nil), slog.LevelError),
	}
	go srv.Serve(tls.NewListener(lis, src.TLSConfig()))
	t.Cleanup(func() { srv.Close() })
	return "https://" + lis.Addr().String()
}

// alwaysSend sends c whatever CAs the server asks for (crypto/tls alone sends no certificate
// the server's CAs did not issue, which would hide a server that accepts any).
func alwaysSend(c tls.Certificate) func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &c, nil }
}

// handshake makes a new TLS connection to url's host and returns the server's leaf.
func handshake(t *testing.T, url string, roots *x509.CertPool, client *tls.Certificate) (*x509.Certificate, error) {
	t.Helper()
	cfg := &tls.Config{RootCAs: roots, ServerName: "localhost"}
	if client != nil {
		cfg.GetClientCertificate = alwaysSend(*client)
	}
	tr := &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if string(body) != "ok" {
		return nil, errors.New("unexpected body " + string(body))
	}
	return resp.TLS.PeerCertificates[0], nil
}

func TestRotatedCertificateIsServedAndBadFilesAreNot(t *testing.T) {
	ca := certtest.NewCA(t, "ca")
	files := certtest.NewFiles(t.TempDir())
	a, b, c := ca.Server(t, "a"), ca.Server(t, "b"), ca.Server(t, "c")
	files.Write(t, a, nil)
	src, r, logs, polls := startCountedSource(t, Config{Name: "test", CertFile: files.Cert, KeyFile: files.Key})
	url := serveHTTPS(t, src)

	serving := func() string {
		t.Helper()
		leaf, err := handshake(t, url, ca.Pool(), nil)
		if err != nil {
			t.Fatal(err)
		}
		return leaf.Subject.CommonName
	}
	if got := serving(); got != "a" {
		t.Fatalf("serving %q, want a", got)
	}

	files.Write(t, b, nil)
	if err := r.next(t); err != nil {
		t.Fatalf("reload of b: %v", err)
	}
	if got := serving(); got != "b" {
		t.Fatalf("after rotation serving %q, want b", got)
	}
	if src.Leaf().Subject.CommonName != "b" {
		t.Errorf("Leaf %q", src.Leaf().Subject.CommonName)
	}

	for _, tc := range []struct {
		name      string
		cert, key []byte
		wantErr   string
	}{
		{"key of another certificate", c.CertPEM, b.KeyPEM, "private key does not match"},
		{"garbage key", b.CertPEM, []byte("not a key"), "failed to find any PEM data in key input"},
		{"truncated certificate", b.CertPEM[:len(b.CertPEM)/2], b.KeyPEM, "failed to find any PEM data in certificate input"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			files.WriteRaw(t, tc.cert, tc.key, nil)
			err := r.next(t)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("reload error %v, want %q", err, tc.wantErr)
			}
			if got := serving(); got != "b" {
				t.Fatalf("serving %q after a bad rotation, want b still", got)
			}
		})
	}
	// A bad content is reported once, however often it is polled: the last one is polled
	// 5 more times, and neither logged nor reported again.
	polls.wait(t, 5)
	if n := strings.Count(logs.String(), "cannot be used"); n != 3 {
		t.Errorf("%d error lines for 3 bad contents:\n%s", n, logs.String())
	}
	select {
	case err := <-r.ch:
		t.Errorf("a bad content already reported was reported again: %v", err)
	default:
	}
	// Good files again: in use again.
	files.Write(t, c, nil)
	if err := r.next(t); err != nil {
		t.Fatal(err)
	}
	if got := serving(); got != "c" {
		t.Fatalf("serving %q, want c", got)
	}
}

// serveGRPC serves grpc.health.v1 over src's TLS on a loopback port.
func serveGRPC(t *testing.T, src *Source) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(src.TLSConfig())))
	healthpb.RegisterHealthServer(gs, health.NewServer())
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	return lis.Addr().String()
}

// check makes a health check over a new connection with client's certificate (none when
// nil).
func check(t *testing.T, addr string, roots *x509.CertPool, client *certtest.Leaf) error {
	t.Helper()
	cfg := &tls.Config{RootCAs: roots, ServerName: "localhost"}
	if client != nil {
		cfg.GetClientCertificate = alwaysSend(client.TLS(t))
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	return err
}

func TestMutualTLSOverGRPC(t *testing.T) {
	ca, otherCA := certtest.NewCA(t, "mesh"), certtest.NewCA(t, "other")
	files := certtest.NewFiles(t.TempDir())
	files.Write(t, ca.Server(t, "meshguard"), ca)
	src, r, _ := startSource(t, Config{Name: "ext_proc", CertFile: files.Cert, KeyFile: files.Key, ClientCAFile: files.ClientCA})
	addr := serveGRPC(t, src)
	envoy, stranger := ca.Client(t, "envoy"), otherCA.Client(t, "stranger")

	for _, tc := range []struct {
		name   string
		client *certtest.Leaf
		ok     bool
	}{
		{"client certificate from the client CA", envoy, true},
		{"no client certificate", nil, false},
		{"client certificate from another CA", stranger, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := check(t, addr, ca.Pool(), tc.client)
			if tc.ok && err != nil {
				t.Fatalf("refused: %v", err)
			}
			if !tc.ok && status.Code(err) != codes.Unavailable {
				t.Fatalf("got %v, want the handshake refused (Unavailable)", err)
			}
		})
	}

	// Rotate the client CA: the other CA's clients get in, the old CA's no longer.
	files.Write(t, ca.Server(t, "meshguard"), otherCA)
	if err := r.next(t); err != nil {
		t.Fatal(err)
	}
	if err := check(t, addr, ca.Pool(), stranger); err != nil {
		t.Errorf("client of the new client CA refused: %v", err)
	}
	if err := check(t, addr, ca.Pool(), envoy); status.Code(err) != codes.Unavailable {
		t.Errorf("client of the old client CA: %v, want refused", err)
	}
}

func TestVerifyClientCertIfGivenLetsProbesIn(t *testing.T) {
	ca, otherCA := certtest.NewCA(t, "ops"), certtest.NewCA(t, "other")
	files := certtest.NewFiles(t.TempDir())
	files.Write(t, ca.Server(t, "admin"), ca)
	src, _, _ := startSource(t, Config{Name: "admin", CertFile: files.Cert, KeyFile: files.Key, ClientCAFile: files.ClientCA,
		ClientAuth: tls.VerifyClientCertIfGiven})
	url := serveHTTPS(t, src)
	if _, err := handshake(t, url, ca.Pool(), nil); err != nil {
		t.Errorf("without a client certificate: %v", err)
	}
	operator := ca.Client(t, "operator").TLS(t)
	if _, err := handshake(t, url, ca.Pool(), &operator); err != nil {
		t.Errorf("with a good client certificate: %v", err)
	}
	stranger := otherCA.Client(t, "stranger").TLS(t)
	if _, err := handshake(t, url, ca.Pool(), &stranger); err == nil {
		t.Error("a client certificate from another CA was accepted")
	}
}

func TestNewRefusesUnusableFiles(t *testing.T) {
	ca := certtest.NewCA(t, "ca")
	leaf, other := ca.Server(t, "a"), ca.Server(t, "b")
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cert, key, otherKey := write("cert.pem", leaf.CertPEM), write("key.pem", leaf.KeyPEM), write("other-key.pem", other.KeyPEM)
	notPEM := write("not.pem", []byte("hello"))
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no key", Config{CertFile: cert}, "both needed"},
		{"missing file", Config{CertFile: cert, KeyFile: filepath.Join(dir, "nope.pem")}, "no such file"},
		{"key of another certificate", Config{CertFile: cert, KeyFile: otherKey}, "does not match"},
		{"client CA without certificates", Config{CertFile: cert, KeyFile: key, ClientCAFile: notPEM}, "holds no PEM certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: %v, want an error with %q", err, tc.want)
			}
		})
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
