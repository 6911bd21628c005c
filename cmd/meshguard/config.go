package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"time"

	"github.com/meshguard/meshguard/controlplane"
	"github.com/meshguard/meshguard/controlplane/admin"
	"github.com/meshguard/meshguard/controlplane/xds"
	"github.com/meshguard/meshguard/extproc"
	"github.com/meshguard/meshguard/extproc/certs"
	"github.com/meshguard/meshguard/flowmodel"
	"github.com/meshguard/meshguard/flowmodel/episode"
	"github.com/meshguard/meshguard/flowmodel/rate"
	"github.com/spf13/pflag"
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
	episodeGap        time.Duration

	// The rate detectors: the rate CUSUM of each service and edge, and the seasonal
	// (hour-of-day) detector of each service's total.
	rateInterval         time.Duration
	rateProbation        time.Duration
	seasonalWarmupDays   int
	seasonalThreshold    float64
	seasonalMinRate      float64
	seasonalOffset       time.Duration
	seasonalSameWeekends bool
}

// options is the table of the model's options.
func (m *modelFlags) options() []option {
	return []option{
		{"default-mode", &m.defaultMode, "learn", "mode of a service seen for the first time: learn, monitor, enforce or quarantine"},
		{"learn-window", &m.learnWindow, flowmodel.DefaultLearnWindow, "event time a service learns before promotion (with --learn-min-requests)"},
		{"learn-min-requests", &m.learnMinRequests, int64(flowmodel.DefaultLearnMinRequests), "requests a service must make before promotion out of learn"},
		{"after-learning", &m.afterLearning, "monitor", "mode a service is promoted to after learning: monitor, enforce or quarantine"},
		{"max-destinations", &m.maxDestinations, flowmodel.DefaultMaxDestinations, "destinations remembered per service (least recently used forgotten first)"},
		{"max-services", &m.maxServices, flowmodel.DefaultMaxServices, "services tracked at most"},
		{"alert-budget", &m.alertBudget, float64(flowmodel.DefaultAlertBudget), "alerts per service per day the scored detectors may raise on learned traffic; sets each service's alert threshold"},
		{"block-reasons", &m.blockReasons, "new_destination,host_ip_mismatch", "reasons that block in enforce mode; the others alert"},
		{"disable", &m.disable, "", "detectors to turn off, by reason: new_shape, rare_shape, parameter_value, rate_spike, rate_drop, burst, volume_spike, host_ip_mismatch"},
		{"probation", &m.probation, flowmodel.DefaultProbation, "distinct --probation-intervals a new shape (or, in monitor mode, destination) must be seen in before it is learned"},
		{"probation-interval", &m.probationInterval, flowmodel.DefaultProbationInterval, "the interval probation counts in"},
		{"host-prefix-v4", &m.prefixV4, flowmodel.DefaultPrefixBits4, "prefix length of the IPv4 networks a learned host is recorded at (evidence for review and policy export); it never vouches for a new IP: only the host's fresh DNS answers do"},
		{"host-prefix-v6", &m.prefixV6, flowmodel.DefaultPrefixBits6, "the same for IPv6"},
		{"alert-episode-gap", &m.episodeGap, episode.DefaultQuietGap, "quiet time after an alert episode's last alert after which it closes; the alert budget counts episodes"},
		{"rate-interval", &m.rateInterval, flowmodel.DefaultRateInterval, "the interval request rates are counted in, per service and per destination (rate_spike), 1s to 1h"},
		{"rate-probation", &m.rateProbation, rate.DefaultProbation, "how long a shifted request rate (a service's, or to one destination) alerts before it becomes the baseline, unless rejected (meshguard reject --rate); at least 1h"},
		{"seasonal-warmup-days", &m.seasonalWarmupDays, rate.DefaultWarmupDays, "days of history an hour of the day needs before the seasonal detector judges a service's rate in it (rate_spike, rate_drop)"},
		{"seasonal-threshold", &m.seasonalThreshold, float64(rate.DefaultSeasonThreshold), "evidence, in spreads of the hour's usual rate, at which the seasonal detector alarms; higher is fewer alerts and later ones"},
		{"seasonal-min-rate", &m.seasonalMinRate, float64(rate.DefaultMinRate), "requests an hour below which the seasonal detector ignores drops and damps changes (so a sparse service does not alert on silence)"},
		{"seasonal-utc-offset", &m.seasonalOffset, time.Duration(0), "offset from UTC of the local time whose midnight starts the seasonal detector's day (and weekend), e.g. -5h or 5h30m"},
		{"seasonal-same-weekends", &m.seasonalSameWeekends, false, "judge Saturdays and Sundays by the same hour-of-day profile as weekdays (default: a profile of their own)"},
	}
}

