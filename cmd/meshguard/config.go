package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/meshguard/meshguard/extproc"
	"github.com/meshguard/meshguard/extproc/certs"
	"github.com/meshguard/meshguard/flowmodel"
)

// modelFlags are the flowmodel knobs shared by serve, demo, replay and learn.
type modelFlags struct {
	defaultMode       string
	learnWindow       time.Duration
	learnMinRequests  int64
	afterLearning     string
	maxDestinations   int
	maxServices       int
	alertBudget       float64
	blockReasons      string
	disable           string
	probation         int
	probationInterval time.Duration
	prefixV4          int
	prefixV6          int
}

func (m *modelFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&m.defaultMode, "default-mode", "learn", "mode of a service seen for the first time: learn, monitor, enforce or quarantine")
	fs.DurationVar(&m.learnWindow, "learn-window", flowmodel.DefaultLearnWindow, "event time a service learns before promotion (with --learn-min-requests)")
	fs.Int64Var(&m.learnMinRequests, "learn-min-requests", flowmodel.DefaultLearnMinRequests, "requests a service must make before promotion out of learn")
	fs.StringVar(&m.afterLearning, "after-learning", "monitor", "mode a service is promoted to after learning: monitor, enforce or quarantine")
	fs.IntVar(&m.maxDestinations, "max-destinations", flowmodel.DefaultMaxDestinations, "destinations remembered per service (least recently used forgotten first)")
	fs.IntVar(&m.maxServices, "max-services", flowmodel.DefaultMaxServices, "services tracked at most")
	fs.Float64Var(&m.alertBudget, "alert-budget", flowmodel.DefaultAlertBudget, "alerts per service per day the scored detectors may raise on learned traffic; sets each service's alert threshold")
	fs.StringVar(&m.blockReasons, "block-reasons", "new_destination,host_ip_mismatch", "reasons that block in enforce mode; the others alert")
	fs.StringVar(&m.disable, "disable", "", "detectors to turn off, by reason: new_shape, rare_shape, rate_spike, burst, volume_spike, host_ip_mismatch")
	fs.IntVar(&m.probation, "probation", flowmodel.DefaultProbation, "distinct --probation-intervals a new shape (or, in monitor mode, destination) must be seen in before it is learned")
	fs.DurationVar(&m.probationInterval, "probation-interval", flowmodel.DefaultProbationInterval, "the interval probation counts in")
	fs.IntVar(&m.prefixV4, "host-prefix-v4", flowmodel.DefaultPrefixBits4, "a learned host may move to IPv4 addresses within this prefix length of where it was learned")
	fs.IntVar(&m.prefixV6, "host-prefix-v6", flowmodel.DefaultPrefixBits6, "the same for IPv6")
}

// config returns the model config, or every problem with the flags.
func (m *modelFlags) config() (flowmodel.Config, error) {
	var errs []error
	c := flowmodel.Config{
		LearnWindow:       m.learnWindow,
		LearnMinRequests:  m.learnMinRequests,
		MaxDestinations:   m.maxDestinations,
		MaxServices:       m.maxServices,
		AlertBudget:       m.alertBudget,
		Probation:         m.probation,
		ProbationInterval: m.probationInterval,
		PrefixBits4:       m.prefixV4,
		PrefixBits6:       m.prefixV6,
	}
	var err error
	if c.BlockReasons, err = flowmodel.ParseReasons(m.blockReasons); err != nil {
		errs = append(errs, fmt.Errorf("--block-reasons: %w", err))
	} else if c.BlockReasons == 0 {
		errs = append(errs, errors.New("--block-reasons: name at least one reason (enforce mode must block something)"))
	}
	if c.Disabled, err = flowmodel.ParseReasons(m.disable); err != nil {
		errs = append(errs, fmt.Errorf("--disable: %w", err))
	}
	if c.DefaultMode, err = flowmodel.ParseMode(m.defaultMode); err != nil {
		errs = append(errs, fmt.Errorf("--default-mode: %w", err))
	}
	if c.AfterLearning, err = flowmodel.ParseMode(m.afterLearning); err != nil {
		errs = append(errs, fmt.Errorf("--after-learning: %w", err))
	}
	// Zero means "default" in flowmodel.Config, so explicit zeros become "none".
	if m.learnWindow == 0 {
		c.LearnWindow = -1
	}
	if m.learnMinRequests == 0 {
		c.LearnMinRequests = -1
	}
	if m.learnWindow < 0 {
		errs = append(errs, errors.New("--learn-window must not be negative"))
	}
	if m.learnMinRequests < 0 {
		errs = append(errs, errors.New("--learn-min-requests must not be negative"))
	}
	if m.maxDestinations <= 0 {
		errs = append(errs, errors.New("--max-destinations must be positive"))
	}
	if m.maxServices <= 0 {
		errs = append(errs, errors.New("--max-services must be positive"))
	}
	checked, err := c.Check()
	return checked, errors.Join(append(errs, err)...)
}

