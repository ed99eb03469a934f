package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/approval"
)

// cmdApprovals is `sigil approvals list | show | approve | reject`: the
// two-person inbox.
func cmdApprovals(ctx context.Context, args []string, stdout io.Writer) error {
	sub, args := subcommand(args, "list")
	fs := flag.NewFlagSet("approvals "+sub, flag.ContinueOnError)
	af := addAPIFlags(fs)
	all := fs.Bool("all", false, "list: every request (history), not only those you may decide")
	comment := fs.String("comment", "", "approve: a comment")
	reason := fs.String("reason", "", "reject: why (required)")
	var id string
	if sub != "list" {
		var err error
		if id, args, err = positional(args, "approvals "+sub+" needs a request ID"); err != nil {
			return err
		}
	}
	c, err := af.parse(fs, args)
	if err != nil {
		return err
	}
	show := func(r *approval.Request) error {
		if *af.output == "json" {
			return printJSON(stdout, r)
		}
		fmt.Fprintf(stdout, "%s  %s  %s  %s\n  requested by %s at %s: %q\n  approvals %d/%d (needs %s)\n",
			r.ID, r.Kind, r.State, r.Target, r.Requester, r.Created.Format(time.RFC3339), r.Justification, len(r.Approvals), r.Required, r.Approve)
		if r.Error != "" {
			fmt.Fprintf(stdout, "  outcome: %s\n", r.Error)
		}
		return nil
	}
	switch sub {
	case "list":
		path := "/api/v1/approvals"
		if *all {
			path += "?all"
		}
		var l api.ApprovalList
		if err := c.Do(ctx, http.MethodGet, path, nil, &l); err != nil {
			return err
		}
		return af.table(stdout, l, "ID\tKIND\tSTATE\tREQUESTER\tTARGET\tWHY", func(tw io.Writer) {
			for _, r := range l.Approvals {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, r.Kind, r.State, r.Requester, r.Target, r.Justification)
			}
		})
	case "show":
		var r approval.Request
		if err := c.Do(ctx, http.MethodGet, "/api/v1/approvals/"+url.PathEscape(id), nil, &r); err != nil {
			return err
		}
		return show(&r)
	case "approve", "reject":
		if sub == "reject" && *reason == "" {
			return usageError{"approvals reject needs --reason"}
		}
		var r approval.Request
		if err := c.Do(ctx, http.MethodPost, "/api/v1/approvals/"+url.PathEscape(id)+"/"+sub, api.DecisionRequest{Comment: *comment, Reason: *reason}, &r); err != nil {
			return err
		}
		return show(&r)
	}
	return usageError{"unknown approvals subcommand " + sub}
}
