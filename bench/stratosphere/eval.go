package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/meshguard/meshguard/bench/evaluate"
	"github.com/meshguard/meshguard/flowmodel"
)

// The monitored hosts: the benign Windows host of 008-zeek-mixed (CTU-Normal-40) and the
// Kovter-infected host of 009-zeek-malicious (CTU-Malware-Capture-Botnet-219-2).
const (
	benignHost = "147.32.81.167"
	kovterHost = "192.168.1.113"
)

// evalConfig is what one evaluation runs.
type evalConfig struct {
	// Benign and Infected are the monitored hosts (services). Flows that other hosts
	// originate (scans of the benign host from the Internet) are not egress of a monitored
	// host and are left out.
	Benign, Infected string
	// Learn are the learn windows to evaluate; every host learns on the first window of its
	// capture.
	Learn []time.Duration
}

// baseline says what the infected host is scored against.
type baseline int

const (
	// ownBaseline: the infected host is a service of its own and learns on its own capture's
	// first part, like the benign host.
	ownBaseline baseline = iota
	// replicaBaseline: the infected host is another replica of the benign host's service, so
	// it shares that baseline; its capture is shifted to start when the benign host's
	// learning ends.
	replicaBaseline
)

func (b baseline) String() string {
	if b == replicaBaseline {
		return "replica of benign host"
	}
	return "own baseline"
}

// evalResult is one row: the report for one learn window and baseline, and per-host counts.
type evalResult struct {
	Learn    time.Duration
	Baseline baseline
	Report   *evaluate.Report
	Hosts    []hostCounts
	// Trivial is the first-seen baseline's report on the same events (firstSeen).
	Trivial *evaluate.Report
}

type hostCounts struct {
	Host                         string
	Flows, Learning              int
	Benign, FalseAlerts          int // scored benign flows and those alerted
	Malicious, MaliciousAlerted  int // scored malicious flows and those alerted
	MaliciousInLearn, Background int
	// FalseAlertDests counts the distinct destinations (IP and port) of the false alerts;
	// FalseAlertsKnownName the false alerts whose host name (Host or SNI) was learned, at
	// another IP.
	FalseAlertDests, FalseAlertsKnownName int
}

// evaluateEvents runs the model once per learn window and baseline on the monitored hosts'
// events. starts gives each host's capture start. It returns the results and how many
// events it left out.
func evaluateEvents(ctx context.Context, events []evaluate.Event, starts map[string]time.Time, cfg evalConfig) ([]evalResult, int, error) {
	hosts := []string{cfg.Benign, cfg.Infected}
	var kept []evaluate.Event
	for _, e := range events {
		if slices.Contains(hosts, e.Flow.Service) {
			kept = append(kept, e)
		}
	}
	excluded := len(events) - len(kept)
	for _, h := range hosts {
		if _, ok := starts[h]; !ok {
			return nil, excluded, fmt.Errorf("host %s has no flows", h)
		}
	}
	var out []evalResult
	for _, b := range []baseline{ownBaseline, replicaBaseline} {
		for _, w := range cfg.Learn {
			if err := ctx.Err(); err != nil {
				return nil, excluded, err
			}
			evs, origin, split := arrange(kept, b, starts, w, cfg)
			model, err := newModel()
			if err != nil {
				return nil, excluded, err
			}
			m, err := newSplitModel(model, split)
			if err != nil {
				return nil, excluded, err
			}
			verdicts := evaluate.Run(evs, m)
			if m.err != nil {
				return nil, excluded, m.err
			}
			rep, err := evaluate.Measure(evs, verdicts, evaluate.Options{Unknown: []string{"background"}})
			if err != nil {
				return nil, excluded, err
			}
			fs, err := newSplitModel(newFirstSeen(), split)
			if err != nil {
				return nil, excluded, err
			}
			trivial, err := evaluate.Measure(evs, evaluate.Run(evs, fs), evaluate.Options{Unknown: []string{"background"}})
			if err != nil {
				return nil, excluded, err
			}
			out = append(out, evalResult{Learn: w, Baseline: b, Report: rep, Hosts: countHosts(evs, origin, verdicts, hosts), Trivial: trivial})
		}
	}
	return out, excluded, nil
}

