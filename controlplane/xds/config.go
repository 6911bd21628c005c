package xds

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	"github.com/meshguard/meshguard/extproc/contract"
)

// Defaults used for zero Config fields.
const (
	DefaultExtProcAddress         = "127.0.0.1:9001"
	DefaultAccessLogAddress       = "127.0.0.1:18000"
	DefaultListenerAddress        = "0.0.0.0:15001"
	DefaultMessageTimeout         = 200 * time.Millisecond
	DefaultUpstreamConnectTimeout = 5 * time.Second
	DefaultTrustDomain            = "cluster.local"
	DefaultPollInterval           = 2 * time.Second
	DefaultMaxNodeKeys            = 10_000
)

// DefaultRequestAttributes are the ext_proc request attributes meshguard reads (DESIGN.md).
var DefaultRequestAttributes = contract.RequestAttributes()

// DefaultResponseAttributes are the ext_proc response attributes meshguard reads.
var DefaultResponseAttributes = contract.ResponseAttributes()

// DefaultServerFirstPorts are ports of protocols in which the server speaks first (FTP, SMTP,
// POP3, IMAP, submission, MySQL). See Config.ServerFirstPorts.
var DefaultServerFirstPorts = []uint32{21, 25, 110, 143, 587, 3306}

// ProcessingMode is the ext_proc processing mode, each field an Envoy enum name
// (headers and trailers: SEND, SKIP, DEFAULT; bodies: NONE, STREAMED, BUFFERED,
// BUFFERED_PARTIAL, FULL_DUPLEX_STREAMED, GRPC). Empty fields take the defaults DESIGN.md
// recommends: request and response headers SEND, bodies NONE, trailers SKIP.
type ProcessingMode struct {
	RequestHeader   string `json:"request_header,omitempty" yaml:"request_header,omitempty"`
	ResponseHeader  string `json:"response_header,omitempty" yaml:"response_header,omitempty"`
	RequestBody     string `json:"request_body,omitempty" yaml:"request_body,omitempty"`
	ResponseBody    string `json:"response_body,omitempty" yaml:"response_body,omitempty"`
	RequestTrailer  string `json:"request_trailer,omitempty" yaml:"request_trailer,omitempty"`
	ResponseTrailer string `json:"response_trailer,omitempty" yaml:"response_trailer,omitempty"`
}