func (m *modelFlags) register(fs *pflag.FlagSet) { registerOptions(fs, m.options()) }

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
		Episodes:          episode.Config{QuietGap: m.episodeGap},
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
	} else if c.AfterLearning == flowmodel.ModeLearn {
		// Said here, naming the option (and so its source), rather than by Config.Check.
		errs = append(errs, errors.New("--after-learning mode must be monitor, enforce or quarantine, not learn"))
		c.AfterLearning = 0
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
	errs = append(errs, m.rateConfig(&c)...)
	checked, err := c.Check()
	return checked, errors.Join(append(errs, err)...)
}

// maxUTCOffset bounds --seasonal-utc-offset: the time zones of the world lie within it.
const maxUTCOffset = 14 * time.Hour

// rateConfig sets the rate detectors' options in c and returns the problems with them, each
// naming its option. A bad value is left out of c (flowmodel then takes its default), so
// that Config.Check does not report it a second time.
func (m *modelFlags) rateConfig(c *flowmodel.Config) []error {
	var errs []error
	finite := func(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }
	if iv := m.rateInterval; iv < time.Second || iv > time.Hour || iv%time.Millisecond != 0 {
		errs = append(errs, fmt.Errorf("--rate-interval must be between 1s and 1h (whole milliseconds), got %s", iv))
	} else {
		c.Rate.Interval = iv
	}
	// The seasonal detector counts by the hour: a shorter probation would end before the
	// hour that raised the alarm does.
	if p := m.rateProbation; p < time.Hour {
		errs = append(errs, fmt.Errorf("--rate-probation must be at least 1h, got %s", p))
	} else {
		c.Rate.Probation, c.Seasonal.Probation = p, p
	}
	if d := m.seasonalWarmupDays; d < 1 || d > maxWarmupDays {
		errs = append(errs, fmt.Errorf("--seasonal-warmup-days must be between 1 and %d, got %d", maxWarmupDays, d))
	} else {
		c.Seasonal.WarmupDays = d
	}
	if v := m.seasonalThreshold; !(v > 0) || !finite(v) {
		errs = append(errs, fmt.Errorf("--seasonal-threshold must be a positive number, got %g", v))
	} else {
		c.Seasonal.Threshold = v
	}
	if v := m.seasonalMinRate; !(v > 0) || !finite(v) {
		errs = append(errs, fmt.Errorf("--seasonal-min-rate must be a positive number, got %g", v))
	} else {
		c.Seasonal.MinRate = v
	}
	if o := m.seasonalOffset; o < -maxUTCOffset || o > maxUTCOffset || o%time.Minute != 0 {
		errs = append(errs, fmt.Errorf("--seasonal-utc-offset must be whole minutes between -14h and 14h, got %s", o))
	} else {
		c.Seasonal.Offset = o
	}
	c.Seasonal.SameWeekends = m.seasonalSameWeekends
	return errs
}

// maxWarmupDays bounds --seasonal-warmup-days: a month of history is more than any hour of
// the day needs, and a larger value would keep the detector quiet for good.
const maxWarmupDays = 30