// arrange returns the events as the model sees them under baseline b, the originating host
// of each, and each service's split time (end of learning).
func arrange(kept []evaluate.Event, b baseline, starts map[string]time.Time, w time.Duration, cfg evalConfig) ([]evaluate.Event, []string, map[string]time.Time) {
	evs := slices.Clone(kept)
	origin := make([]string, len(evs))
	for i, e := range evs {
		origin[i] = e.Flow.Service
	}
	if b == ownBaseline {
		return evs, origin, map[string]time.Time{cfg.Benign: starts[cfg.Benign].Add(w), cfg.Infected: starts[cfg.Infected].Add(w)}
	}
	split := starts[cfg.Benign].Add(w)
	shift := split.Sub(starts[cfg.Infected])
	for i := range evs {
		if evs[i].Flow.Service == cfg.Infected {
			evs[i].Flow.Service = cfg.Benign
			evs[i].Flow.Time = evs[i].Flow.Time.Add(shift)
		}
	}
	// Sort events and origins together, by time, keeping file order for equal times.
	idx := make([]int, len(evs))
	for i := range idx {
		idx[i] = i
	}
	slices.SortStableFunc(idx, func(a, b int) int { return evs[a].Flow.Time.Compare(evs[b].Flow.Time) })
	sorted, sortedOrigin := make([]evaluate.Event, len(evs)), make([]string, len(evs))
	for i, j := range idx {
		sorted[i], sortedOrigin[i] = evs[j], origin[j]
	}
	return sorted, sortedOrigin, map[string]time.Time{cfg.Benign: split}
}

// modeModel is what the split needs of a model: decisions, and mode changes to end
// learning. *flowmodel.Model is one.
type modeModel interface {
	evaluate.Decider
	SetMode(service string, c flowmodel.ModeChange) error
}

// splitModel is the model under test with learning split by time: each host learns until its
// split time and is set to monitor mode (SetMode) when its first flow at or after that time
// arrives. Events must come in time order.
type splitModel struct {
	m        modeModel
	split    map[string]time.Time
	switched map[string]bool
	err      error // the first SetMode failure
}

// never is a learn window no capture reaches: the split, not the model, ends learning.
const never = 100 * 365 * 24 * time.Hour

// newModel is the model evaluated: flowmodel.Model with its defaults (every detector on).
func newModel() (modeModel, error) {
	return flowmodel.New(flowmodel.Config{LearnWindow: never, LearnMinRequests: 1, AfterLearning: flowmodel.ModeMonitor, EventClock: true, TrustHostNames: true})
}

func newSplitModel(m modeModel, split map[string]time.Time) (*splitModel, error) {
	for host := range split {
		if err := m.SetMode(host, flowmodel.ModeChange{Mode: flowmodel.ModeLearn, By: "eval"}); err != nil {
			return nil, err
		}
	}
	return &splitModel{m: m, split: split, switched: make(map[string]bool, len(split))}, nil
}

func (s *splitModel) Decide(f *flowmodel.Flow) flowmodel.Verdict {
	if t, ok := s.split[f.Service]; ok && !s.switched[f.Service] && !f.Time.Before(t) {
		if err := s.m.SetMode(f.Service, flowmodel.ModeChange{Mode: flowmodel.ModeMonitor, By: "eval", At: f.Time}); err != nil && s.err == nil {
			s.err = fmt.Errorf("end learning of %s: %w", f.Service, err)
		}
		s.switched[f.Service] = true
	}
	return s.m.Decide(f)
}

// captureStarts maps each host to the start of the capture its first flow comes from.
func captureStarts(recs []record, st []stats) map[string]time.Time {
	start := make(map[string]time.Time, len(st))
	for _, s := range st {
		start[s.Capture] = s.Start
	}
	out := map[string]time.Time{}
	for _, r := range recs {
		if _, ok := out[r.Service]; !ok {
			out[r.Service] = start[r.Capture]
		}
	}
	return out
}

