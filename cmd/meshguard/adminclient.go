package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/meshguard/meshguard/controlplane/admin"
	"github.com/spf13/pflag"
)

// adminTokenEnv is the environment variable admin clients take the token from when no
// --admin-token-file is given.
const adminTokenEnv = "MESHGUARD_ADMIN_TOKEN"

// adminTokenFileName is the token's file in the data directory.
const adminTokenFileName = "admin-token"

// adminAuth finds the admin API's bearer token for a client command: --admin-token-file,
// else $MESHGUARD_ADMIN_TOKEN, else <data-dir>/admin-token when that file exists.
type adminAuth struct {
	tokenFile string
	dataDir   string // where serve keeps its token by default
}

func (a *adminAuth) register(fs *pflag.FlagSet) {
	fs.StringVar(&a.tokenFile, "admin-token-file", "", "file holding the admin API's bearer token (default $"+adminTokenEnv+", else <data-dir>/"+adminTokenFileName+")")
}

// token returns the bearer token, "" when none is configured anywhere.
func (a adminAuth) token(lookupEnv func(string) (string, bool)) (string, error) {
	if a.tokenFile != "" {
		return readToken(a.tokenFile)
	}
	if t, ok := lookupEnv(adminTokenEnv); ok && strings.TrimSpace(t) != "" {
		return strings.TrimSpace(t), nil
	}
	if a.dataDir == "" {
		return "", nil
	}
	path := filepath.Join(a.dataDir, adminTokenFileName)
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	return readToken(path)
}

// noEnv is an environment with nothing in it.
func noEnv(string) (string, bool) { return "", false }

// readToken reads a token file: one line, surrounding white space ignored.
func readToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("admin token: %w", err)
	}
	t, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	if t = strings.TrimSpace(t); t == "" {
		return "", fmt.Errorf("admin token: %s is empty", path)
	}
	return t, nil
}

// adminClient calls a running meshguard's admin API at http(s)://host:port or
// unix:///path, with the bearer token when there is one.
type adminClient struct {
	base   string // as given, for messages
	url    string // the HTTP base URL requests go to
	token  string
	client *http.Client
}

func newAdminClient(base, token string, c *http.Client) (*adminClient, error) {
	if err := checkAdminURL(base); err != nil {
		return nil, err
	}
	if c == nil {
		c = &http.Client{}
	}
	ac := &adminClient{base: base, url: strings.TrimSuffix(base, "/"), token: token, client: c}
	if u, _ := url.Parse(base); u.Scheme == "unix" {
		sock := u.Path
		cc := *c
		cc.Transport = &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}}
		ac.client, ac.url = &cc, "http://localhost" // the admin API accepts localhost as its Host
	}
	return ac, nil
}

// checkAdminURL accepts http://host:port, https://host:port and unix:///path.
func checkAdminURL(s string) error {
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return fmt.Errorf("--admin %q: %w", s, err)
	case u.Scheme == "unix" && u.Path != "":
		return nil
	case (u.Scheme == "http" || u.Scheme == "https") && u.Host != "":
		return nil
	default:
		return fmt.Errorf("--admin %q: want http://host:port or unix:///path", s)
	}
}

// statusError is a non-200 answer of the admin API.
type statusError struct {
	status string
	msg    string
}

func (e *statusError) Error() string { return e.status + ": " + e.msg }

// do sends a /v1 request, with body as JSON when it is not nil, and returns the response
// for a 200; other statuses are a *statusError carrying the API's error message. The
// caller closes the body.
func (c *adminClient) do(ctx context.Context, method, path string, body any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.url+path, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("Content-Type", "application/json")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode == http.StatusOK {
		return resp, nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	var e admin.ErrorBody
	if json.Unmarshal(b, &e) != nil || e.Error == "" {
		e.Error = strings.TrimSpace(string(b))
	}
	if resp.StatusCode == http.StatusUnauthorized && c.token == "" {
		e.Error += " (no admin token found: give --admin-token-file or $" + adminTokenEnv + ")"
	}
	return nil, &statusError{status: resp.Status, msg: e.Error}
}

// doJSON is do, decoding the 200's body into out.
func (c *adminClient) doJSON(ctx context.Context, method, path string, body, out any) error {
	resp, err := c.do(ctx, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(io.LimitReader(resp.Body, maxServicesBody)).Decode(out)
}
