package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/user"
	"strings"
	"time"

	"github.com/meshguard/meshguard/controlplane/admin"
	"github.com/meshguard/meshguard/flowmodel"
	"github.com/spf13/cobra"
)

// feedbackOptions are the flags of approve and reject.
type feedbackOptions struct {
	adminURL string
	by       string
	reason   string
	rate     bool
	auth     adminAuth
}

// newFeedbackCommand is "meshguard approve|reject SERVICE DESTINATION [SHAPE]" and
// "meshguard approve|reject --rate SERVICE": it asks a running meshguard's admin API to
// approve or reject, recording who.
func newFeedbackCommand(e *env, action string) *cobra.Command {
	var o feedbackOptions
	past := map[string]string{"approve": "approved", "reject": "rejected"}[action]
	c := &cobra.Command{
		Use:   action + " [flags] SERVICE DESTINATION [SHAPE] | " + action + " --rate [flags] SERVICE",
		Short: map[string]string{"approve": "teach a running meshguard that a destination, shape or rate shift is expected", "reject": "remove a destination or shape from a running meshguard's baseline for good, or keep a rate shift out of it"}[action],
		Long: strings.ToUpper(action[:1]) + action[1:] + `s a destination (host:port, ip:port or [v6]:port) of a service, or a request shape on it
(the shape as alerts and GET /v1/services show it, quoted as one argument). An approval
teaches the model at once; a rejection removes it from the baseline for good.

With --rate, ` + action + `s the service's current rate shift, the level its rate_spike or
rate_drop alerts are about. ` + map[string]string{
			"approve": `Approved, the service's recent rate becomes its baseline at
once, without waiting for the shift's probation (--rate-probation of serve).`,
			"reject": `Rejected, the shift keeps alerting past its probation
instead of becoming the baseline (a flood or a slow ramp the workload hopes to outlast),
until a probation period passes without alarm or the shift is approved.`}[action],
		Args: func(c *cobra.Command, args []string) error {
			if o.rate {
				return rangeArgs(1, 1, "SERVICE with --rate")(c, args)
			}
			return rangeArgs(2, 3, "SERVICE DESTINATION [SHAPE]")(c, args)
		},
		RunE: func(c *cobra.Command, args []string) error {
			if o.rate {
				return runRateFeedback(c.Context(), action, past, o, args[0], e)
			}
			return runFeedback(c.Context(), action, past, o, args, e)
		},
	}
	fs := c.Flags()
	fs.StringVar(&o.adminURL, "admin", "http://127.0.0.1:9002", "admin API of the running meshguard: http://host:port or unix:///path")
	fs.StringVar(&o.by, "by", "", "who decides, recorded with the time (default: the login name)")
	fs.StringVar(&o.reason, "reason", "", "why, kept in the audit log (e.g. a ticket)")
	fs.BoolVar(&o.rate, "rate", false, action+" the service's current rate shift instead of a destination or shape")
	fs.StringVar(&o.auth.dataDir, "data-dir", "./meshguard-data", "data directory of the running meshguard, where its admin token is")
	o.auth.register(fs)
	return c
}

// whoami names the person at the keyboard: $USER, else the account's login name, else
// "unknown".
func whoami() string {
	if u := strings.TrimSpace(os.Getenv("USER")); u != "" {
		return u
	}
	if u, err := user.Current(); err == nil && u.Username != "" {
		return u.Username
	}
	return "unknown"
}

// decider returns who decides (--by, else the login name) and a client of the admin API.
func (o feedbackOptions) decider(e *env) (string, *adminClient, error) {
	by := o.by
	if by == "" {
		by = whoami()
	}
	if strings.TrimSpace(by) == "" {
		return "", nil, errors.New("--by must not be blank")
	}
	token, err := o.auth.token(e.lookupEnv)
	if err != nil {
		return "", nil, err
	}
	client, err := newAdminClient(o.adminURL, token, &http.Client{Timeout: 10 * time.Second})
	return by, client, err
}

// post sends a decision and returns the 200's body (at most 1 MiB); an error that is not
// the API's own says where meshguard was expected.
func (o feedbackOptions) post(ctx context.Context, client *adminClient, path string, body any) ([]byte, error) {
	resp, err := client.do(ctx, http.MethodPost, path, body)
	if err != nil {
		var se *statusError
		if errors.As(err, &se) {
			return nil, err
		}
		return nil, fmt.Errorf("%w (is meshguard serve running with --admin-listen at %s?)", err, o.adminURL)
	}
	defer resp.Body.Close()
	return io.ReadAll(io.LimitReader(resp.Body, 1<<20))
}

func runFeedback(ctx context.Context, action, past string, o feedbackOptions, args []string, e *env) error {
	req := admin.FeedbackRequest{Destination: args[1], Reason: o.reason}
	if len(args) == 3 {
		req.Shape = args[2]
	}
	if _, err := flowmodel.ParseDestination(req.Destination); err != nil {
		return err
	}
	by, client, err := o.decider(e)
	if err != nil {
		return err
	}
	req.By = by
	path := "/v1/services/" + url.PathEscape(args[0]) + "/approvals"
	if action == "reject" {
		path = "/v1/services/" + url.PathEscape(args[0]) + "/rejections"
	}
	if _, err := o.post(ctx, client, path, req); err != nil {
		return err
	}
	what := req.Destination
	if req.Shape != "" {
		what = req.Shape + " on " + req.Destination
	}
	fmt.Fprintf(e.stdout, "%s for %s: %s (by %s)\n", past, args[0], what, by)
	return nil
}

// runRateFeedback accepts (approve) or rejects a service's current rate shift.
func runRateFeedback(ctx context.Context, action, past string, o feedbackOptions, service string, e *env) error {
	by, client, err := o.decider(e)
	if err != nil {
		return err
	}
	path := "/v1/services/" + url.PathEscape(service) + "/rate/accept"
	if action == "reject" {
		path = "/v1/services/" + url.PathEscape(service) + "/rate/reject"
	}
	body, err := o.post(ctx, client, path, admin.RateRequest{By: by, Reason: o.reason})
	if err != nil {
		return err
	}
	var resp admin.RateResponse
	if err := json.Unmarshal(body, &resp); err != nil {
		return fmt.Errorf("the admin API's answer: %w", err)
	}
	fmt.Fprintf(e.stdout, "%s for %s: the rate shift (by %s)\n", past, service, by)
	for _, ep := range resp.RateDecision.Episodes {
		fmt.Fprintf(e.stdout, "  episode %d: %s to %s, %d alerts from %s to %s\n", ep.ID, ep.Kind, ep.Destination, ep.Count,
			ep.FirstSeen.Format(time.RFC3339), ep.LastSeen.Format(time.RFC3339))
	}
	if n := resp.RateDecision.Note; n != "" {
		fmt.Fprintf(e.stdout, "  note: %s\n", n)
	}
	return nil
}
