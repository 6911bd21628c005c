package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/meshguard/meshguard/controlplane/admin"
	"github.com/meshguard/meshguard/flowmodel"
)

const feedbackUsage = `Usage: meshguard %s [flags] SERVICE DESTINATION [SHAPE]

%ss a destination (host:port, ip:port or [v6]:port) of a service, or a request shape on it
(the shape as alerts and GET /v1/services show it, quoted as one argument). An approval
teaches the model at once; a rejection removes it from the baseline for good.

Flags:
`

// runFeedback is "meshguard approve|reject SERVICE DESTINATION [SHAPE]": it asks a running
// meshguard's admin API to approve or reject, recording who.
func runFeedback(ctx context.Context, action string, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet(action, fmt.Sprintf(feedbackUsage, action, strings.ToUpper(action[:1])+action[1:]), stderr)
	adminURL := fs.String("admin", "http://127.0.0.1:9002", "admin API of the running meshguard")
	by := fs.String("by", os.Getenv("USER"), "who decides (recorded with the time)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var errs []error
	if fs.NArg() < 2 || fs.NArg() > 3 {
		errs = append(errs, fmt.Errorf("want SERVICE DESTINATION [SHAPE], got %d arguments", fs.NArg()))
	}
	if strings.TrimSpace(*by) == "" {
		errs = append(errs, errors.New("--by is required (and $USER is empty)"))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	req := admin.FeedbackRequest{Destination: fs.Arg(1), By: *by}
	if fs.NArg() == 3 {
		req.Shape = fs.Arg(2)
	}
	if _, err := flowmodel.ParseDestination(req.Destination); err != nil {
		return err
	}
	path := "/v1/services/" + url.PathEscape(fs.Arg(0)) + "/approvals"
	if action == "reject" {
		path = "/v1/services/" + url.PathEscape(fs.Arg(0)) + "/rejections"
	}
	body, _ := json.Marshal(req)
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(*adminURL, "/")+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	hreq.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(hreq)
	if err != nil {
		return fmt.Errorf("%w (is meshguard serve running with --admin-listen at %s?)", err, *adminURL)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		var e admin.ErrorBody
		if json.Unmarshal(out, &e) == nil && e.Error != "" {
			return fmt.Errorf("%s: %s", resp.Status, e.Error)
		}
		return fmt.Errorf("%s: %s", resp.Status, out)
	}
	what := req.Destination
	if req.Shape != "" {
		what = req.Shape + " on " + req.Destination
	}
	fmt.Fprintf(stdout, "%sd for %s: %s (by %s)\n", action, fs.Arg(0), what, *by)
	return nil
}
