// Package certtest makes certificate authorities and certificates for tests: a CA issues
// server and client certificates for loopback, written as PEM files where a test needs them.
package certtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

var serial atomic.Int64

// CA is a certificate authority.
type CA struct {
	Cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	CertPEM []byte
}

// NewCA makes a self-signed CA named name.
func NewCA(t testing.TB, name string) *CA {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	cert, der := create(t, name, tmpl, tmpl, key, key)
	return &CA{Cert: cert, key: key, CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// Pool is a pool holding only the CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// Leaf is an issued certificate and its key, PEM encoded.
type Leaf struct {
	Cert            *x509.Certificate
	CertPEM, KeyPEM []byte
}

// TLS returns the leaf as a tls.Certificate.
func (l *Leaf) TLS(t testing.TB) tls.Certificate {
	t.Helper()
	c, err := tls.X509KeyPair(l.CertPEM, l.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Server issues a server certificate for localhost, 127.0.0.1 and ::1.
func (ca *CA) Server(t testing.TB, name string) *Leaf {
	t.Helper()
	return ca.issue(t, name, x509.ExtKeyUsageServerAuth)
}

// Client issues a client certificate with common name name.
func (ca *CA) Client(t testing.TB, name string) *Leaf {
	t.Helper()
	return ca.issue(t, name, x509.ExtKeyUsageClientAuth)
}

// ClientURI issues a client certificate with common name name and the given URI SANs,
// such as a SPIFFE ID "spiffe://cluster.local/ns/NS/sa/SA".
func (ca *CA) ClientURI(t testing.TB, name string, uris ...string) *Leaf {
	t.Helper()
	var us []*url.URL
	for _, s := range uris {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		us = append(us, u)
	}
	return ca.issue(t, name, x509.ExtKeyUsageClientAuth, us...)
}

func (ca *CA) issue(t testing.TB, name string, usage x509.ExtKeyUsage, uris ...*url.URL) *Leaf {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{usage},
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		URIs:        uris,
	}
	cert, der := create(t, name, tmpl, ca.Cert, key, ca.key)
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return &Leaf{
		Cert:    cert,
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}),
	}
}

// create gives tmpl a serial number, the common name name and a validity from an hour ago
// to a day ahead, and signs it for key with parentKey as parent (tmpl itself for a
// self-signed certificate). It returns the certificate and its DER.
func create(t testing.TB, name string, tmpl, parent *x509.Certificate, key, parentKey *ecdsa.PrivateKey) (*x509.Certificate, []byte) {
	t.Helper()
	tmpl.SerialNumber = big.NewInt(serial.Add(1))
	tmpl.Subject = pkix.Name{CommonName: name}
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, der
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// Files are the paths of a server's TLS files in a directory, laid out as Kubernetes
// mounts a secret: each name is a symlink into ..data, itself a symlink to a directory of
// one version of the files, so that a rotation swaps every file at once.
type Files struct {
	dir                 string
	version             int
	Cert, Key, ClientCA string
}

// NewFiles names cert.pem, key.pem and client-ca.pem in dir.
func NewFiles(dir string) *Files {
	return &Files{dir: dir, Cert: filepath.Join(dir, "cert.pem"), Key: filepath.Join(dir, "key.pem"),
		ClientCA: filepath.Join(dir, "client-ca.pem")}
}

// Write puts leaf's certificate and key, and the client CA when clientCA is not nil, in
// place at once.
func (f *Files) Write(t testing.TB, leaf *Leaf, clientCA *CA) {
	t.Helper()
	var ca []byte
	if clientCA != nil {
		ca = clientCA.CertPEM
	}
	f.WriteRaw(t, leaf.CertPEM, leaf.KeyPEM, ca)
}

// WriteRaw puts the given contents in place at once; a nil clientCA writes no client CA.
func (f *Files) WriteRaw(t testing.TB, cert, key, clientCA []byte) {
	t.Helper()
	f.version++
	version := fmt.Sprintf("..v%d", f.version)
	vdir := filepath.Join(f.dir, version)
	if err := os.Mkdir(vdir, 0o700); err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{"cert.pem": cert, "key.pem": key}
	if clientCA != nil {
		files["client-ca.pem"] = clientCA
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(vdir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
		link := filepath.Join(f.dir, name)
		if _, err := os.Lstat(link); err != nil {
			if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
				t.Fatal(err)
			}
		}
	}
	tmp := filepath.Join(f.dir, "..data_tmp")
	if err := os.Symlink(version, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(f.dir, "..data")); err != nil {
		t.Fatal(err)
	}
}
