package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/meshguard/meshguard/controlplane/admin"
	"github.com/meshguard/meshguard/controlplane/policy"
	"github.com/meshguard/meshguard/flowmodel"
	"github.com/meshguard/meshguard/flowmodel/store"
)

const policyUsage = `Usage: meshguard policy export --format istio|cilium|networkpolicy [flags]

Writes the learned baselines as reviewable policies (multi-document YAML) on stdout, with
comments carrying the evidence for each entry. Baselines are read from the store in
--data-dir (read-only), or from a running "meshguard serve" through --admin: a running
serve holds the store's lock.

Services still learning are skipped unless --include-learning or --service names them;
quarantined services export their allow list only.

Flags:
`

// Defaults of "policy export".
const (
	policyLockTimeout  = time.Second
	policyAdminTimeout = 30 * time.Second
	// maxServicesBody bounds the GET /v1/services body read from --admin.
	maxServicesBody = 256 << 20
)

// policyConfig is what "policy export" was asked to do.
type policyConfig struct {
	dataDir     string
	adminURL    string
	lockTimeout time.Duration
	opts        policy.Options
}

func runPolicy(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "export" {
		fmt.Fprint(stderr, policyUsage)
		printPolicyFlags(stderr)
		if len(args) > 0 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help" || args[0] == "help") {
			return flag.ErrHelp
		}
		return errUsage
	}
	cfg, err := parsePolicy(args[1:], stderr)
	if err != nil {
		return err
	}
	var services []flowmodel.ServiceRecord
	var from string
	if cfg.adminURL != "" {
		services, err = servicesFromAdmin(ctx, cfg.adminURL)
		from = cfg.adminURL
	} else {
		services, err = servicesFromStore(cfg.dataDir, cfg.lockTimeout)
		from = cfg.dataDir
	}
	if err != nil {
		return err
	}
	out := bufio.NewWriterSize(stdout, 64<<10)
	if err := policy.Export(out, services, cfg.opts); err != nil {
		return err
	}
	if err := out.Flush(); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	fmt.Fprintf(stderr, "policy export: %s policies from %d service(s) in %s\n", cfg.opts.Format, len(services), from)
	return nil
}

// policyFlags registers the flags of "policy export" on fs.
func policyFlags(fs *flag.FlagSet, cfg *policyConfig, format, dns, gateway *string, peers *[]string) {
	fs.StringVar(format, "format", "", "output format: istio, cilium or networkpolicy (required)")
	fs.StringVar(&cfg.opts.Service, "service", "", "export only this service (namespace/workload), whatever its mode")
	fs.StringVar(&cfg.dataDir, "data-dir", "./meshguard-data", "read baselines from the store in this directory (read-only)")
	fs.StringVar(&cfg.adminURL, "admin", "", "read baselines from a running meshguard's admin API instead: http://host:port or unix:///path")
	fs.DurationVar(&cfg.lockTimeout, "lock-timeout", policyLockTimeout, "how long to wait for the store's lock")
	fs.BoolVar(&cfg.opts.IncludeLearning, "include-learning", false, "also export services still learning (marked incomplete)")
	fs.StringVar(&cfg.opts.WorkloadLabel, "workload-label", policy.DefaultWorkloadLabel, "pod label whose value is the workload part of a service name")
	fs.StringVar(&cfg.opts.ClusterDomain, "cluster-domain", policy.DefaultClusterDomain, "the cluster's DNS domain")
	fs.StringVar(dns, "dns", policy.DefaultDNS().String(), "cluster DNS pods: namespace/key=value[,key=value]")
	fs.StringVar(gateway, "egress-gateway", policy.DefaultEgressGateway().String(), "egress gateway pods: namespace/key=value[,key=value]")
	fs.StringVar(&cfg.opts.EgressGatewayService, "egress-gateway-service", policy.DefaultEgressGatewayService, "egress gateway Service name (in the gateway's namespace)")
	fs.BoolVar(&cfg.opts.DirectEgress, "direct-egress", false, "workloads reach external hosts directly, not through an egress gateway")
	fs.StringVar(&cfg.opts.TrustDomain, "trust-domain", policy.DefaultTrustDomain, "Istio trust domain of the principals in AuthorizationPolicies")
	fs.Func("mesh-peer", `pods every workload must reach, as namespace/key=value[,key=value]:port[,port]; repeatable; "none" for none (default `+policy.DefaultMeshPeers()[0].String()+`)`,
		func(s string) error { *peers = append(*peers, s); return nil })
}

func printPolicyFlags(w io.Writer) {
	fs := flag.NewFlagSet("policy export", flag.ContinueOnError)
	var (
		cfg                  policyConfig
		format, dns, gateway string
		peers                []string
	)
	policyFlags(fs, &cfg, &format, &dns, &gateway, &peers)
	fs.SetOutput(w)
	fs.PrintDefaults()
}