// Config says what the xDS server tells Envoy. The zero value of a field means its default;
// Check applies the defaults and reports every problem.
type Config struct {
	// ExtProcAddress is meshguard's ext_proc server as Envoy reaches it: "ip:port",
	// "hostname:port" (resolved by Envoy, STRICT_DNS) or "unix:///absolute/path".
	// Default 127.0.0.1:9001.
	ExtProcAddress string `json:"ext_proc_address,omitempty" yaml:"ext_proc_address,omitempty"`
	// AccessLogAddress is meshguard's AccessLogService (served on the xDS gRPC server) as
	// Envoy reaches it, in the same forms. Default 127.0.0.1:18000.
	AccessLogAddress string `json:"access_log_address,omitempty" yaml:"access_log_address,omitempty"`
	// DisableAccessLog leaves the gRPC access loggers out of the listeners.
	DisableAccessLog bool `json:"disable_access_log,omitempty" yaml:"disable_access_log,omitempty"`
	// ListenerAddress is where Envoy's outbound listener binds, "ip:port". Traffic reaches it
	// redirected (iptables REDIRECT), and the original_dst listener filter restores the
	// destination the app dialled. Default 0.0.0.0:15001 (Istio's outbound port).
	ListenerAddress string `json:"listener_address,omitempty" yaml:"listener_address,omitempty"`

	// MessageTimeout is ext_proc's message_timeout. Default 200ms.
	MessageTimeout time.Duration `json:"message_timeout,omitempty" yaml:"message_timeout,omitempty"`
	// FailureModeAllow lets requests through when meshguard cannot be reached. Default false.
	FailureModeAllow bool `json:"failure_mode_allow,omitempty" yaml:"failure_mode_allow,omitempty"`
	// ProcessingMode is ext_proc's processing mode. RequestHeader must be SEND (the default):
	// Check refuses anything else, since a request whose headers are not sent is never decided.
	ProcessingMode ProcessingMode `json:"processing_mode,omitzero" yaml:"processing_mode,omitempty"`
	// RequestAttributes and ResponseAttributes are sent to ext_proc. Defaults:
	// DefaultRequestAttributes and DefaultResponseAttributes.
	RequestAttributes  []string `json:"request_attributes,omitempty" yaml:"request_attributes,omitempty"`
	ResponseAttributes []string `json:"response_attributes,omitempty" yaml:"response_attributes,omitempty"`

	// UpstreamConnectTimeout is the connect timeout of the original-destination cluster.
	// Default 5s.
	UpstreamConnectTimeout time.Duration `json:"upstream_connect_timeout,omitempty" yaml:"upstream_connect_timeout,omitempty"`

	// DenyAllWhenEmpty makes a monitor service with no learned destination IP a shadow
	// deny-all at L4 (Envoy counts every connection as rbac.shadow_denied, as enforce would
	// refuse it); by default such a service has no shadow rules. It does not change enforce
	// or quarantine: there an empty allow list always denies everything at L4 (fail closed),
	// nor learn, which never has L4 rules.
	DenyAllWhenEmpty bool `json:"deny_all_when_empty,omitempty" yaml:"deny_all_when_empty,omitempty"`
	// RBACOnHTTP puts the RBAC backstop in front of the HTTP connection manager too, so that
	// plain HTTP to an unknown IP is refused at L4 even if ext_proc fails open. Off by default:
	// ext_proc already decides every HTTP request and explains it in a span.
	RBACOnHTTP bool `json:"rbac_on_http,omitempty" yaml:"rbac_on_http,omitempty"`
	// SkipSNICheck drops the TLS rule that a connection's SNI, when present, must be a learned
	// host name. By default it is checked, so that a known shared IP (a CDN) cannot carry a
	// connection to an unknown site.
	SkipSNICheck bool `json:"skip_sni_check,omitempty" yaml:"skip_sni_check,omitempty"`
	// ServerFirstPorts are ports whose protocols have the server speak first. To refuse an
	// unknown destination before Envoy connects to it, the plain-TCP path waits for the
	// client's first bytes (tcp_proxy upstream_connect_mode ON_DOWNSTREAM_DATA), which would
	// stall a server-first protocol; so on these ports the allowed IPs get their own filter
	// chain that connects at once, and other IPs stay refused. nil means
	// DefaultServerFirstPorts; an empty non-nil slice means none.
	ServerFirstPorts []uint32 `json:"server_first_ports,omitempty" yaml:"server_first_ports,omitempty"`

	// TrustDomain is the SPIFFE trust domain used to name a gateway source "NS/SA" by its
	// certificate (spiffe://TD/ns/NS/sa/SA). Default cluster.local; "-" disables.
	TrustDomain string `json:"trust_domain,omitempty" yaml:"trust_domain,omitempty"`
	// GatewaySources adds, per service, the sources an egress gateway recognises it by: IPs,
	// CIDRs, or SPIFFE IDs. A service named by an IP, or "NS/SA" with a trust domain, is
	// recognised by that without configuration.
	GatewaySources map[string][]string `json:"gateway_sources,omitempty" yaml:"gateway_sources,omitempty"`

	// UpstreamTLS makes Envoy reach meshguard's ext_proc and access-log servers over mutual
	// TLS. Off by default.
	UpstreamTLS UpstreamTLS `json:"upstream_tls,omitzero" yaml:"upstream_tls,omitempty"`

	// PollInterval is how often the controller reads the baselines. Default 2s.
	PollInterval time.Duration `json:"poll_interval,omitempty" yaml:"poll_interval,omitempty"`
	// MaxNodeKeys caps the snapshots held (one per sidecar service, one for gateways).
	// Default 10,000.
	MaxNodeKeys int `json:"max_node_keys,omitempty" yaml:"max_node_keys,omitempty"`
	// FirstVersion is the first snapshot version. 0 means the wall clock in nanoseconds at
	// start, so that versions keep rising across restarts.
	FirstVersion uint64 `json:"-" yaml:"-"`

	// Parsed forms, set by Check.
	extProc    endpoint
	accessLog  endpoint
	listener   netip.AddrPort
	mode       *extprocv3.ProcessingMode
	principals map[string][]principalSpec
}

// endpoint is a parsed address Envoy connects to.
type endpoint struct {
	host string // IP or DNS name; "" for a unix socket
	port uint32
	dns  bool
	pipe string // unix socket path
}