// serveConfig is everything "meshguard serve" needs, checked.
type serveConfig struct {
	listen           string
	adminListen      string
	adminAllowRemote bool
	// insecureListen allows listeners beyond loopback without TLS.
	insecureListen bool
	// healthListen is the probe-only HTTP listener (/healthz, /readyz, and /metrics with
	// healthMetrics); "" is none.
	healthListen  string
	healthMetrics bool
	// adminTokenFile holds the admin API's bearer token (admin role): --admin-token-file,
	// else <data-dir>/admin-token, created at first start (admin.LoadOrCreateToken).
	adminTokenFile string
	// adminHosts are the Host names the admin API answers to besides IP literals and
	// localhost (DNS-rebinding defence); adminCertRoles and adminCertDefaultRole give verified
	// client certificates their role.
	adminHosts           []string
	adminCertRoles       map[string]admin.Role
	adminCertDefaultRole admin.Role
	// backupKeep is how many scheduled backups are kept.
	backupKeep int
	dataDir    string
	model      flowmodel.Config
	// maxServicesAction is what a new service gets once model.MaxServices are tracked:
	// "block" or "alert" (flowmodel implements it; serve hands it over).
	maxServicesAction string
	extproc           extproc.Config
	// firstMessageTimeout, maxStreamsPerConnection, maxMessageBytes and maxBodyBytes are
	// the ext_proc stream limits of options.md, handed to extproc when it has them.
	firstMessageTimeout     time.Duration
	maxStreamsPerConnection int
	maxMessageBytes         int
	maxBodyBytes            int
	// backupInterval is how often a store backup is written to <data-dir>/backups (0: never).
	backupInterval time.Duration
	flushInterval  time.Duration
	lameduck       time.Duration
	drainTimeout   time.Duration
	logLevel       slog.Level
	logFormat      string
	resolveHosts   bool
	dnsServers     []string
	xds            xdsFlags
	tls            tlsFlags // ext_proc listener
	adminTLS       tlsFlags
	tlsReload      time.Duration
	pprof          bool
}

// serveFlags are serve's options as given, before they are checked into a serveConfig.
type serveFlags struct {
	c             serveConfig
	model         modelFlags
	onMissing     string
	identityOrder string
	logLevel      string
	dnsServers    string

	adminHosts           string
	adminCertRoles       string
	adminCertDefaultRole string
}

