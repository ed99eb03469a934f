package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/approval"
)

// approvalsCommand is `sigil approvals list | show | approve | reject`:
// the two-person inbox.
func approvalsCommand() *command {
	const id = "a request ID"
	show := func(x *call, r *approval.Request) error {
		return x.either(r, func() {
			x.printf("%s  %s  %s  %s\n  requested by %s at %s: %q\n  approvals %d/%d (needs %s)\n",
				r.ID, r.Kind, r.State, r.Target, r.Requester, rfc3339(r.Created), r.Justification, len(r.Approvals), r.Required, r.Approve)
			if r.Error != "" {
				x.printf("  outcome: %s\n", r.Error)
			}
		})
	}
	decide := func(verb string) func(fs *flag.FlagSet) action {
		return func(fs *flag.FlagSet) action {
			var comment, reason *string
			if verb == "approve" {
				comment = fs.String("comment", "", "a comment")
			} else {
				reason = fs.String("reason", "", "why (required)")
			}
			return func(ctx context.Context, x *call) error {
				var d api.DecisionRequest
				if comment != nil {
					d.Comment = *comment
				}
				if reason != nil {
					if *reason == "" {
						return usageError{"approvals reject needs --reason"}
					}
					d.Reason = *reason
				}
				var r approval.Request
				if err := x.client.Do(ctx, http.MethodPost, "/api/v1/approvals/"+url.PathEscape(x.arg(0))+"/"+verb, d, &r); err != nil {
					return err
				}
				return show(x, &r)
			}
		}
	}
	return &command{name: "approvals", summary: "the two-person inbox: changes held for a second person's approval", def: "list",
		note: "With two_person_rule, dangerous changes exit 7 (pending approval); pass --justification.",
		subs: []*command{
			{name: "list", args: "[--all] [-o json]", summary: "list the requests you may decide", conn: connClient,
				setup: func(fs *flag.FlagSet) action {
					all := fs.Bool("all", false, "every request (history), not only those you may decide")
					return func(ctx context.Context, x *call) error {
						path := "/api/v1/approvals"
						if *all {
							path += "?all"
						}
						var l api.ApprovalList
						if err := x.client.Do(ctx, http.MethodGet, path, nil, &l); err != nil {
							return err
						}
						return x.table(l, "ID\tKIND\tSTATE\tREQUESTER\tTARGET\tWHY", func(tw io.Writer) {
							for _, r := range l.Approvals {
								fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, r.Kind, r.State, r.Requester, r.Target, r.Justification)
							}
						})
					}
				}},
			{name: "show", args: "ID [-o json]", summary: "show a request", conn: connClient, pos: []string{id},
				run: func(ctx context.Context, x *call) error {
					var r approval.Request
					if err := x.client.Do(ctx, http.MethodGet, "/api/v1/approvals/"+url.PathEscape(x.arg(0)), nil, &r); err != nil {
						return err
					}
					return show(x, &r)
				}},
			{name: "approve", args: "ID [--comment C] [-o json]", summary: "approve a request (it runs once it has its approvals)", conn: connClient, pos: []string{id},
				setup: decide("approve")},
			{name: "reject", args: "ID --reason R [-o json]", summary: "reject a request", conn: connClient, pos: []string{id},
				setup: decide("reject")},
		}}
}
