package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Calls to meshguard's admin HTTP API (the contract in COMMON.md).

var adminClient = &http.Client{Timeout: 10 * time.Second, Transport: tokenTransport{http.DefaultTransport}}

// adminTokenFiles maps an admin base URL to the file holding its bearer token (meshguard
// writes <data-dir>/admin-token at its first start); see RegisterAdminToken.
var adminTokenFiles sync.Map

// RegisterAdminToken makes every call of the admin client to base send the token in file,
// read at each call (the file appears once meshguard has started).
func RegisterAdminToken(base, file string) {
	adminTokenFiles.Store(strings.TrimSuffix(base, "/"), file)
}

// tokenTransport adds "Authorization: Bearer" to admin calls whose base has a token file,
// or $MESHGUARD_ADMIN_TOKEN for a meshguard the load generator did not start.
type tokenTransport struct{ next http.RoundTripper }

func (t tokenTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	token := os.Getenv("MESHGUARD_ADMIN_TOKEN")
	if f, ok := adminTokenFiles.Load(r.URL.Scheme + "://" + r.URL.Host); ok {
		if b, err := os.ReadFile(f.(string)); err == nil {
			token = strings.TrimSpace(string(b))
		}
	}
	if token != "" {
		r = r.Clone(r.Context())
		r.Header.Set("Authorization", "Bearer "+token)
	}
	return t.next.RoundTrip(r)
}

// SetMode switches one service's mode: PUT /v1/services/{service}/mode {"mode": mode}, the
// service name path-escaped.
func SetMode(ctx context.Context, base, svc, mode string) error {
	body, _ := json.Marshal(map[string]string{"mode": mode})
	u := base + "/v1/services/" + url.PathEscape(svc) + "/mode"
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, u, strings.NewReader(string(body)))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := adminClient.Do(req)
	if err != nil {
		return fmt.Errorf("PUT %s: %w", u, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("PUT %s: %s: %s", u, resp.Status, strings.TrimSpace(string(b)))
	}
	io.Copy(io.Discard, resp.Body)
	return nil
}

// SetModes switches services 0..n-1 (named by name) to mode with a few requests in parallel,
// and returns how long that took.
func SetModes(ctx context.Context, base string, n int, name func(int) string, mode string) (time.Duration, error) {
	const parallel = 8
	start := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for range parallel {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := SetMode(ctx, base, name(i), mode); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
			}
		})
	}
	wg.Wait()
	return time.Since(start), firstErr
}

// ServiceCount returns how many services GET /v1/services lists, accepting either a JSON array
// or an object with a "services" array; ok is false when the answer has neither shape.
func ServiceCount(ctx context.Context, base string) (n int, ok bool, err error) {
	resp, err := adminGet(ctx, base, "/v1/services")
	if err != nil {
		return 0, false, err
	}
	defer resp.Body.Close()
	var raw json.RawMessage
	if err := json.NewDecoder(resp.Body).Decode(&raw); err != nil {
		return 0, false, fmt.Errorf("GET /v1/services: %w", err)
	}
	var arr []json.RawMessage
	if json.Unmarshal(raw, &arr) == nil {
		return len(arr), true, nil
	}
	var obj struct {
		Services []json.RawMessage `json:"services"`
	}
	if json.Unmarshal(raw, &obj) == nil && obj.Services != nil {
		return len(obj.Services), true, nil
	}
	return 0, false, nil
}

// Metric returns the value of an unlabelled Prometheus metric from GET /metrics; ok is false
// when it is not exported.
func Metric(ctx context.Context, base, name string) (v float64, ok bool, err error) {
	resp, err := adminGet(ctx, base, "/metrics")
	if err != nil {
		return 0, false, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && f[0] == name {
			v, err := strconv.ParseFloat(f[1], 64)
			return v, err == nil, err
		}
	}
	return 0, false, sc.Err()
}

// adminGet sends GET base+path with the admin client and returns the response when it is
// 200 OK; the caller closes its body.
func adminGet(ctx context.Context, base, path string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := adminClient.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return resp, nil
}

// FetchProfile saves a CPU profile of `seconds` from a net/http/pprof endpoint at base.
func FetchProfile(ctx context.Context, base string, seconds int, path string) error {
	u := fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", base, seconds)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	c := &http.Client{Timeout: time.Duration(seconds+30) * time.Second, Transport: adminClient.Transport}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("GET %s: %w", u, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return fmt.Errorf("save %s: %w", path, err)
	}
	return f.Close()
}