// options is the table of every option of serve, in the order --help, "config print" and
// the README show them.
func (f *serveFlags) options() []option {
	c := &f.c
	opts := []option{
		{"listen", &c.listen, "127.0.0.1:9001", "ext_proc gRPC address: host:port or unix:///path"},
		{"admin-listen", &c.adminListen, "127.0.0.1:9002", "admin HTTP address (health, metrics, service API): host:port or unix:///path"},
		{"health-listen", &c.healthListen, "", `extra HTTP address serving only /healthz and /readyz, for probes when the admin API is on a unix socket ("": none)`},
		{"health-metrics", &c.healthMetrics, false, "serve /metrics on --health-listen too, for Prometheus; off where the workload reaches that listener (decision counts by reason would tell it which requests alerted)"},
		{"insecure-listen", &c.insecureListen, false, "allow --listen, --admin-listen and --xds-listen beyond loopback without TLS (refused otherwise)"},
		{"admin-allow-remote", &c.adminAllowRemote, false, "allow the admin API beyond loopback guarded by its bearer token alone, without client certificates (--admin-tls-client-ca)"},
		{"admin-token-file", &c.adminTokenFile, "", "bearer token of the admin API, created (random, mode 0600) at first start when absent (default <data-dir>/admin-token)"},
		{"admin-hosts", &f.adminHosts, "", "Host names the admin API answers to, comma-separated, besides IP literals and localhost (a defence against DNS rebinding)"},
		{"admin-cert-roles", &f.adminCertRoles, "", "roles of verified admin client certificates, IDENTITY=ROLE comma-separated; IDENTITY is a URI SAN or the common name, ROLE viewer, operator or admin"},
		{"admin-cert-default-role", &f.adminCertDefaultRole, "none", "role of a verified admin client certificate --admin-cert-roles does not name: none (refused), viewer, operator or admin"},
		{"data-dir", &c.dataDir, "./meshguard-data", "directory of the baseline store"},
	}
	opts = append(opts, f.model.options()...)
	opts = append(opts, []option{
		{"max-services-action", &c.maxServicesAction, "block", "what a new service gets once --max-services are tracked: block or alert"},
		{"xds-listen", &c.xds.listen, controlplane.DefaultListen, `xDS (ADS) and access-log gRPC address: host:port, unix:///path, or "off"`},
		{"xds-ext-proc-address", &c.xds.cfg.ExtProcAddress, xds.DefaultExtProcAddress, "meshguard's ext_proc address as the Envoys reach it, in the listeners meshguard serves"},
		{"xds-access-log-address", &c.xds.cfg.AccessLogAddress, xds.DefaultAccessLogAddress, "meshguard's access-log service address as the Envoys reach it"},
		{"xds-envoy-listener", &c.xds.cfg.ListenerAddress, xds.DefaultListenerAddress, "where the served outbound listener binds in Envoy"},
		{"xds-message-timeout", &c.xds.cfg.MessageTimeout, xds.DefaultMessageTimeout, "ext_proc message_timeout in the served listeners"},
		{"xds-failure-mode-allow", &c.xds.cfg.FailureModeAllow, false, "let requests through when Envoy cannot reach meshguard (fail open)"},
		{"xds-deny-all-when-empty", &c.xds.cfg.DenyAllWhenEmpty, false, "in monitor, shadow-deny at L4 every connection of a service with no learned destination IP (enforce and quarantine always deny all when empty)"},
		{"xds-rbac-on-http", &c.xds.cfg.RBACOnHTTP, false, "put the L4 RBAC backstop in front of HTTP too"},
		{"xds-tls-cert", &c.xds.tls.cert, "", "serve xDS and access logs over TLS with this certificate (PEM, reloaded when it changes)"},
		{"xds-tls-key", &c.xds.tls.key, "", "private key of --xds-tls-cert (PEM)"},
		{"xds-tls-client-ca", &c.xds.tls.clientCA, "", "require client certificates issued by these CAs (PEM): mutual TLS for xDS and access logs"},
		{"xds-trust-domain", &c.xds.trustDomain, xds.DefaultTrustDomain, "SPIFFE trust domain whose spiffe://<td>/ns/<ns>/sa/<sa> client certificates name xDS and access-log nodes"},
		{"on-missing", &f.onMissing, extproc.OnMissingBlock, "verdict for a request no identity source names a service for: block (fail closed), alert or allow"},
		{"decision-log-rate", &c.extproc.DecisionLogsPerSecond, 100, "decision log lines (alerts, blocks) per second, shared fairly between services; each service's first line in a second is always logged; the rest are counted (-1: no cap)"},
		{"identity-order", &f.identityOrder, "metadata,node,peer-san,source-address", "identity sources, in order"},
		{"decision-budget", &c.extproc.DecisionBudget, time.Duration(0), "answer a request whose decision takes longer than this with --on-budget, well before Envoy's message_timeout (0: no budget; Envoy's timeout and failure_mode_allow decide)"},
		{"on-budget", &c.extproc.OnBudget, extproc.OnBudgetBlock, "answer when the decision budget runs out: block (403: fail closed, the default) or allow (continue, recorded as an alert)"},
		{"max-streams", &c.extproc.MaxStreams, 10000, "ext_proc streams served at once; more fail at once with RESOURCE_EXHAUSTED instead of queueing (0: no limit)"},
		{"max-streams-per-connection", &c.maxStreamsPerConnection, 1000, "concurrent ext_proc streams on one connection"},
		{"first-message-timeout", &c.firstMessageTimeout, 2 * time.Second, "an ext_proc stream silent this long after opening is closed"},
		{"max-message-bytes", &c.maxMessageBytes, 1 << 20, "largest ext_proc message accepted; a larger one is answered with a 403 (at least 65536; raise it when bodies are buffered)"},
		{"max-body-bytes", &c.maxBodyBytes, 8192, "request body bytes judged for parameter values when Envoy buffers the body (request_body_mode BUFFERED); such a request is decided at its body message (0: bodies are not inspected)"},
		{"tls-cert", &c.tls.cert, "", "serve ext_proc over TLS with this certificate (PEM, reloaded when it changes)"},
		{"tls-key", &c.tls.key, "", "private key of --tls-cert (PEM)"},
		{"tls-client-ca", &c.tls.clientCA, "", "require client certificates issued by these CAs (PEM): mutual TLS for ext_proc"},
		{"admin-tls-cert", &c.adminTLS.cert, "", "serve the admin API over TLS with this certificate (PEM, reloaded when it changes)"},
		{"admin-tls-key", &c.adminTLS.key, "", "private key of --admin-tls-cert (PEM)"},
		{"admin-tls-client-ca", &c.adminTLS.clientCA, "", "require client certificates issued by these CAs (PEM): mutual TLS for the admin API; /healthz and /readyz need none (probes)"},
		{"tls-reload-interval", &c.tlsReload, certs.DefaultInterval, "how often TLS files are checked for changes"},
		{"pprof", &c.pprof, false, "serve net/http/pprof under /debug/pprof/ on the admin listener"},
		{"flush-interval", &c.flushInterval, time.Second, "how far the store may lag behind the model"},
		{"backup-interval", &c.backupInterval, time.Hour, "how often a backup of the store is written to <data-dir>/backups (0: never)"},
		{"backup-keep", &c.backupKeep, 24, "how many scheduled backups are kept, the newest"},
		{"lameduck", &c.lameduck, 2 * time.Second, "on shutdown, time between reporting NOT_SERVING and refusing new streams"},
		{"drain-timeout", &c.drainTimeout, 10 * time.Second, "on shutdown, time in-flight streams get to finish"},
		{"resolve-hosts", &c.resolveHosts, false, "resolve Host names (cached, off the request path) and flag host_ip_mismatch when a name is sent to an IP it does not resolve to"},
		{"dns-servers", &f.dnsServers, "", "DNS servers for --resolve-hosts, host:port, comma-separated (default: those of /etc/resolv.conf)"},
		{"log-level", &f.logLevel, "info", "log level: debug, info, warn or error"},
		{"log-format", &c.logFormat, "text", "log format: text or json"},
	}...)
	return opts
}

