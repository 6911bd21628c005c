package main

import (
	"context"
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
	auth     adminAuth
}

// newFeedbackCommand is "meshguard approve|reject SERVICE DESTINATION [SHAPE]": it asks a
// running meshguard's admin API to approve or reject, recording who.
func newFeedbackCommand(e *env, action string) *cobra.Command {
	var o feedbackOptions
	past := map[string]string{"approve": "approved", "reject": "rejected"}[action]
	c := &cobra.Command{
		Use:   action + " [flags] SERVICE DESTINATION [SHAPE]",
		Short: map[string]string{"approve": "teach a running meshguard that a destination or shape is expected", "reject": "remove a destination or shape from a running meshguard's baseline for good"}[action],
		Long: strings.ToUpper(action[:1]) + action[1:] + `s a destination (host:port, ip:port or [v6]:port) of a service, or a request shape on it
(the shape as alerts and GET /v1/services show it, quoted as one argument). An approval
teaches the model at once; a rejection removes it from the baseline for good.`,
		Args: rangeArgs(2, 3, "SERVICE DESTINATION [SHAPE]"),
		RunE: func(c *cobra.Command, args []string) error {
			return runFeedback(c.Context(), action, past, o, args, e)
		},
	}
	fs := c.Flags()
	fs.StringVar(&o.adminURL, "admin", "http://127.0.0.1:9002", "admin API of the running meshguard: http://host:port or unix:///path")
	fs.StringVar(&o.by, "by", "", "who decides, recorded with the time (default: the login name)")
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

func runFeedback(ctx context.Context, action, past string, o feedbackOptions, args []string, e *env) error {
	by := o.by
	if by == "" {
		by = whoami()
	}
	if strings.TrimSpace(by) == "" {
		return errors.New("--by must not be blank")
	}
	req := admin.FeedbackRequest{Destination: args[1], By: by}
	if len(args) == 3 {
		req.Shape = args[2]
	}
	if _, err := flowmodel.ParseDestination(req.Destination); err != nil {
		return err
	}
	token, err := o.auth.token(e.lookupEnv)
	if err != nil {
		return err
	}
	client, err := newAdminClient(o.adminURL, token, &http.Client{Timeout: 10 * time.Second})
	if err != nil {
		return err
	}
	path := "/v1/services/" + url.PathEscape(args[0]) + "/approvals"
	if action == "reject" {
		path = "/v1/services/" + url.PathEscape(args[0]) + "/rejections"
	}
	resp, err := client.do(ctx, http.MethodPost, path, req)
	if err != nil {
		var se *statusError
		if errors.As(err, &se) {
			return err
		}
		return fmt.Errorf("%w (is meshguard serve running with --admin-listen at %s?)", err, o.adminURL)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	what := req.Destination
	if req.Shape != "" {
		what = req.Shape + " on " + req.Destination
	}
	fmt.Fprintf(e.stdout, "%s for %s: %s (by %s)\n", past, args[0], what, by)
	return nil
}
