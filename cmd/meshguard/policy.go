package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/meshguard/meshguard/controlplane/admin"
	"github.com/meshguard/meshguard/controlplane/policy"
	"github.com/meshguard/meshguard/flowmodel"
	"github.com/meshguard/meshguard/flowmodel/store"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

const policyLong = `Writes the learned baselines as reviewable policies (multi-document YAML) on stdout, with
comments carrying the evidence for each entry. Baselines are read from the store in
--data-dir (read-only), or from a running "meshguard serve" through --admin: a running
serve holds the store's lock.

Services still learning are skipped unless --include-learning or --service names them;
quarantined services export their allow list only.`

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
	auth        adminAuth
	opts        policy.Options
}

// policyFlags are the flags of "policy export" as given.
type policyFlags struct {
	cfg                  policyConfig
	format, dns, gateway string
	peers                []string
}

// newPolicyCommand is "meshguard policy export".
func newPolicyCommand(e *env) *cobra.Command {
	group := newGroupCommand("policy", "write learned baselines as reviewable policies (YAML)", "export")
	var f policyFlags
	export := &cobra.Command{
		Use:   "export --format istio|cilium|networkpolicy [flags]",
		Short: "write learned baselines as Istio, Cilium or Kubernetes network policies",
		Long:  policyLong,
		// Extra arguments are reported with every other problem, by parsePolicy.
		Args: cobra.ArbitraryArgs,
		RunE: func(c *cobra.Command, args []string) error {
			cfg, err := f.check(c.Flags(), args)
			if err != nil {
				return err
			}
			return runPolicy(c.Context(), cfg, e)
		},
	}
	f.register(export.Flags())
	group.AddCommand(export)
	return group
}

func runPolicy(ctx context.Context, cfg policyConfig, e *env) error {
	var (
		services []flowmodel.ServiceRecord
		from     string
		err      error
	)
	if cfg.adminURL != "" {
		services, err = servicesFromAdmin(ctx, cfg.adminURL, cfg.auth, e.lookupEnv)
		from = cfg.adminURL
	} else {
		services, err = servicesFromStore(cfg.dataDir, cfg.lockTimeout)
		from = cfg.dataDir
	}
	if err != nil {
		return err
	}
	out := bufio.NewWriterSize(e.stdout, 64<<10)
	if err := policy.Export(out, services, cfg.opts); err != nil {
		return err
	}
	if err := out.Flush(); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	fmt.Fprintf(e.stderr, "policy export: %s policies from %d service(s) in %s\n", cfg.opts.Format, len(services), from)
	return nil
}

// register adds the flags of "policy export" to fs.
func (f *policyFlags) register(fs *pflag.FlagSet) {
	cfg := &f.cfg
	fs.SortFlags = false
	fs.StringVar(&f.format, "format", "", "output format: istio, cilium or networkpolicy (required)")
	fs.StringVar(&cfg.opts.Service, "service", "", "export only this service (namespace/workload), whatever its mode")
	fs.StringVar(&cfg.dataDir, "data-dir", "./meshguard-data", "read baselines from the store in this directory (read-only)")
	fs.StringVar(&cfg.adminURL, "admin", "", "read baselines from a running meshguard's admin API instead: http://host:port or unix:///path")
	cfg.auth.register(fs)
	fs.DurationVar(&cfg.lockTimeout, "lock-timeout", policyLockTimeout, "how long to wait for the store's lock")
	fs.BoolVar(&cfg.opts.IncludeLearning, "include-learning", false, "also export services still learning (marked incomplete)")
	fs.StringVar(&cfg.opts.WorkloadLabel, "workload-label", policy.DefaultWorkloadLabel, "pod label whose value is the workload part of a service name")
	fs.StringVar(&cfg.opts.ClusterDomain, "cluster-domain", policy.DefaultClusterDomain, "the cluster's DNS domain")
	fs.StringVar(&f.dns, "dns", policy.DefaultDNS().String(), "cluster DNS pods: namespace/key=value[,key=value]")
	fs.StringVar(&f.gateway, "egress-gateway", policy.DefaultEgressGateway().String(), "egress gateway pods: namespace/key=value[,key=value]")
	fs.StringVar(&cfg.opts.EgressGatewayService, "egress-gateway-service", policy.DefaultEgressGatewayService, "egress gateway Service name (in the gateway's namespace)")
	fs.BoolVar(&cfg.opts.DirectEgress, "direct-egress", false, "workloads reach external hosts directly, not through an egress gateway")
	fs.StringVar(&cfg.opts.TrustDomain, "trust-domain", policy.DefaultTrustDomain, "Istio trust domain of the principals in AuthorizationPolicies")
	fs.StringArrayVar(&f.peers, "mesh-peer", nil, `pods every workload must reach, as namespace/key=value[,key=value]:port[,port]; repeatable; "none" for none (default `+policy.DefaultMeshPeers()[0].String()+`)`)
}

// check checks the flags of "policy export" and reports every problem at once.
func (f *policyFlags) check(fs *pflag.FlagSet, args []string) (policyConfig, error) {
	cfg := f.cfg
	set := fs.Changed
	var errs []error
	if len(args) > 0 {
		errs = append(errs, fmt.Errorf("policy export takes no arguments, got %q", args))
	}
	if f.format == "" {
		errs = append(errs, errors.New("--format is required: istio, cilium or networkpolicy"))
	} else if pf, err := policy.ParseFormat(f.format); err != nil {
		errs = append(errs, fmt.Errorf("--format: %w", err))
	} else {
		cfg.opts.Format = pf
	}
	if set("admin") && set("data-dir") {
		errs = append(errs, errors.New("--admin and --data-dir are exclusive: read from a running meshguard or from its store, not both"))
	}
	if set("admin") && set("lock-timeout") {
		errs = append(errs, errors.New("--lock-timeout applies to --data-dir only"))
	}
	if set("admin") {
		if err := checkAdminURL(cfg.adminURL); err != nil {
			errs = append(errs, err)
		}
		// The token of a serve on this machine with the default --data-dir.
		cfg.auth.dataDir = cfg.dataDir
	} else if cfg.dataDir == "" {
		errs = append(errs, errors.New("--data-dir must not be empty"))
	}
	var err error
	if cfg.opts.DNS, err = policy.ParseSelector(f.dns); err != nil {
		errs = append(errs, fmt.Errorf("--dns: %w", err))
	}
	if cfg.opts.EgressGateway, err = policy.ParseSelector(f.gateway); err != nil {
		errs = append(errs, fmt.Errorf("--egress-gateway: %w", err))
	}
	for _, p := range f.peers {
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
	if slices.Contains(f.peers, "none") && slices.ContainsFunc(f.peers, func(p string) bool { return p != "none" }) {
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
func servicesFromAdmin(ctx context.Context, base string, auth adminAuth, lookupEnv func(string) (string, bool)) ([]flowmodel.ServiceRecord, error) {
	token, err := auth.token(lookupEnv)
	if err != nil {
		return nil, err
	}
	client, err := newAdminClient(base, token, &http.Client{Timeout: policyAdminTimeout})
	if err != nil {
		return nil, err
	}
	var list admin.ServiceList
	if err := client.doJSON(ctx, http.MethodGet, "/v1/services", nil, &list); err != nil {
		return nil, fmt.Errorf("read services from %s: %w", base, err)
	}
	return list.Services, nil
}