func countHosts(events []evaluate.Event, origin []string, verdicts []flowmodel.Verdict, hosts []string) []hostCounts {
	out := make([]hostCounts, len(hosts))
	for i, h := range hosts {
		out[i].Host = h
	}
	faDests := make([]map[string]bool, len(hosts))
	for i := range faDests {
		faDests[i] = map[string]bool{}
	}
	learnedNames := map[string]map[string]bool{} // per service, as the model sees it
	learned := func(svc string) map[string]bool {
		if learnedNames[svc] == nil {
			learnedNames[svc] = map[string]bool{}
		}
		return learnedNames[svc]
	}
	for i, e := range events {
		h := slices.Index(hosts, origin[i])
		c := &out[h]
		v := verdicts[i]
		learning := v.Mode == flowmodel.ModeLearn
		alerted := !learning && v.Action != flowmodel.Allow
		c.Flows++
		switch {
		case learning:
			c.Learning++
			if n := e.Flow.Destination.Host; n != "" {
				learned(e.Flow.Service)[n] = true
			}
			if e.Label == "malicious" {
				c.MaliciousInLearn++
			}
		case e.Label == "background":
			c.Background++
		case e.Label == "malicious":
			c.Malicious++
			if alerted {
				c.MaliciousAlerted++
			}
		default:
			c.Benign++
			if alerted {
				c.FalseAlerts++
				faDests[h][netip.AddrPortFrom(e.Flow.Destination.IP, e.Flow.Destination.Port).String()] = true
				if learned(e.Flow.Service)[e.Flow.Destination.Host] {
					c.FalseAlertsKnownName++
				}
			}
		}
	}
	for i := range out {
		out[i].FalseAlertDests = len(faDests[i])
	}
	return out
}

// readCaptures converts the captures in dir and reads the events back from JSONL: the
// evaluation reads the same bytes `convert` writes and a replay reads, not the records. It
// also returns the captures' statistics and the start of each host's capture.
func readCaptures(dir string) ([]evaluate.Event, []stats, map[string]time.Time, error) {
	recs, st, err := convertDir(dir)
	if err != nil {
		return nil, nil, nil, err
	}
	var buf bytes.Buffer
	if err := evaluate.WriteJSONL(&buf, recs); err != nil {
		return nil, nil, nil, err
	}
	events, err := evaluate.Read(&buf)
	if err != nil {
		return nil, nil, nil, err
	}
	return events, st, captureStarts(recs, st), nil
}

func runEval(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("eval", flag.ContinueOnError)
	fs.SetOutput(stderr)
	data := fs.String("data", "", "folder of captures (default: $MESHGUARD_DATASETS/stratosphere or ../shared/datasets/stratosphere)")
	learn := fs.String("learn", "8h,4h,12h", "learn windows, one table row each (the first is the headline)")
	benign := fs.String("benign-host", benignHost, "the benign monitored host")
	infected := fs.String("infected-host", kovterHost, "the infected monitored host")
	out := evaluate.NewResultsFlags(fs, "stratosphere")
	if err := fs.Parse(args); err != nil {
		return err
	}
	windows, err := durations(*learn)
	if err != nil {
		return err
	}
	dir, err := dataDir(*data)
	if err != nil {
		return err
	}
	events, st, starts, err := readCaptures(dir)
	if err != nil {
		return err
	}
	cfg := evalConfig{Benign: *benign, Infected: *infected, Learn: windows}
	res, excluded, err := evaluateEvents(ctx, events, starts, cfg)
	if err != nil {
		return err
	}
	cmd := "go run ./bench/stratosphere eval --write"
	if *learn != fs.Lookup("learn").DefValue {
		cmd += " --learn " + *learn
	}
	return out.Publish(stdout, stderr, section(cmd, cfg, st, len(events), excluded, res))
}