// newServeFlagSet returns a flag set with every option of serve, bound to f.
func newServeFlagSet(f *serveFlags) *pflag.FlagSet {
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	fs.SortFlags = false
	registerOptions(fs, f.options())
	return fs
}

// parseServe parses serve's flags alone (no file, no environment) and checks them; the
// demo and the tests configure the in-process server with it.
func parseServe(args []string) (serveConfig, error) {
	var f serveFlags
	fs := newServeFlagSet(&f)
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		return serveConfig{}, err
	}
	if fs.NArg() > 0 {
		return serveConfig{}, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	return f.validate()
}

// validate checks the options and returns serve's configuration, reporting every problem at
// once.
func (f *serveFlags) validate() (serveConfig, error) {
	c := f.c
	var errs []error
	for _, d := range strings.Split(f.dnsServers, ",") {
		if d = strings.TrimSpace(d); d == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(d); err != nil {
			errs = append(errs, fmt.Errorf("--dns-servers %q: want host:port", d))
		}
		c.dnsServers = append(c.dnsServers, d)
	}
	if c.tls.clientCA != "" {
		// ext_proc asks for client certificates: the Envoys this control plane configures
		// must present theirs (the SDS workload certificate) to reach it.
		c.xds.cfg.UpstreamTLS.ExtProc = true
	}
	if err := c.xds.check(c.insecureListen); err != nil {
		errs = append(errs, err)
	}
	if len(c.dnsServers) > 0 && !c.resolveHosts {
		errs = append(errs, errors.New("--dns-servers needs --resolve-hosts"))
	}
	var err error
	if c.model, err = f.model.config(); err != nil {
		errs = append(errs, err)
	}
	if c.model.AtMaxServices, err = flowmodel.ParseAtMaxServices(c.maxServicesAction); err != nil {
		errs = append(errs, fmt.Errorf("--max-services-action: %w", err))
	}
	c.extproc.OnMissing = f.onMissing
	if c.extproc.IdentityOrder, err = extproc.ParseIdentityOrder(f.identityOrder); err != nil {
		errs = append(errs, fmt.Errorf("--identity-order: %w", err))
	}
	c.extproc.FirstMessageTimeout = c.firstMessageTimeout
	c.extproc.MaxStreamsPerConnection = c.maxStreamsPerConnection
	c.extproc.MaxMessageBytes = c.maxMessageBytes
	// Bodies Envoy buffers are judged for parameter values up to max-body-bytes; 0 turns
	// that off, and every request is decided at its headers.
	c.extproc.MaxBodyBytes = -1
	if c.maxBodyBytes > 0 {
		c.extproc.MaxBodyBytes = c.maxBodyBytes
		c.model.Params.Limits.MaxBodyBytes = c.maxBodyBytes
	}
	if c.extproc, err = c.extproc.Check(); err != nil {
		errs = append(errs, err)
	}
	if c.firstMessageTimeout <= 0 {
		errs = append(errs, errors.New("--first-message-timeout must be positive"))
	}
	if c.maxStreamsPerConnection <= 0 {
		errs = append(errs, errors.New("--max-streams-per-connection must be positive"))
	}
	if c.maxMessageBytes <= 0 {
		errs = append(errs, errors.New("--max-message-bytes must be positive"))
	}
	if c.maxBodyBytes < 0 {
		errs = append(errs, errors.New("--max-body-bytes must not be negative"))
	}
	if c.backupInterval < 0 {
		errs = append(errs, errors.New("--backup-interval must not be negative"))
	}
	if c.backupKeep <= 0 {
		errs = append(errs, errors.New("--backup-keep must be positive"))
	}
	c.adminHosts = splitList(f.adminHosts)
	c.adminCertRoles = map[string]admin.Role{}
	for _, e := range splitList(f.adminCertRoles) {
		id, role, ok := strings.Cut(e, "=")
		r, err := admin.ParseRole(role)
		if !ok || strings.TrimSpace(id) == "" || err != nil || r == admin.RoleNone {
			errs = append(errs, fmt.Errorf("--admin-cert-roles %q: want IDENTITY=ROLE with ROLE viewer, operator or admin", e))
			continue
		}
		c.adminCertRoles[strings.TrimSpace(id)] = r
	}
	if c.adminCertDefaultRole, err = admin.ParseRole(f.adminCertDefaultRole); err != nil {
		errs = append(errs, fmt.Errorf("--admin-cert-default-role: %w", err))
	}
	errs = append(errs, c.checkListeners()...)
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
	if c.adminTokenFile == "" && c.dataDir != "" {
		c.adminTokenFile = filepath.Join(c.dataDir, "admin-token")
	}
	if c.flushInterval <= 0 {
		errs = append(errs, errors.New("--flush-interval must be positive"))
	}
	if c.lameduck < 0 || c.drainTimeout < 0 {
		errs = append(errs, errors.New("--lameduck and --drain-timeout must not be negative"))
	}
	if err := c.logLevel.UnmarshalText([]byte(f.logLevel)); err != nil {
		errs = append(errs, fmt.Errorf("--log-level: %w", err))
	}
	if c.logFormat != "text" && c.logFormat != "json" {
		errs = append(errs, fmt.Errorf("--log-format %q: valid formats are text, json", c.logFormat))
	}
	return c, errors.Join(errs...)
}

