package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/meshguard/meshguard/controlplane/admin"
	"github.com/meshguard/meshguard/extproc"
	"github.com/meshguard/meshguard/extproc/envoysim"
	"github.com/meshguard/meshguard/flowmodel"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// demoService is one workload of the demo and the destinations it normally calls.
type demoService struct {
	ns, workload, podIP string
	calls               []demoCall
}

type demoCall struct {
	ip, host, method, path string
	port                   int
}

var demoServices = []demoService{
	{ns: "shop", workload: "checkout", podIP: "10.1.0.11", calls: []demoCall{
		{ip: "203.0.113.10", port: 443, host: "api.stripe.com", method: "POST", path: "/v1/charges"},
		{ip: "10.96.0.20", port: 8080, host: "inventory.shop.svc.cluster.local", method: "GET", path: "/items/42"},
	}},
	{ns: "shop", workload: "cart", podIP: "10.1.0.12", calls: []demoCall{
		{ip: "10.96.0.20", port: 8080, host: "inventory.shop.svc.cluster.local", method: "GET", path: "/items/7"},
		{ip: "203.0.113.50", port: 443, host: "api.exchangerate.host", method: "GET", path: "/latest?base=EUR"},
	}},
	{ns: "billing", workload: "invoices", podIP: "10.1.0.13", calls: []demoCall{
		{ip: "192.0.2.25", port: 443, host: "api.sendgrid.com", method: "POST", path: "/v3/mail/send"},
		{ip: "192.0.2.80", port: 443, host: "s3.eu-west-1.amazonaws.com", method: "PUT", path: "/invoices/2026-11.pdf"},
	}},
}

// The compromised service's new destination.
var demoAttack = demoCall{ip: "198.51.100.66", port: 443, host: "exfil.example.net", method: "POST", path: "/upload"}

// newDemoCommand is "meshguard demo".
func newDemoCommand(e *env) *cobra.Command {
	var o demoOptions
	c := &cobra.Command{
		Use:   "demo [flags]",
		Short: "run the guard in-process and play sidecar traffic through it",
		Args:  noArgs,
		RunE:  func(c *cobra.Command, _ []string) error { return runDemo(c.Context(), o, e.stdout, e.stderr) },
	}
	fs := c.Flags()
	fs.StringVar(&o.dataDir, "data-dir", "", "keep the demo's baselines here (default: a temporary directory, removed at the end)")
	fs.DurationVar(&o.learnFor, "learn-window", 2*time.Second, "how long the demo services learn")
	fs.BoolVarP(&o.verbose, "verbose", "v", false, "print meshguard's own log lines too")
	fs.DurationVar(&o.timeout, "message-timeout", time.Second, "how long the simulated Envoy waits for each answer (Envoy's default is 200ms; a busy machine may need more)")
	return c
}

type demoOptions struct {
	dataDir  string
	learnFor time.Duration
	verbose  bool
	timeout  time.Duration
}

