package flowmodel

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/meshguard/meshguard/flowmodel/burst"
	"github.com/meshguard/meshguard/flowmodel/episode"
	"github.com/meshguard/meshguard/flowmodel/param"
	"github.com/meshguard/meshguard/flowmodel/rate"
	"github.com/meshguard/meshguard/flowmodel/shape"
	"github.com/meshguard/meshguard/flowmodel/volume"
)

// Config tunes a Model. The zero value of a field means its default.
type Config struct {
	// DefaultMode is the mode of a service seen for the first time. Default: learn.
	DefaultMode Mode
	// LearnWindow and LearnMinRequests: a service in learn mode is promoted to AfterLearning
	// once it has been learning for LearnWindow of event time AND has made LearnMinRequests
	// requests. Defaults: 24h and 100. A negative value means zero.
	LearnWindow      time.Duration
	LearnMinRequests int64
	// AfterLearning is the mode a service is promoted to. Default: monitor.
	AfterLearning Mode
	// MaxDestinations caps the destinations remembered per service; the least recently used
	// one is forgotten first. Default: 4096.
	MaxDestinations int
	// MaxServices caps the services tracked. A flow of a service beyond the cap teaches
	// nothing and gets AtMaxServices. An operator's quarantine is never refused by the cap: a
	// quarantined service is tracked beyond it. Default: 100,000.
	MaxServices int
	// AtMaxServices is the action a flow of a service beyond MaxServices gets, with reason
	// new_destination: Block or Alert (option max-services-action). Default: Block.
	AtMaxServices Action
	// MaxShapesPerService caps the request shapes a service keeps over all its destinations
	// (each destination's table keeps Shapes.MaxShapes at most): a shape past the cap scores
	// as new and is not kept. With MaxDestinations this bounds what one service may cost.
	// Default: 4096.
	MaxShapesPerService int
	// ShapeLimits cap what one request contributes to its shape (path segments, query keys,
	// header names, bytes); a request over them is cut, summarised and flagged
	// oversized_shape. Zero fields take shape's defaults.
	ShapeLimits shape.Limits

	// BlockReasons are the reasons that block in enforce mode; the others alert. Default:
	// new_destination and host_ip_mismatch.
	BlockReasons Reasons
	// Disabled turns detectors off by the reasons they give (new_shape and rare_shape,
	// rate_spike, burst, volume_spike, host_ip_mismatch). new_destination cannot be disabled.
	Disabled Reasons

	// AlertBudget is the number of alerts per service per day that the detectors with a
	// score (shapes, rates, bursts, volume) may raise on the traffic a service sent while
	// learning: each service's alert threshold is set from the scores of its learning
	// period so that learned traffic would have raised about this many. Default: 1.
	AlertBudget float64

	// Probation is the number of distinct ProbationIntervals in which a new destination (in
	// monitor mode) or a new request shape must be seen before it enters the baseline on
	// its own; until then it alerts. Repeating a request within one interval does not
	// count. In enforce mode new destinations enter only by approval. Defaults: 3 and 24h, so
	// that a beacon has to run for days, alerting all along, before it could become normal.
	Probation         int
	ProbationInterval time.Duration

	// PrefixBits4 and PrefixBits6: the prefix length of the networks a learned host is
	// recorded at, as evidence for review and policy export. A prefix never vouches for a
	// new IP on its own (a Host header does not pick the prefix): a learned host is known at
	// a new IP only when it is among the host's fresh DNS answers. Defaults: 24, 48.
	PrefixBits4, PrefixBits6 int

	// Resolver, when set, gives the model a host name's fresh DNS answers. They are the only
	// evidence that a host name vouches for an address: a learned host reached at an IP it
	// was not learned at is known only when the IP is among the host's fresh answers (else
	// new_destination; host_ip_mismatch when the answers say the host lives elsewhere), a
	// flow with a host but no IP (an egress gateway) goes to the host's fresh answers and has
	// no destination without them (unknown_destination), and a quarantine allow entry names
	// a host at the IPs of its fresh answers. Without a Resolver only learned IPs are known
	// and host-only flows have no destination. It must not block.
	Resolver Resolver

	// Now is the server clock, used to keep clients from moving the model's clock: an event
	// time more than MaxClockSkew ahead of it, or at or before the Unix epoch, is replaced
	// by it (and counted, see Model.ClampedTimes); probation and the end of learning never
	// run ahead of it. Replays and tests pass their own clock. Default: time.Now.
	Now func() time.Time
	// MaxClockSkew is how far ahead of Now an event time may be. Default: 5 minutes.
	MaxClockSkew time.Duration
	// EventClock trusts event times to pace probation and the end of learning, as a replay
	// of recorded events or an evaluation needs (where days of events pass in seconds).
	// Off (the default, what serve needs), a service's clock for probation and promotion
	// advances no faster than Now does, so that a client dating flows in the past (a day
	// ago, then an hour ago, then now) cannot compress probation intervals either.
	EventClock bool
	// TrustHostNames takes a host without IP, that the Resolver has no fresh answer for, as
	// a destination by its name, as a replay of recorded events needs (an egress gateway
	// resolved the name when the event was recorded; DNS answers now are another matter).
	// Never in serve: there the workload names the host, and only DNS says where it goes.
	TrustHostNames bool

	// Detector settings; zero fields take each package's defaults.
	Shapes    shape.TableConfig
	ShapeSeed uint64
	Rate      rate.Config
	Volume    volume.Config
	Burst     burst.Config
	// BurstTick is the tick of the burst detector's sketches. Default: 1 minute.
	BurstTick time.Duration
	// Params tunes the parameter value models (parameter_value); Params.Limits.MaxBodyBytes
	// is the max-body-bytes option. Episodes groups alerts into episodes; Episodes.QuietGap
	// is the alert-episode-gap option. See params.go and episodes.go.
	Params   param.Config
	Episodes episode.Config
	// Seasonal is the hour-of-day detector of each service's total request rate: rises
	// alert as rate_spike, drops as rate_drop (see seasonal.go). Zero fields take
	// rate.SeasonalConfig's defaults.
	Seasonal rate.SeasonalConfig
}