type principalSpec struct {
	prefix netip.Prefix
	spiffe string
}

// Check applies defaults and reports every problem in c.
func (c Config) Check() (Config, error) {
	var errs []error
	def := func(s *string, d string) {
		if *s == "" {
			*s = d
		}
	}
	def(&c.ExtProcAddress, DefaultExtProcAddress)
	def(&c.AccessLogAddress, DefaultAccessLogAddress)
	def(&c.ListenerAddress, DefaultListenerAddress)
	def(&c.TrustDomain, DefaultTrustDomain)
	if c.TrustDomain == "-" {
		c.TrustDomain = ""
	}
	if c.MessageTimeout == 0 {
		c.MessageTimeout = DefaultMessageTimeout
	}
	if c.UpstreamConnectTimeout == 0 {
		c.UpstreamConnectTimeout = DefaultUpstreamConnectTimeout
	}
	if c.PollInterval == 0 {
		c.PollInterval = DefaultPollInterval
	}
	if c.MaxNodeKeys == 0 {
		c.MaxNodeKeys = DefaultMaxNodeKeys
	}
	if c.RequestAttributes == nil {
		c.RequestAttributes = slices.Clone(DefaultRequestAttributes)
	}
	if c.ResponseAttributes == nil {
		c.ResponseAttributes = slices.Clone(DefaultResponseAttributes)
	}
	if c.ServerFirstPorts == nil {
		c.ServerFirstPorts = slices.Clone(DefaultServerFirstPorts)
	}

	var err error
	if c.extProc, err = parseEndpoint(c.ExtProcAddress); err != nil {
		errs = append(errs, fmt.Errorf("ext_proc address: %w", err))
	}
	if c.accessLog, err = parseEndpoint(c.AccessLogAddress); err != nil {
		errs = append(errs, fmt.Errorf("access log address: %w", err))
	}
	if c.listener, err = netip.ParseAddrPort(c.ListenerAddress); err != nil {
		errs = append(errs, fmt.Errorf("listener address %q: want ip:port", c.ListenerAddress))
	} else if c.listener.Port() == 0 {
		errs = append(errs, fmt.Errorf("listener address %q: port 0", c.ListenerAddress))
	}
	if c.MessageTimeout < 0 {
		errs = append(errs, fmt.Errorf("message timeout must be positive, got %s", c.MessageTimeout))
	}
	if c.UpstreamConnectTimeout < 0 {
		errs = append(errs, fmt.Errorf("upstream connect timeout must be positive, got %s", c.UpstreamConnectTimeout))
	}
	if c.PollInterval < 0 {
		errs = append(errs, fmt.Errorf("poll interval must be positive, got %s", c.PollInterval))
	}
	if c.MaxNodeKeys < 0 {
		errs = append(errs, fmt.Errorf("max node keys must be positive, got %d", c.MaxNodeKeys))
	}
	for _, p := range c.ServerFirstPorts {
		if p == 0 || p > 65535 {
			errs = append(errs, fmt.Errorf("server-first port %d out of range", p))
		}
	}
	for _, a := range slices.Concat(c.RequestAttributes, c.ResponseAttributes) {
		if strings.TrimSpace(a) == "" {
			errs = append(errs, errors.New("empty ext_proc attribute"))
		}
	}
	if c.TrustDomain != "" && strings.ContainsAny(c.TrustDomain, "/: ") {
		errs = append(errs, fmt.Errorf("trust domain %q: must be a bare domain", c.TrustDomain))
	}
	if c.UpstreamTLS, err = c.UpstreamTLS.check(); err != nil {
		errs = append(errs, err)
	}
	var modeErr error
	c.ProcessingMode, c.mode, modeErr = c.ProcessingMode.parse()
	if modeErr != nil {
		errs = append(errs, modeErr)
	}
	if rh := c.ProcessingMode.RequestHeader; rh != "SEND" {
		// SKIP would let every request through undecided, and DEFAULT leaves the choice to
		// whatever Envoy or a mode override makes of it: meshguard decides on the request
		// headers, so they must always be sent.
		errs = append(errs, fmt.Errorf("processing mode request_header %q: must be SEND (meshguard decides every request on its headers)", rh))
	}
	c.principals = make(map[string][]principalSpec, len(c.GatewaySources))
	for svc, srcs := range c.GatewaySources {
		if svc == "" {
			errs = append(errs, errors.New("gateway sources: empty service name"))
			continue
		}
		for _, s := range srcs {
			p, err := parsePrincipal(s)
			if err != nil {
				errs = append(errs, fmt.Errorf("gateway sources of %q: %w", svc, err))
				continue
			}
			c.principals[svc] = append(c.principals[svc], p)
		}
	}
	return c, errors.Join(errs...)
}

