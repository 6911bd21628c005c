package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/meshguard/meshguard/flowmodel"
	"github.com/meshguard/meshguard/flowmodel/capture"
	"github.com/meshguard/meshguard/flowmodel/store"
	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// learnOptions are the flags of "meshguard learn".
type learnOptions struct {
	pcap, events, service, serviceBy, dataDir string
	model                                     modelFlags
}

// newLearnCommand is "meshguard learn".
func newLearnCommand(e *env) *cobra.Command {
	var o learnOptions
	c := &cobra.Command{
		Use:   "learn (--pcap FILE [--service NAME | --service-by src-ip] | --events FILE|-) [flags]",
		Short: "seed baselines from a capture or flow events",
		Long: `Seeds baselines in --data-dir (the store "serve" uses; stop serve first, or learn into a copy)
from a packet capture (pcap or pcapng, gzipped or not: HTTP requests, TLS SNI, DNS answers,
TCP and UDP flows) or from flow events (JSONL). What is learned is trusted: it enters the
baselines whatever the services' modes. New services keep --default-mode, and their learning
period counts from the capture's time.`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return runLearn(c.Context(), o, e.stdin, e.stdout, e.stderr)
		},
	}
	fs := c.Flags()
	fs.SortFlags = false
	fs.StringVar(&o.pcap, "pcap", "", "packet capture to learn from (pcap or pcapng)")
	fs.StringVar(&o.events, "events", "", "flow events (JSONL) to learn from; - for stdin")
	fs.StringVar(&o.service, "service", "", "with --pcap: the service every flow belongs to")
	fs.StringVar(&o.serviceBy, "service-by", "", "with --pcap: derive the service from the packets; src-ip names it after the client IP")
	fs.StringVar(&o.dataDir, "data-dir", "./meshguard-data", "directory of the baseline store")
	o.model.register(fs)
	return c
}

func runLearn(ctx context.Context, o learnOptions, stdin io.Reader, stdout, stderr io.Writer) error {
	var errs []error
	if (o.pcap == "") == (o.events == "") {
		errs = append(errs, errors.New("give exactly one of --pcap and --events"))
	}
	var svcFunc capture.ServiceFunc
	if o.pcap != "" {
		switch {
		case o.service != "" && o.serviceBy != "":
			errs = append(errs, errors.New("give one of --service and --service-by, not both"))
		case o.service != "":
			svcFunc = capture.Fixed(o.service)
		case o.serviceBy != "":
			f, err := capture.ServiceBy(o.serviceBy)
			if err != nil {
				errs = append(errs, err)
			}
			svcFunc = f
		default:
			errs = append(errs, errors.New("--pcap needs --service NAME or --service-by src-ip"))
		}
	} else if o.service != "" || o.serviceBy != "" {
		errs = append(errs, errors.New("--service and --service-by apply to --pcap; events name their service"))
	}
	cfg, err := o.model.config()
	if err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}

	st, err := store.Open(o.dataDir, store.Options{})
	if err != nil {
		return err
	}
	defer st.Close()
	// Seeding from a capture or recorded events runs on their time, as replay does.
	cfg.EventClock, cfg.TrustHostNames = true, true
	model, err := flowmodel.New(cfg)
	if err != nil {
		return err
	}
	if _, err := model.Load(st); err != nil {
		return err
	}
	model.TakeChanges() // what was loaded is saved already

	touched := map[string]bool{}
	learned := 0
	learn := func(f flowmodel.Flow) error {
		if err := model.Learn(&f); err != nil {
			return err
		}
		touched[f.Service] = true
		learned++
		return nil
	}
	start := time.Now()
	if o.pcap != "" {
		err = learnPcap(ctx, o.pcap, svcFunc, learn, stdout, stderr)
	} else {
		err = learnEvents(ctx, o.events, stdin, learn, stderr)
	}
	if err != nil {
		return err
	}
	p := &flowmodel.Persister{Model: model, Store: st}
	if err := p.Flush(); err != nil {
		return fmt.Errorf("save baselines: %w", err)
	}
	fmt.Fprintf(stdout, "learned %d flows in %s into %s\n", learned, time.Since(start).Round(time.Millisecond), st.Path())
	return printLearned(stdout, model, touched)
}

func learnPcap(ctx context.Context, path string, svc capture.ServiceFunc, learn func(flowmodel.Flow) error, stdout, stderr io.Writer) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	size := int64(0)
	if fi, err := f.Stat(); err == nil {
		size = fi.Size()
	}
	cfg := capture.Config{Service: svc}
	if f, ok := stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		progress := newProgressLine(stderr, "learn "+path)
		defer progress.clear()
		cfg.Progress = func(p capture.Progress) {
			pct := ""
			if size > 0 {
				pct = fmt.Sprintf("%3.0f%% ", 100*float64(p.Bytes)/float64(size))
			}
			progress.update(fmt.Sprintf("%s%d packets, %d flows", pct, p.Packets, p.Flows))
		}
	}
	sum, err := capture.Read(ctx, f, cfg, learn)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	fmt.Fprintf(stdout, "%s: %d packets from %s to %s: %d HTTP requests, %d TLS connections, %d other TCP connections, %d UDP flows, %d DNS answers\n",
		path, sum.Packets, sum.First.UTC().Format(time.RFC3339), sum.Last.UTC().Format(time.RFC3339),
		sum.HTTPRequests, sum.TLSHellos, sum.TCPConnections, sum.UDPFlows, sum.DNSAnswers)
	if len(sum.Skipped) > 0 {
		var parts []string
		for reason, n := range sum.Skipped {
			parts = append(parts, fmt.Sprintf("%s %d", reason, n))
		}
		slices.Sort(parts)
		fmt.Fprintf(stdout, "skipped: %s\n", strings.Join(parts, ", "))
	}
	return nil
}

func learnEvents(ctx context.Context, path string, stdin io.Reader, learn func(flowmodel.Flow) error, stderr io.Writer) error {
	in, name := stdin, "stdin"
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		in, name = f, path
	}
	_, bad, err := readEvents(ctx, in, "learn", name, stderr, func(f *flowmodel.Flow, _ int) error {
		f.Source = "events"
		return learn(*f)
	})
	if bad > 0 {
		fmt.Fprintf(stderr, "learn: %s: %d bad lines skipped\n", name, bad)
	}
	return err
}

// printLearned summarises the services a run touched: their mode and what their baselines
// now hold.
func printLearned(w io.Writer, m *flowmodel.Model, touched map[string]bool) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tMODE\tDESTINATIONS\tSHAPES\tREQUESTS")
	var nd, ns int
	for _, s := range m.Services() {
		if !touched[s.Name] {
			continue
		}
		nd += len(s.Destinations)
		ns += len(s.Shapes)
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\n", s.Name, s.Mode, len(s.Destinations), len(s.Shapes), s.Requests)
	}
	fmt.Fprintf(tw, "%d services\t\t%d\t%d\t\n", len(touched), nd, ns)
	return tw.Flush()
}