// parsePolicy parses the flags of "policy export" and reports every problem at once.
func parsePolicy(args []string, stderr io.Writer) (policyConfig, error) {
	fs := newFlagSet("policy export", policyUsage, stderr)
	var (
		cfg                  policyConfig
		format, dns, gateway string
		peers                []string
	)
	policyFlags(fs, &cfg, &format, &dns, &gateway, &peers)
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })

	var errs []error
	if fs.NArg() > 0 {
		errs = append(errs, fmt.Errorf("policy export takes no arguments, got %q", fs.Args()))
	}
	if format == "" {
		errs = append(errs, errors.New("--format is required: istio, cilium or networkpolicy"))
	} else if f, err := policy.ParseFormat(format); err != nil {
		errs = append(errs, fmt.Errorf("--format: %w", err))
	} else {
		cfg.opts.Format = f
	}
	if set["admin"] && set["data-dir"] {
		errs = append(errs, errors.New("--admin and --data-dir are exclusive: read from a running meshguard or from its store, not both"))
	}
	if set["admin"] && set["lock-timeout"] {
		errs = append(errs, errors.New("--lock-timeout applies to --data-dir only"))
	}
	if set["admin"] {
		if err := checkAdminURL(cfg.adminURL); err != nil {
			errs = append(errs, err)
		}
	} else if cfg.dataDir == "" {
		errs = append(errs, errors.New("--data-dir must not be empty"))
	}
	var err error
	if cfg.opts.DNS, err = policy.ParseSelector(dns); err != nil {
		errs = append(errs, fmt.Errorf("--dns: %w", err))
	}
	if cfg.opts.EgressGateway, err = policy.ParseSelector(gateway); err != nil {
		errs = append(errs, fmt.Errorf("--egress-gateway: %w", err))
	}
	for _, p := range peers {
		if p == "none" {
			cfg.opts.MeshPeers = []policy.Peer{} // non-nil: no peers, not the default
			continue
		}
		peer, err := policy.ParsePeer(p)
		if err != nil {
			errs = append(errs, fmt.Errorf("--mesh-peer: %w", err))
			continue
		}
		cfg.opts.MeshPeers = append(cfg.opts.MeshPeers, peer)
	}
	if slices.Contains(peers, "none") && slices.ContainsFunc(peers, func(p string) bool { return p != "none" }) {
		errs = append(errs, errors.New("--mesh-peer none cannot be combined with peers"))
	}
	if err := errors.Join(errs...); err != nil {
		return cfg, err
	}
	if cfg.opts, err = cfg.opts.Check(); err != nil {
		return cfg, err
	}
	return cfg, nil
}

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

// servicesFromStore reads every service from the store in dir, read-only.
func servicesFromStore(dir string, lockTimeout time.Duration) ([]flowmodel.ServiceRecord, error) {
	path := filepath.Join(dir, store.FileName)
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("no baseline store at %s: is --data-dir the directory \"meshguard serve\" uses?", path)
	}
	st, err := store.Open(dir, store.Options{ReadOnly: true, LockTimeout: lockTimeout})
	if err != nil {
		if errors.Is(err, store.ErrLocked) {
			return nil, fmt.Errorf("%w\na running \"meshguard serve\" holds the store's lock: read the baselines from it instead, with --admin http://127.0.0.1:9002 (its --admin-listen address)", err)
		}
		return nil, err
	}
	defer st.Close()
	var services []flowmodel.ServiceRecord
	if err := st.Load(func(r flowmodel.ServiceRecord) error {
		services = append(services, r)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return services, nil
}

// servicesFromAdmin reads GET /v1/services from a running meshguard.
func servicesFromAdmin(ctx context.Context, base string) ([]flowmodel.ServiceRecord, error) {
	u, _ := url.Parse(base) // checked by parsePolicy
	client := &http.Client{Timeout: policyAdminTimeout}
	endpoint := strings.TrimSuffix(base, "/") + "/v1/services"
	if u.Scheme == "unix" {
		sock := u.Path
		client.Transport = &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}}
		endpoint = "http://meshguard/v1/services"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, endpoint, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("read services from %s: %w", base, err)
	}
	defer resp.Body.Close()
	body := io.LimitReader(resp.Body, maxServicesBody)
	if resp.StatusCode != http.StatusOK {
		var e admin.ErrorBody
		b, _ := io.ReadAll(io.LimitReader(body, 4<<10))
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(b))
		}
		return nil, fmt.Errorf("read services from %s: %s: %s", base, resp.Status, e.Error)
	}
	var list admin.ServiceList
	if err := json.NewDecoder(body).Decode(&list); err != nil {
		return nil, fmt.Errorf("read services from %s: %w", base, err)
	}
	return list.Services, nil
}
