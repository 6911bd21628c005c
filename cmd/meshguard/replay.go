package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/meshguard/meshguard/flowmodel"
	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// replayLine is one output line of "meshguard replay".
type replayLine struct {
	Seq     int      `json:"seq"`
	Service string   `json:"service"`
	Mode    string   `json:"mode"`
	Verdict string   `json:"verdict"`
	Score   float64  `json:"score"`
	Reasons []string `json:"reasons"`
}

// newReplayCommand is "meshguard replay [FILE|-]".
func newReplayCommand(e *env) *cobra.Command {
	var mf modelFlags
	c := &cobra.Command{
		Use:   "replay [flags] [FILE|-]",
		Short: "decide flow events (JSONL) and print one verdict per line",
		Long: `Reads flow events (JSONL) from FILE or stdin, decides each on event time, and writes one
JSON verdict per event: seq is the event's line number in the input. Bad lines are reported
on stderr and skipped, and counted in the summary; when no line is a valid event the command
fails.`,
		// Extra arguments are reported with every other problem, by runReplay.
		Args: cobra.ArbitraryArgs,
		RunE: func(c *cobra.Command, args []string) error {
			return runReplay(c.Context(), mf, args, e.stdin, e.stdout, e.stderr)
		},
	}
	c.Flags().SortFlags = false
	mf.register(c.Flags())
	return c
}

func runReplay(ctx context.Context, mf modelFlags, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	var errs []error
	cfg, err := mf.config()
	if err != nil {
		errs = append(errs, err)
	}
	if len(args) > 1 {
		errs = append(errs, fmt.Errorf("replay takes one input file, got %d", len(args)))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	in, name := stdin, "stdin"
	if len(args) == 1 && args[0] != "-" {
		f, err := os.Open(args[0])
		if err != nil {
			return err
		}
		defer f.Close()
		in, name = f, args[0]
	}
	// A replay runs on the events' own time (probation paced by it, not by the wall clock),
	// and takes a host without an IP by its name: there are no fresh DNS answers to consult
	// for recorded events. serve does neither.
	cfg.EventClock, cfg.TrustHostNames = true, true
	model, err := flowmodel.New(cfg)
	if err != nil {
		return err
	}
	out := bufio.NewWriterSize(stdout, 64<<10)
	defer out.Flush()
	enc := json.NewEncoder(out)

	counts := map[flowmodel.Action]int{}
	events, bad, err := readEvents(ctx, in, "replay", name, stderr, func(f *flowmodel.Flow, line int) error {
		v := model.Decide(f)
		model.Observe(f)
		counts[v.Action]++
		if err := enc.Encode(replayLine{
			Seq: line, Service: f.Service, Mode: modeString(v.Mode),
			Verdict: v.Action.String(), Score: v.Score, Reasons: v.Reasons.Strings(),
		}); err != nil {
			return fmt.Errorf("write: %w", err)
		}
		return nil
	})
	if ferr := out.Flush(); ferr != nil && err == nil {
		err = fmt.Errorf("write: %w", ferr)
	}
	// The counts, bad lines included, are reported however the replay ends.
	fmt.Fprintf(stderr, "replay: %d events (%d allow, %d alert, %d block), %d bad lines\n",
		events, counts[flowmodel.Allow], counts[flowmodel.Alert], counts[flowmodel.Block], bad)
	if err != nil {
		return err
	}
	if events == 0 && bad > 0 {
		return fmt.Errorf("replay: %s: no valid flow event, %d bad lines", name, bad)
	}
	return nil
}

// readEvents reads flow events from in and calls fn with each and its line number. A bad
// line is reported on stderr with its number ("CMD: NAME: line N: ...") and skipped; on a
// terminal a progress line is drawn. It returns the events and bad lines counted.
func readEvents(ctx context.Context, in io.Reader, cmd, name string, stderr io.Writer, fn func(f *flowmodel.Flow, line int) error) (events, bad int, err error) {
	var progress *progressLine
	if f, ok := stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		progress = newProgressLine(stderr, cmd+" "+name)
		defer progress.clear()
	}
	r := flowmodel.NewEventReader(in)
	for {
		if events%1024 == 0 && ctx.Err() != nil {
			return events, bad, ctx.Err()
		}
		f, err := r.Next()
		if errors.Is(err, io.EOF) {
			return events, bad, nil
		}
		var le *flowmodel.LineError
		if errors.As(err, &le) {
			bad++
			if progress != nil {
				progress.clear()
			}
			fmt.Fprintf(stderr, "%s: %s: %v\n", cmd, name, le)
			continue
		}
		if err != nil {
			return events, bad, fmt.Errorf("read %s: %w", name, err)
		}
		events++
		if err := fn(&f, r.Line()); err != nil {
			return events, bad, err
		}
		if progress != nil {
			progress.update(fmt.Sprintf("%d events, %d bad lines", events, bad))
		}
	}
}

func modeString(m flowmodel.Mode) string {
	if !m.Valid() {
		return ""
	}
	return m.String()
}

// progressLine redraws one status line on a terminal, at most a few times a second.
type progressLine struct {
	w     io.Writer
	label string
	last  time.Time
	shown bool
}

func newProgressLine(w io.Writer, label string) *progressLine {
	return &progressLine{w: w, label: label}
}

func (p *progressLine) update(msg string) {
	if now := time.Now(); now.Sub(p.last) >= 200*time.Millisecond {
		p.last = now
		fmt.Fprintf(p.w, "\r\033[K%s: %s", p.label, msg)
		p.shown = true
	}
}

func (p *progressLine) clear() {
	if p.shown {
		fmt.Fprint(p.w, "\r\033[K")
		p.shown = false
	}
}