// checkListeners checks the listen addresses: each is host:port or unix:///path, and one
// beyond loopback needs TLS (or --insecure-listen). The admin API beyond loopback also needs
// client certificates, or --admin-allow-remote. The probe listener serves nothing that needs
// protecting and may listen anywhere.
func (c *serveConfig) checkListeners() []error {
	var errs []error
	remote := func(flag, addr string, tlsOn bool, tlsFlag string) {
		if err := checkAddress(flag, addr); err != nil {
			errs = append(errs, err)
			return
		}
		if !tlsOn && !c.insecureListen && !isLocalAddress(addr) {
			errs = append(errs, fmt.Errorf("%s %s is not a loopback address: serve it with TLS (%s) or pass --insecure-listen to expose it in plaintext", flag, addr, tlsFlag))
		}
	}
	remote("--listen", c.listen, c.tls.enabled(), "--tls-cert")
	remote("--admin-listen", c.adminListen, c.adminTLS.enabled(), "--admin-tls-cert")
	if checkAddress("--admin-listen", c.adminListen) == nil && !c.adminAllowRemote && c.adminTLS.clientCA == "" && !isLocalAddress(c.adminListen) {
		errs = append(errs, fmt.Errorf("--admin-listen %s is not a loopback address; without client certificates (--admin-tls-client-ca) only the bearer token guards the admin API there, so pass --admin-allow-remote to expose it so", c.adminListen))
	}
	if c.xds.enabled() {
		remote("--xds-listen", c.xds.listen, c.xds.tls.enabled(), "--xds-tls-cert")
	}
	if c.healthListen != "" {
		if err := checkAddress("--health-listen", c.healthListen); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// splitList splits a comma-separated option into its trimmed, non-empty items.
func splitList(s string) []string {
	var out []string
	for _, e := range strings.Split(s, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
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
