package admin

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/meshguard/meshguard/flowmodel"
)

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newCA(t *testing.T, name string) testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return testCA{c, key}
}

func (ca testCA) client(t *testing.T, cn, uri string) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if uri != "" {
		u, _ := url.Parse(uri)
		tmpl.URIs = []*url.URL{u}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestClientCertificateRoles: a verified client certificate is a credential whose role
// comes from its URI SAN or common name; one no rule names gets the default role (none:
// refused); a certificate of another CA never gets through the handshake; a bad bearer
// token is refused even with a good certificate.
func TestClientCertificateRoles(t *testing.T) {
	ca := newCA(t, "meshguard test CA")
	const oncall = "spiffe://cluster.local/ns/ops/sa/oncall"
	e := newEnv(t, func(_ *flowmodel.Config, o *Options) {
		o.CertRoles = map[string]Role{oncall: RoleOperator, "dashboard": RoleViewer}
	})
	srv := httptest.NewUnstartedServer(e.h)
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	srv.TLS = &tls.Config{ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: pool}
	srv.StartTLS()
	defer srv.Close()
	client := func(cert *tls.Certificate) *http.Client {
		c := srv.Client()
		tr := c.Transport.(*http.Transport).Clone()
		if cert != nil {
			tr.TLSClientConfig.Certificates = []tls.Certificate{*cert}
		}
		return &http.Client{Transport: tr}
	}
	do := func(c *http.Client, method, path, token string, body string) (int, string) {
		t.Helper()
		hr, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		if body != "" {
			hr.Header.Set("Content-Type", "application/json")
		}
		if token != "" {
			hr.Header.Set("Authorization", "Bearer "+token)
		}
		r, err := c.Do(hr)
		if err != nil {
			return 0, err.Error()
		}
		defer r.Body.Close()
		var b strings.Builder
		buf := make([]byte, 4096)
		for {
			n, err := r.Body.Read(buf)
			b.Write(buf[:n])
			if err != nil {
				break
			}
		}
		return r.StatusCode, b.String()
	}
	op := ca.client(t, "someone", oncall)
	viewer := ca.client(t, "dashboard", "")
	nobody := ca.client(t, "stranger", "spiffe://cluster.local/ns/app/sa/app")
	foreign := newCA(t, "other CA").client(t, "x", oncall)
	mode := `{"mode":"enforce"}`

	tests := []struct {
		name   string
		cert   *tls.Certificate
		token  string
		method string
		body   string
		want   int
		say    string
	}{
		{"operator by URI SAN changes a mode", &op, "", "PUT", mode, 200, ""},
		{"viewer by CN reads", &viewer, "", "GET", "", 200, ""},
		{"viewer by CN cannot change", &viewer, "", "PUT", mode, 403, "needs operator"},
		{"unmapped certificate", &nobody, "", "GET", "", 403, "has role none"},
		{"no credential", nil, "", "GET", "", 401, "credentials required"},
		{"good certificate, bad token", &op, "not-the-token-0123456789", "PUT", mode, 401, "unknown or revoked"},
		// Go's client offers no certificate the server's CAs did not sign; either way the
		// request has no credential.
		{"certificate of another CA", &foreign, "", "GET", "", 401, "credentials required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := "/v1/services"
			if tt.method == "PUT" {
				path = modePath
			}
			code, body := do(client(tt.cert), tt.method, path, tt.token, tt.body)
			if code != tt.want || !strings.Contains(body, tt.say) {
				t.Fatalf("%d %s, want %d saying %q", code, body, tt.want, tt.say)
			}
		})
	}
	var list AuditList
	e.mustJSON(e.do("GET", "/v1/audit?service="+url.QueryEscape("shop/checkout"), adminToken, nil), &list)
	if len(list.Records) != 1 || list.Records[0].Who != oncall || list.Records[0].Role != "operator" {
		t.Fatalf("audit of the certificate's change: %+v", list.Records)
	}
}