func runDemo(ctx context.Context, o demoOptions, stdout, stderr io.Writer) error {
	if o.dataDir == "" {
		dir, err := os.MkdirTemp("", "meshguard-demo-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		o.dataDir = dir
	}
	cfg, err := parseServe([]string{
		"--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--xds-listen", "off", "--data-dir", o.dataDir,
		"--learn-window", o.learnFor.String(), "--learn-min-requests", "20", "--after-learning", "monitor",
		"--lameduck", "0",
	})
	if err != nil {
		return err
	}
	logOut := io.Discard
	if o.verbose {
		logOut = stderr
	}
	d := &demo{out: stdout, start: time.Now(), decisions: make(map[string]*flowmodel.Verdict), timeout: o.timeout}
	srv, err := startServer(ctx, cfg, newLogger(logOut, slog.LevelInfo, "text"), d.tap)
	if err != nil {
		return err
	}
	defer srv.shutdown(context.Background())
	conn, err := grpc.NewClient(srv.extprocAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	d.client = extprocv3.NewExternalProcessorClient(conn)
	d.adminURL = "http://" + srv.adminAddr
	// The token serve keeps in its data directory, once it has one.
	token, err := adminAuth{dataDir: cfg.dataDir}.token(noEnv)
	if err != nil {
		return err
	}
	if d.admin, err = newAdminClient(d.adminURL, token, nil); err != nil {
		return err
	}

	fmt.Fprintf(stdout, "meshguard demo: ext_proc on %s, admin on %s\n", srv.extprocAddr, d.adminURL)
	fmt.Fprintf(stdout, "Every request below is a real ext_proc gRPC stream, sent as an Istio sidecar's Envoy sends it.\n\n")
	return d.play(ctx, o.learnFor)
}

type demo struct {
	out      io.Writer
	start    time.Time
	client   extprocv3.ExternalProcessorClient
	adminURL string
	admin    *adminClient
	timeout  time.Duration

	mu        sync.Mutex
	decisions map[string]*flowmodel.Verdict // by x-request-id
	rows      []demoRow
}

type demoRow struct {
	service, dest, verdict, reasons, trace string
	status                                 int
}

// tap records the verdict of each request, keyed by x-request-id, for the table.
func (d *demo) tap(next extproc.Decider) extproc.Decider {
	return tapDecider{Decider: next, d: d}
}

type tapDecider struct {
	extproc.Decider
	d *demo
}

func (t tapDecider) Decide(f *flowmodel.Flow) flowmodel.Verdict {
	v := t.Decider.Decide(f)
	t.d.mu.Lock()
	t.d.decisions[f.Service+" "+f.Destination.String()+" "+f.Path] = &v
	t.d.mu.Unlock()
	return v
}

// Undecidable forwards to the model, so the demo fails closed exactly as serve does: in the
// service's mode, not as an unknown service.
func (t tapDecider) Undecidable(service string, rs flowmodel.Reasons) flowmodel.Verdict {
	if u, ok := t.Decider.(extproc.UndecidableDecider); ok {
		return u.Undecidable(service, rs)
	}
	v := flowmodel.Verdict{Action: flowmodel.Block, Score: 1, Reasons: rs}
	if m, known := t.Decider.Mode(service); known {
		v.Mode, v.Action = m, flowmodel.UndecidableAction(m)
	}
	return v
}

func (d *demo) play(ctx context.Context, learnFor time.Duration) error {
	section := func(s string) { fmt.Fprintf(d.out, "\n== %s\n", s) }

	section(fmt.Sprintf("1. Learning: three services make their usual calls for %s", learnFor))
	deadline := time.Now().Add(learnFor + 300*time.Millisecond)
	n := 0
	for time.Now().Before(deadline) || n < 25 {
		for _, s := range demoServices {
			for _, c := range s.calls {
				if _, err := d.call(ctx, s, c, false); err != nil {
					return err
				}
			}
		}
		n++
		if n%10 == 0 {
			fmt.Fprintf(d.out, "   ... %d requests per destination\n", n)
		}
		if err := sleep(ctx, 40*time.Millisecond); err != nil {
			return err
		}
	}
	// One more round: the service is promoted on its first request past the window.
	for _, s := range demoServices {
		if _, err := d.call(ctx, s, s.calls[0], false); err != nil {
			return err
		}
	}
	if err := d.printServices(); err != nil {
		return err
	}

	section("2. Monitor: the learned calls pass; a call to a destination never seen is an alert")
	d.header()
	for _, s := range demoServices {
		if _, err := d.call(ctx, s, s.calls[1], true); err != nil {
			return err
		}
	}
	if _, err := d.call(ctx, demoServices[0], demoAttack, true); err != nil {
		return err
	}

	section("3. The operator enforces every service (PUT /v1/services/{service}/mode)")
	for _, s := range demoServices {
		if err := d.setMode(s.ns+"/"+s.workload, admin.ModeRequest{Mode: "enforce"}); err != nil {
			return err
		}
	}

	section("4. shop/checkout is compromised: it calls an unknown IP, then bursts")
	d.header()
	if _, err := d.call(ctx, demoServices[0], demoServices[0].calls[0], true); err != nil {
		return err
	}
	for i := 0; i < 6; i++ {
		if _, err := d.call(ctx, demoServices[0], demoAttack, true); err != nil {
			return err
		}
	}
	if _, err := d.call(ctx, demoServices[1], demoServices[1].calls[1], true); err != nil {
		return err
	}

	section("5. The operator quarantines shop/checkout: even its learned calls stop; other services go on")
	if err := d.setMode("shop/checkout", admin.ModeRequest{Mode: "quarantine"}); err != nil {
		return err
	}
	d.header()
	for _, c := range demoServices[0].calls {
		if _, err := d.call(ctx, demoServices[0], c, true); err != nil {
			return err
		}
	}
	if _, err := d.call(ctx, demoServices[2], demoServices[2].calls[0], true); err != nil {
		return err
	}

	section("Summary")
	return d.summary()
}

// call sends one request as the service's sidecar would and, with show set, prints its row.
func (d *demo) call(ctx context.Context, s demoService, c demoCall, show bool) (*extprocv3.ImmediateResponse, error) {
	traceID, spanID := randomHex(16), randomHex(8)
	pod := s.workload + "-7d4b9c8f6d-x2x9z"
	req := envoysim.Request{
		Metadata: map[string]string{"traceparent": "00-" + traceID + "-" + spanID + "-01"},
		Attributes: map[string]string{
			extproc.AttrNodeID:        fmt.Sprintf("sidecar~%s~%s.%s~%s.svc.cluster.local", s.podIP, pod, s.ns, s.ns),
			extproc.AttrNodeNamespace: s.ns,
			extproc.AttrNodeWorkload:  s.workload,
			extproc.AttrDestination:   fmt.Sprintf("%s:%d", c.ip, c.port),
			extproc.AttrSourceAddress: s.podIP + ":40112",
		},
		Headers: []envoysim.Header{
			{Key: ":method", Value: c.method}, {Key: ":path", Value: c.path},
			{Key: ":authority", Value: c.host}, {Key: ":scheme", Value: "https"},
			{Key: "user-agent", Value: "demo/1.0"}, {Key: "x-request-id", Value: randomHex(8)},
		},
		ResponseHeaders:    []envoysim.Header{{Key: ":status", Value: "200"}},
		ResponseAttributes: map[string]string{extproc.AttrUpstreamAddress: fmt.Sprintf("%s:%d", c.ip, c.port)},
	}
	res, err := envoysim.Do(ctx, d.client, req, d.timeout)
	if err != nil {
		return nil, fmt.Errorf("%s/%s → %s: %w", s.ns, s.workload, c.host, err)
	}
	if !show {
		return res.Immediate, nil
	}
	dest := fmt.Sprintf("%s:%d (%s)", c.host, c.port, c.ip)
	key := fmt.Sprintf("%s/%s %s:%d %s", s.ns, s.workload, c.host, c.port, c.path)
	d.mu.Lock()
	v := d.decisions[key]
	d.mu.Unlock()
	row := demoRow{service: s.ns + "/" + s.workload, dest: dest, status: 200, trace: traceID[:12] + "…"}
	if v != nil {
		row.verdict = v.Action.String()
		row.reasons = strings.Join(v.Reasons.Strings(), ",")
	}
	if ir := res.Immediate; ir != nil {
		row.status = int(ir.GetStatus().GetCode())
		var body extproc.BlockBody
		if err := json.Unmarshal(ir.GetBody(), &body); err == nil {
			row.verdict = envoysim.HeaderValue(ir, extproc.VerdictHeader)
			row.reasons = strings.Join(body.Reasons, ",")
		}
	}
	d.mu.Lock()
	d.rows = append(d.rows, row)
	d.mu.Unlock()
	d.printRow(row)
	return res.Immediate, nil
}

const demoFormat = "   %-16s %-52s %-6s %-8s %-18s %s\n"

func (d *demo) header() {
	fmt.Fprintf(d.out, demoFormat, "SERVICE", "DESTINATION", "HTTP", "VERDICT", "REASONS", "TRACE")
}

func (d *demo) printRow(r demoRow) {
	reasons := r.reasons
	if reasons == "" {
		reasons = "-"
	}
	fmt.Fprintf(d.out, demoFormat, r.service, r.dest, fmt.Sprint(r.status), strings.ToUpper(r.verdict), reasons, r.trace)
}

func (d *demo) printServices() error {
	var list admin.ServiceList
	if err := d.adminJSON(http.MethodGet, "/v1/services", nil, &list); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(d.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "   SERVICE\tMODE\tSET BY\tREQUESTS\tDESTINATIONS")
	for _, s := range list.Services {
		var dests []string
		for _, dd := range s.Destinations {
			dests = append(dests, dd.Destination)
		}
		fmt.Fprintf(tw, "   %s\t%s\t%s\t%d\t%s\n", s.Name, s.Mode, s.ModeSetBy, s.Requests, strings.Join(dests, " "))
	}
	return tw.Flush()
}

func (d *demo) setMode(service string, req admin.ModeRequest) error {
	var rec flowmodel.ServiceRecord
	if err := d.adminJSON(http.MethodPut, "/v1/services/"+url.PathEscape(service)+"/mode", req, &rec); err != nil {
		return err
	}
	fmt.Fprintf(d.out, "   PUT /v1/services/%s/mode {\"mode\":%q} → %s\n", url.PathEscape(service), req.Mode, rec.Mode)
	return nil
}

func (d *demo) adminJSON(method, path string, body, out any) error {
	if err := d.admin.doJSON(context.Background(), method, path, body, out); err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	return nil
}

func (d *demo) summary() error {
	type count struct{ allow, alert, block int }
	by := map[string]*count{}
	d.mu.Lock()
	for _, r := range d.rows {
		c := by[r.service]
		if c == nil {
			c = &count{}
			by[r.service] = c
		}
		switch r.verdict {
		case "allow":
			c.allow++
		case "alert":
			c.alert++
		case "block":
			c.block++
		}
	}
	d.mu.Unlock()
	names := make([]string, 0, len(by))
	for n := range by {
		names = append(names, n)
	}
	slices.Sort(names)
	fmt.Fprintln(d.out, "   Decisions shown above, by service:")
	for _, n := range names {
		c := by[n]
		fmt.Fprintf(d.out, "   %-16s allow %2d  alert %2d  block %2d\n", n, c.allow, c.alert, c.block)
	}
	if err := d.printServices(); err != nil {
		return err
	}
	fmt.Fprintln(d.out, "\n   Each decision is also an OpenTelemetry span in the caller's trace (set OTEL_EXPORTER_OTLP_ENDPOINT")
	fmt.Fprintln(d.out, "   to export them), and counted at the admin port's /metrics.")
	return nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return hex.EncodeToString(b)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
