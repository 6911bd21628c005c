// Package certs serves TLS certificates from PEM files and reloads them when the files
// change, for meshguard's listeners (ext_proc gRPC, the admin API, and the xDS server): a
// Source watches a certificate, its key and, for mutual TLS, a client CA bundle; every new
// handshake uses what the files held at the last poll, so rotated certificates (cert-manager,
// Kubernetes secret updates, Istio's SDS-written files) take effect without a restart and
// without dropping established connections.
//
// Change detection reads the files at each poll and compares their digest, rather than their
// modification time and size: a Kubernetes secret volume swaps a symlink (the files' own
// times may not move), and a rewrite within the same second with the same size is missed by
// mtime+size. Three small files a few seconds apart cost nothing, and need no fsnotify
// dependency, which also misses symlink swaps unless the directory is watched.
//
// A file that does not parse, or a key that does not match its certificate (as between two
// writes of a rotation), keeps the previous certificate in use; the error is logged once per
// distinct bad content and reported to OnReload.
package certs

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultInterval is how often a Source polls its files by default.
const DefaultInterval = 5 * time.Second

// Config configures a Source.
type Config struct {
	// Name names the listener in logs ("ext_proc", "admin").
	Name string
	// CertFile and KeyFile are the server certificate (chain) and its private key, PEM.
	CertFile, KeyFile string
	// ClientCAFile, when set, is a PEM bundle of CAs that client certificates must chain to.
	ClientCAFile string
	// ClientAuth is the client-certificate policy when ClientCAFile is set. Default:
	// tls.RequireAndVerifyClientCert (mutual TLS). tls.VerifyClientCertIfGiven lets
	// clients without a certificate in (for probes) and leaves the decision to the caller.
	ClientAuth tls.ClientAuthType
	// NextProtos are the ALPN protocols offered (gRPC's credentials add "h2" themselves).
	NextProtos []string
	// Interval is the poll interval of Run. Default: DefaultInterval.
	Interval time.Duration
	// Logger receives reloads and reload failures. Default: slog.Default().
	Logger *slog.Logger
	// OnReload, when set, is called after each attempt to load changed files: err is nil
	// when the new files are in use.
	OnReload func(err error)
}

// Source holds the current certificate of a listener. It is safe for concurrent use.
type Source struct {
	cfg Config
	cur atomic.Pointer[state]

	mu     sync.Mutex // serialises Reload
	badSum [sha256.Size]byte
	badErr error // why the files with digest badSum are not in use

	// polled, when set (by tests, before Run starts), is called after each poll of Run:
	// an event to count polls by, where a test asserts what many polls did not do.
	polled func()
}

// state is what one version of the files holds.
type state struct {
	sum    [sha256.Size]byte
	config *tls.Config
	leaf   *x509.Certificate
}

// New loads the files, and fails when they cannot be used: a listener must not start
// without a certificate.
func New(cfg Config) (*Source, error) {
	if cfg.CertFile == "" || cfg.KeyFile == "" {
		return nil, errors.New("certs: a certificate file and a key file are both needed")
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ClientCAFile != "" && cfg.ClientAuth == tls.NoClientCert {
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	s := &Source{cfg: cfg}
	files, sum, err := s.read()
	if err != nil {
		return nil, err
	}
	st, err := s.parse(files, sum)
	if err != nil {
		return nil, err
	}
	s.cur.Store(st)
	return s, nil
}

// TLSConfig returns a server configuration whose every handshake uses the current files.
func (s *Source) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: s.cfg.NextProtos,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return s.cur.Load().config, nil
		},
	}
}

// Leaf returns the certificate in use.
func (s *Source) Leaf() *x509.Certificate { return s.cur.Load().leaf }

// Run polls the files every Interval until ctx is done.
func (s *Source) Run(ctx context.Context) {
	t := time.NewTicker(s.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.Reload()
			if s.polled != nil {
				s.polled()
			}
		}
	}
}

// Reload reads the files and, when they changed, puts them in use. It reports whether new
// files were put in use; err is set when the files could not be read or used, in which case
// the previous ones stay. A failure is logged and reported to OnReload once per distinct
// content of the files.
func (s *Source) Reload() (changed bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	files, sum, err := s.read()
	switch sum {
	case s.cur.Load().sum:
		return false, nil
	case s.badSum:
		return false, s.badErr // reported when first seen
	}
	var st *state
	if err == nil {
		st, err = s.parse(files, sum)
	}
	if err != nil {
		s.badSum, s.badErr = sum, err
		s.cfg.Logger.Error("TLS files changed but cannot be used; keeping the current certificate",
			slog.String("listener", s.cfg.Name), slog.Any("error", err))
		s.report(err)
		return false, err
	}
	s.badSum, s.badErr = [sha256.Size]byte{}, nil
	s.cur.Store(st)
	s.cfg.Logger.Info("TLS certificate reloaded", slog.String("listener", s.cfg.Name),
		slog.String("subject", st.leaf.Subject.String()), slog.String("serial", st.leaf.SerialNumber.String()),
		slog.Time("not_after", st.leaf.NotAfter), slog.Bool("client_ca", s.cfg.ClientCAFile != ""))
	s.report(nil)
	return true, nil
}

func (s *Source) report(err error) {
	if s.cfg.OnReload != nil {
		s.cfg.OnReload(err)
	}
}

// tlsFiles are the contents of a Source's files.
type tlsFiles struct{ cert, key, clientCA []byte }

// read reads every file and digests them together. When a file cannot be read, the digest
// is of the error text, so that the same failure is logged once.
func (s *Source) read() (tlsFiles, [sha256.Size]byte, error) {
	var f tlsFiles
	var errs []error
	for _, r := range []struct {
		path string
		dst  *[]byte
	}{{s.cfg.CertFile, &f.cert}, {s.cfg.KeyFile, &f.key}, {s.cfg.ClientCAFile, &f.clientCA}} {
		if r.path == "" {
			continue
		}
		b, err := os.ReadFile(r.path)
		if err != nil {
			errs = append(errs, err)
		}
		*r.dst = b
	}
	if err := errors.Join(errs...); err != nil {
		return f, sha256.Sum256([]byte(err.Error())), fmt.Errorf("certs %s: %w", s.cfg.Name, err)
	}
	h := sha256.New()
	for _, b := range [][]byte{f.cert, f.key, f.clientCA} {
		fmt.Fprintf(h, "%d:", len(b))
		h.Write(b)
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return f, sum, nil
}

func (s *Source) parse(f tlsFiles, sum [sha256.Size]byte) (*state, error) {
	cert, err := tls.X509KeyPair(f.cert, f.key)
	if err != nil {
		return nil, fmt.Errorf("certs %s: %s and %s: %w", s.cfg.Name, s.cfg.CertFile, s.cfg.KeyFile, err)
	}
	leaf := cert.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("certs %s: %s: %w", s.cfg.Name, s.cfg.CertFile, err)
		}
	}
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		NextProtos:   s.cfg.NextProtos,
	}
	if s.cfg.ClientCAFile != "" {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(f.clientCA) {
			return nil, fmt.Errorf("certs %s: %s holds no PEM certificate", s.cfg.Name, s.cfg.ClientCAFile)
		}
		cfg.ClientCAs, cfg.ClientAuth = pool, s.cfg.ClientAuth
	}
	return &state{sum: sum, config: cfg, leaf: leaf}, nil
}