// section renders the markdown section of bench/RESULTS.md.
func section(cmd string, cfg evalConfig, st []stats, events, excluded int, res []evalResult) string {
	var b strings.Builder
	fmt.Fprintf(&b, "## stratosphere: egress with C2 (Stratosphere Zeek logs)\n\n")
	fmt.Fprintf(&b, "Command: `%s` (dataset `stratosphere/` of the shared datasets; about a second).\n\n", cmd)
	b.WriteString("Conversion (`go run ./bench/stratosphere convert --out FILE.jsonl`): http.log rows are HTTP flows; conn.log rows without an http.log row are plain destination flows, named by ssl.log's SNI when there is one; the service is the originating host; dns.log is not used.\n\n")
	for _, s := range st {
		fmt.Fprintf(&b, "- %s\n", s)
	}
	fmt.Fprintf(&b, "\n%d flow events; %d of them originate at hosts other than the monitored %s (benign host, 008) and %s (Kovter, 009): Internet scans of the benign host, labelled External-Attack-to-Device, not egress of a monitored host, so left out.\n\n",
		events, excluded, cfg.Benign, cfg.Infected)
	b.WriteString("Split: a host learns on the first window of its capture (each row names the window), then is set to monitor mode. A capture starts at the first row written to its conn.log (http.log for 009, which has no conn.log); Zeek writes a connection when it ends, so the few connections dated earlier (one 6-hour MQTT session of the benign host is dated 4 hours before its capture) are learned too. The Kovter host is scored two ways:\n\n")
	b.WriteString("- **own baseline**: it is a service of its own and learns on its own capture's first window, like the benign host. Its C2 starts 3 minutes into the capture, so its learning part holds malicious flows: they count as missed (ranked below every scored flow), and time to detect runs from its first malicious flow, inside learning.\n")
	b.WriteString("- **replica of benign host**: it is another replica of the benign host's service and shares its baseline (as replicas of one service do); its capture is shifted to start when the benign host's learning ends, and nothing of it is learned. The captures are five years and two networks apart (2017 and 2022), so nearly everything it contacts is new to that baseline: this view flatters a new-destination detector.\n\n")
	b.WriteString("Flows labelled Background (truth unknown) are decided but not counted. False alerts per service-day: benign scored flows alerted on, over the scored time summed over services (from a service's first scored flow to its last flow); every alerted flow counts, repeats included. Model: `flowmodel.Model` with every detector on, on event time as `meshguard replay` runs it (EventClock, TrustHostNames), and its default alert budget (1 alert per service-day on learned traffic). New destinations score above 0.99 (up to 1, higher the further they lie from what the service uses: a port it never used, a domain it never named, many new destinations within minutes); the scored detectors (shapes, parameter values, rates, bursts, volume) on a known destination at most 0.99, so a never-seen destination always ranks above them, and rate, burst and volume scores under a fifth of their alarm rank as 0 (noise); a destination admitted by probation scores 0.99. A budget below the false alerts of score 1 gives recall 0.\n\n")
	rows := make([]evaluate.Row, 0, len(res))
	for _, r := range res {
		k, ok := r.Report.Kind("malicious")
		if !ok {
			continue
		}
		rows = append(rows, evaluate.Row{Name: r.name(), Report: r.Report, Kind: k})
		if tk, ok := r.Trivial.Kind("malicious"); ok {
			rows = append(rows, evaluate.Row{Name: r.name() + ", first-seen baseline", Report: r.Trivial, Kind: tk})
		}
	}
	b.WriteString("Each row is followed by the trivial baseline on the same flows (first-seen baseline: a flow to an IP and port its service did not use while learning alerts with score 1, anything else scores 0; frozen when learning ends).\n\n")
	b.WriteString(evaluate.Table(rows))
	var losses []string
	for _, r := range res {
		k, ok := r.Report.Kind("malicious")
		tk, tok := r.Trivial.Kind("malicious")
		if ok && tok && k.AUC < tk.AUC {
			losses = append(losses, fmt.Sprintf("%s (%.3f, baseline %.3f)", r.name(), k.AUC, tk.AUC))
		}
	}
	if len(losses) > 0 {
		fmt.Fprintf(&b, "\nROC-AUC below the baseline: %s. Flows to C2 IPs the infected host contacted inside its learn window are known to both; the baseline scores every known flow 0 and so ties them with the benign host's known flows, while meshguard's detectors score most of those above the learned C2 (a new shape, or a rate, burst or volume score above the noise level).\n", strings.Join(losses, "; "))
	}
	b.WriteString("\nPer host (scored flows; alerts are the model's own):\n\n")
	b.WriteString("| | host | flows | in learning (malicious) | benign scored | false alerts (destinations) | of which to a learned name | malicious scored | malicious alerted | background scored |\n")
	b.WriteString("| :-- | :-- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
	for _, r := range res {
		for _, h := range r.Hosts {
			fmt.Fprintf(&b, "| %s | %s | %d | %d (%d) | %d | %d (%d) | %d | %d | %d | %d |\n", r.name(), h.Host, h.Flows, h.Learning, h.MaliciousInLearn, h.Benign, h.FalseAlerts, h.FalseAlertDests, h.FalseAlertsKnownName, h.Malicious, h.MaliciousAlerted, h.Background)
		}
	}
	b.WriteString("\n")
	return b.String()
}

func (r evalResult) name() string {
	return fmt.Sprintf("%s, learn %s", r.Baseline, evaluate.ShortDuration(r.Learn))
}