// Resolver answers, without waiting, which addresses a host name resolves to.
// flowmodel/resolve provides one. Implementations must be safe for concurrent use.
type Resolver interface {
	// Lookup returns the host's addresses and true when a fresh answer is cached; false
	// when none is (a lookup may then start in the background).
	Lookup(host string) (addrs []netip.Addr, ok bool)
}

// Defaults used for zero Config fields.
const (
	DefaultLearnWindow       = 24 * time.Hour
	DefaultLearnMinRequests  = 100
	DefaultMaxDestinations   = 4096
	DefaultMaxServices       = 100_000
	DefaultAlertBudget       = 1
	DefaultProbation         = 3
	DefaultProbationInterval = 24 * time.Hour
	DefaultRateInterval      = 5 * time.Minute
	DefaultPrefixBits4       = 24
	DefaultPrefixBits6       = 48
	DefaultBurstTick         = time.Minute
	DefaultMaxClockSkew      = 5 * time.Minute
	DefaultMaxShapesPerSvc   = 4096
)

// DefaultBlockReasons block in enforce mode unless Config.BlockReasons says otherwise.
var DefaultBlockReasons = Reasons(0).With(ReasonNewDestination).With(ReasonHostIPMismatch)

// Check applies defaults and reports every problem in c.
func (c Config) Check() (Config, error) {
	var errs []error
	if c.DefaultMode == 0 {
		c.DefaultMode = ModeLearn
	}
	if c.AfterLearning == 0 {
		c.AfterLearning = ModeMonitor
	}
	switch {
	case c.LearnWindow == 0:
		c.LearnWindow = DefaultLearnWindow
	case c.LearnWindow < 0:
		c.LearnWindow = 0
	}
	switch {
	case c.LearnMinRequests == 0:
		c.LearnMinRequests = DefaultLearnMinRequests
	case c.LearnMinRequests < 0:
		c.LearnMinRequests = 0
	}
	if c.MaxDestinations == 0 {
		c.MaxDestinations = DefaultMaxDestinations
	}
	if c.MaxServices == 0 {
		c.MaxServices = DefaultMaxServices
	}
	if c.AtMaxServices == Allow {
		c.AtMaxServices = Block
	}
	if c.MaxShapesPerService == 0 {
		c.MaxShapesPerService = DefaultMaxShapesPerSvc
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.MaxClockSkew == 0 {
		c.MaxClockSkew = DefaultMaxClockSkew
	}
	if c.BlockReasons == 0 {
		c.BlockReasons = DefaultBlockReasons
	}
	if c.AlertBudget == 0 {
		c.AlertBudget = DefaultAlertBudget
	}
	if c.Probation == 0 {
		c.Probation = DefaultProbation
	}
	if c.ProbationInterval == 0 {
		c.ProbationInterval = DefaultProbationInterval
	}
	if c.PrefixBits4 == 0 {
		c.PrefixBits4 = DefaultPrefixBits4
	}
	if c.PrefixBits6 == 0 {
		c.PrefixBits6 = DefaultPrefixBits6
	}
	if c.BurstTick == 0 {
		c.BurstTick = DefaultBurstTick
	}
	if !c.DefaultMode.Valid() {
		errs = append(errs, fmt.Errorf("default mode: invalid mode %d", c.DefaultMode))
	}
	if !c.AfterLearning.Valid() || c.AfterLearning == ModeLearn {
		errs = append(errs, fmt.Errorf("after-learning mode must be monitor, enforce or quarantine, not %s", c.AfterLearning))
	}
	if c.MaxDestinations < 0 {
		errs = append(errs, fmt.Errorf("max destinations per service must be positive, got %d", c.MaxDestinations))
	}
	if c.MaxServices < 0 {
		errs = append(errs, fmt.Errorf("max services must be positive, got %d", c.MaxServices))
	}
	if c.AtMaxServices != Block && c.AtMaxServices != Alert {
		errs = append(errs, fmt.Errorf("max-services action must be block or alert, got %s", c.AtMaxServices))
	}
	if c.MaxShapesPerService < 0 {
		errs = append(errs, fmt.Errorf("max shapes per service must be positive, got %d", c.MaxShapesPerService))
	}
	if c.MaxClockSkew < 0 {
		errs = append(errs, fmt.Errorf("max clock skew must not be negative, got %s", c.MaxClockSkew))
	}
	if c.Disabled.Has(ReasonNewDestination) {
		errs = append(errs, errors.New("the new_destination check cannot be disabled"))
	}
	if !(c.AlertBudget > 0) {
		errs = append(errs, fmt.Errorf("alert budget must be positive, got %g", c.AlertBudget))
	}
	if c.Probation < 1 {
		errs = append(errs, fmt.Errorf("probation must be at least 1 interval, got %d", c.Probation))
	}
	if c.ProbationInterval < time.Second {
		errs = append(errs, fmt.Errorf("probation interval must be at least 1s, got %s", c.ProbationInterval))
	}
	if c.PrefixBits4 < 8 || c.PrefixBits4 > 32 || c.PrefixBits6 < 16 || c.PrefixBits6 > 128 {
		errs = append(errs, fmt.Errorf("prefix lengths %d/%d out of range (IPv4 8..32, IPv6 16..128)", c.PrefixBits4, c.PrefixBits6))
	}
	if c.BurstTick < time.Second {
		errs = append(errs, fmt.Errorf("burst tick must be at least 1s, got %s", c.BurstTick))
	}
	var err error
	if c.ShapeLimits, err = c.ShapeLimits.Check(); err != nil {
		errs = append(errs, err)
	}
	if c.Shapes, err = c.Shapes.Check(); err != nil {
		errs = append(errs, err)
	}
	if c.Rate.Interval == 0 {
		// The model counts each edge's and service's requests per DefaultRateInterval: a
		// minute of real traffic is too noisy a unit (on NAB's series, replayed through the
		// model, one-minute intervals raised half again as many false episodes).
		c.Rate.Interval = DefaultRateInterval
	}
	if c.Rate, err = c.Rate.Check(); err != nil {
		errs = append(errs, err)
	}
	if c.Seasonal, err = c.Seasonal.Check(); err != nil {
		errs = append(errs, err)
	}
	if c.Volume, err = c.Volume.Check(); err != nil {
		errs = append(errs, err)
	}
	if c.Burst, err = c.Burst.Check(); err != nil {
		errs = append(errs, err)
	}
	errs = c.checkParamsEpisodes(errs)
	return c, errors.Join(errs...)
}

// ParseAtMaxServices parses the max-services-action option: "block" or "alert".
func ParseAtMaxServices(s string) (Action, error) {
	switch strings.TrimSpace(s) {
	case "block":
		return Block, nil
	case "alert":
		return Alert, nil
	}
	return 0, fmt.Errorf("max-services action %q: want block or alert", s)
}

// ParseReasons parses a comma-separated list of reason codes.
func ParseReasons(s string) (Reasons, error) {
	var rs Reasons
	var errs []error
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		r, err := ParseReason(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		rs = rs.With(r)
	}
	return rs, errors.Join(errs...)
}