// parseEndpoint parses "ip:port", "host:port" or "unix:///path".
func parseEndpoint(s string) (endpoint, error) {
	if path, ok := strings.CutPrefix(s, "unix://"); ok {
		if !filepath.IsAbs(path) {
			return endpoint{}, fmt.Errorf("%q: unix socket path must be absolute (unix:///path)", s)
		}
		return endpoint{pipe: path}, nil
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		if ap.Port() == 0 {
			return endpoint{}, fmt.Errorf("%q: port 0", s)
		}
		return endpoint{host: ap.Addr().Unmap().String(), port: uint32(ap.Port())}, nil
	}
	i := strings.LastIndexByte(s, ':')
	if i <= 0 {
		return endpoint{}, fmt.Errorf("%q: want host:port or unix:///path", s)
	}
	host, portStr := s[:i], s[i+1:]
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || port == 0 {
		return endpoint{}, fmt.Errorf("%q: bad port", s)
	}
	if strings.ContainsAny(host, "/[] ") {
		return endpoint{}, fmt.Errorf("%q: bad host", s)
	}
	return endpoint{host: host, port: uint32(port), dns: true}, nil
}

func parsePrincipal(s string) (principalSpec, error) {
	if strings.HasPrefix(s, "spiffe://") {
		if len(s) == len("spiffe://") || strings.ContainsAny(s, " ") {
			return principalSpec{}, fmt.Errorf("bad SPIFFE ID %q", s)
		}
		return principalSpec{spiffe: s}, nil
	}
	if p, err := netip.ParsePrefix(s); err == nil {
		return principalSpec{prefix: p.Masked()}, nil
	}
	if a, err := netip.ParseAddr(s); err == nil {
		a = a.Unmap()
		return principalSpec{prefix: netip.PrefixFrom(a, a.BitLen())}, nil
	}
	return principalSpec{}, fmt.Errorf("source %q: want an IP, a CIDR or a spiffe:// ID", s)
}

func (m ProcessingMode) parse() (ProcessingMode, *extprocv3.ProcessingMode, error) {
	var errs []error
	header := func(name string, s *string, def string) extprocv3.ProcessingMode_HeaderSendMode {
		if *s == "" {
			*s = def
		}
		*s = strings.ToUpper(*s)
		v, ok := extprocv3.ProcessingMode_HeaderSendMode_value[*s]
		if !ok {
			errs = append(errs, fmt.Errorf("processing mode %s: unknown value %q (want SEND, SKIP or DEFAULT)", name, *s))
		}
		return extprocv3.ProcessingMode_HeaderSendMode(v)
	}
	body := func(name string, s *string, def string) extprocv3.ProcessingMode_BodySendMode {
		if *s == "" {
			*s = def
		}
		*s = strings.ToUpper(*s)
		v, ok := extprocv3.ProcessingMode_BodySendMode_value[*s]
		if !ok {
			errs = append(errs, fmt.Errorf("processing mode %s: unknown value %q", name, *s))
		}
		return extprocv3.ProcessingMode_BodySendMode(v)
	}
	rec := contract.RecommendedProcessingMode()
	pm := &extprocv3.ProcessingMode{
		RequestHeaderMode:   header("request_header", &m.RequestHeader, rec.RequestHeader),
		ResponseHeaderMode:  header("response_header", &m.ResponseHeader, rec.ResponseHeader),
		RequestBodyMode:     body("request_body", &m.RequestBody, rec.RequestBody),
		ResponseBodyMode:    body("response_body", &m.ResponseBody, rec.ResponseBody),
		RequestTrailerMode:  header("request_trailer", &m.RequestTrailer, rec.RequestTrailer),
		ResponseTrailerMode: header("response_trailer", &m.ResponseTrailer, rec.ResponseTrailer),
	}
	return m, pm, errors.Join(errs...)
}