// serveConfig is everything "meshguard serve" needs, checked.
type serveConfig struct {
	listen           string
	adminListen      string
	adminAllowRemote bool
	dataDir          string
	model            flowmodel.Config
	extproc          extproc.Config
	flushInterval    time.Duration
	lameduck         time.Duration
	drainTimeout     time.Duration
	logLevel         slog.Level
	logFormat        string
	resolveHosts     bool
	dnsServers       []string
	xds              xdsFlags
	tls              tlsFlags // ext_proc listener
	adminTLS         tlsFlags
	tlsReload        time.Duration
	pprof            bool
}

// parseServe parses and checks serve's flags, reporting every problem at once.
func parseServe(args []string, stderr io.Writer) (serveConfig, error) {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		c             serveConfig
		mf            modelFlags
		onMissing     string
		identityOrder string
		logLevel      string
	)
	fs.StringVar(&c.listen, "listen", "127.0.0.1:9001", "ext_proc gRPC address: host:port or unix:///path")
	fs.StringVar(&c.adminListen, "admin-listen", "127.0.0.1:9002", "admin HTTP address (health, metrics, service API): host:port or unix:///path")
	fs.BoolVar(&c.adminAllowRemote, "admin-allow-remote", false, "allow the admin API on a non-loopback address (it has no authentication yet)")
	fs.StringVar(&c.dataDir, "data-dir", "./meshguard-data", "directory of the baseline store")
	mf.register(fs)
	c.xds.register(fs)
	fs.StringVar(&onMissing, "on-missing", extproc.OnMissingAlert, "verdict for a request whose service or destination is unknown: allow, alert or block")
	fs.IntVar(&c.extproc.DecisionLogsPerSecond, "decision-log-rate", 100, "decision log lines (alerts, blocks) per second at most; the rest are counted (-1: no cap)")
	fs.StringVar(&identityOrder, "identity-order", "metadata,node,peer-san,source-address", "identity sources, in order")
	fs.DurationVar(&c.extproc.DecisionBudget, "decision-budget", 0, "answer a request whose decision takes longer than this with --on-budget, well before Envoy's message_timeout (0: no budget; Envoy's timeout and failure_mode_allow decide)")
	fs.StringVar(&c.extproc.OnBudget, "on-budget", extproc.OnBudgetAllow, "answer when the decision budget runs out: allow (continue, recorded as an alert) or block (403)")
	fs.IntVar(&c.extproc.MaxStreams, "max-streams", 10000, "ext_proc streams served at once; more fail at once with RESOURCE_EXHAUSTED instead of queueing (0: no limit)")
	c.tls.register(fs, "", "ext_proc", "")
	c.adminTLS.register(fs, "admin-", "the admin API", "; /healthz and /readyz need none (probes), and it lets the admin API listen beyond loopback")
	fs.DurationVar(&c.tlsReload, "tls-reload-interval", certs.DefaultInterval, "how often TLS files are checked for changes")
	fs.BoolVar(&c.pprof, "pprof", false, "serve net/http/pprof under /debug/pprof/ on the admin listener")
	fs.DurationVar(&c.flushInterval, "flush-interval", time.Second, "how far the store may lag behind the model")
	fs.DurationVar(&c.lameduck, "lameduck", 2*time.Second, "on shutdown, time between reporting NOT_SERVING and refusing new streams")
	fs.DurationVar(&c.drainTimeout, "drain-timeout", 10*time.Second, "on shutdown, time in-flight streams get to finish")
	fs.BoolVar(&c.resolveHosts, "resolve-hosts", false, "resolve Host names (cached, off the request path) and flag host_ip_mismatch when a name is sent to an IP it does not resolve to")
	dnsServers := fs.String("dns-servers", "", "DNS servers for --resolve-hosts, host:port, comma-separated (default: those of /etc/resolv.conf)")
	fs.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&c.logFormat, "log-format", "text", "log format: text or json")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	var errs []error
	if fs.NArg() > 0 {
		errs = append(errs, fmt.Errorf("unexpected arguments: %q", fs.Args()))
	}
	for _, d := range strings.Split(*dnsServers, ",") {
		if d = strings.TrimSpace(d); d == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(d); err != nil {
			errs = append(errs, fmt.Errorf("--dns-servers %q: want host:port", d))
		}
		c.dnsServers = append(c.dnsServers, d)
	}
	if err := c.xds.check(); err != nil {
		errs = append(errs, err)
	}
	if len(c.dnsServers) > 0 && !c.resolveHosts {
		errs = append(errs, errors.New("--dns-servers needs --resolve-hosts"))
	}
	var err error
	if c.model, err = mf.config(); err != nil {
		errs = append(errs, err)
	}
	c.extproc.OnMissing = onMissing
	if c.extproc.IdentityOrder, err = extproc.ParseIdentityOrder(identityOrder); err != nil {
		errs = append(errs, fmt.Errorf("--identity-order: %w", err))
	}
	if c.extproc, err = c.extproc.Check(); err != nil {
		errs = append(errs, err)
	}
	if err := checkAddress("--listen", c.listen); err != nil {
		errs = append(errs, err)
	}
	if err := checkAddress("--admin-listen", c.adminListen); err != nil {
		errs = append(errs, err)
	} else if !c.adminAllowRemote && c.adminTLS.clientCA == "" && !isLocalAddress(c.adminListen) {
		errs = append(errs, fmt.Errorf("--admin-listen %s is not a loopback address; without client certificates (--admin-tls-client-ca) the admin API has no authentication, so pass --admin-allow-remote to expose it anyway", c.adminListen))
	}
	if err := c.tls.check(""); err != nil {
		errs = append(errs, err)
	}
	if err := c.adminTLS.check("admin-"); err != nil {
		errs = append(errs, err)
	}
	if c.tlsReload <= 0 {
		errs = append(errs, errors.New("--tls-reload-interval must be positive"))
	}
	if c.dataDir == "" {
		errs = append(errs, errors.New("--data-dir must not be empty"))
	}
	if c.flushInterval <= 0 {
		errs = append(errs, errors.New("--flush-interval must be positive"))
	}
	if c.lameduck < 0 || c.drainTimeout < 0 {
		errs = append(errs, errors.New("--lameduck and --drain-timeout must not be negative"))
	}
	if err := c.logLevel.UnmarshalText([]byte(logLevel)); err != nil {
		errs = append(errs, fmt.Errorf("--log-level: %w", err))
	}
	if c.logFormat != "text" && c.logFormat != "json" {
		errs = append(errs, fmt.Errorf("--log-format %q: valid formats are text, json", c.logFormat))
	}
	return c, errors.Join(errs...)
}

// checkAddress accepts host:port or unix:///path.
func checkAddress(flagName, addr string) error {
	if path, ok := strings.CutPrefix(addr, "unix://"); ok {
		if path == "" || path[0] != '/' {
			return fmt.Errorf("%s %q: a unix socket needs an absolute path, as unix:///run/meshguard.sock", flagName, addr)
		}
		return nil
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return fmt.Errorf("%s %q: want host:port or unix:///path: %w", flagName, addr, err)
	}
	return nil
}

// isLocalAddress reports whether addr listens only on loopback (or a unix socket).
func isLocalAddress(addr string) bool {
	if strings.HasPrefix(addr, "unix://") {
		return true
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

func newLogger(w io.Writer, level slog.Level, format string) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
