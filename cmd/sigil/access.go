package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/sigil-iot/sigil/fleet/access"
	"github.com/sigil-iot/sigil/pkg/config"
)

// accessCommand is `sigil access request | list | show | approve | deny |
// revoke`: just-in-time SSH access to devices.
func accessCommand() *command {
	const id = "a grant ID"
	show := func(x *call, g *access.Grant, certOut string) error {
		if certOut != "" && g.Certificate != "" {
			if err := os.WriteFile(certOut, []byte(g.Certificate+"\n"), 0o600); err != nil {
				return err
			}
		}
		return x.either(g, func() {
			x.printf("%s  %s  %s as %s for %s\n  requested by %s at %s: %q\n  key %s\n",
				g.ID, g.State, g.Target(), g.Login, time.Duration(g.Duration), g.Requester, rfc3339(g.Created), g.Justification, g.Fingerprint)
			if len(g.Approvers) > 0 {
				x.printf("  approved by %v, valid %s to %s, serial %d\n", g.Approvers, rfc3339(g.Start), rfc3339(g.End), g.Serial)
			}
			if g.RevokedBy != "" {
				x.printf("  revoked by %s at %s: %q\n", g.RevokedBy, rfc3339(g.Revoked), g.Reason)
			}
			for _, s := range g.Sessions {
				x.printf("  session on %s as %s from %s, %s to %s (reported by the device)\n", s.Device, s.User, s.From, rfc3339(s.Start), rfc3339(s.End))
			}
			if certOut != "" && g.Certificate != "" {
				x.printf("  certificate written to %s (ssh -i KEY -o CertificateFile=%s)\n", certOut, certOut)
			}
		})
	}
	decide := func(verb string) func(fs *flag.FlagSet) action {
		return func(fs *flag.FlagSet) action {
			text := fs.String("reason", "", "why (required)")
			if verb == "approve" {
				text = fs.String("comment", "", "a comment")
			}
			return func(ctx context.Context, x *call) error {
				if verb != "approve" && *text == "" {
					return usageError{"access " + verb + " needs --reason"}
				}
				g, err := x.client.DecideAccess(ctx, x.arg(0), verb, *text)
				if err != nil {
					return err
				}
				return show(x, g, "")
			}
		}
	}
	return &command{name: "access", summary: "just-in-time SSH access to devices: request, approve, revoke", def: "list",
		note: "Someone else with access.approve approves (as many as the access policy asks). The certificate is for your own public key; ssh with -o CertificateFile.",
		subs: []*command{
			{name: "request", args: "(--device ID | --group G) --key FILE.pub --justification J [--duration 1h] [--login L] [--source-address A] [--cert-out FILE] [-o json]",
				summary: "request SSH access for your own public key", conn: connClient,
				setup: func(fs *flag.FlagSet) action {
					dev := fs.String("device", "", "the device")
					group := fs.String("group", "", "every device of a group")
					key := fs.String("key", "", "your OpenSSH public key file (.pub)")
					dur := fs.Duration("duration", 0, "how long, from approval (default: the policy's)")
					login := fs.String("login", "", "the local account (default: the policy's first)")
					src := fs.String("source-address", "", "addresses or CIDR blocks logins may come from")
					return func(ctx context.Context, x *call) error {
						why := x.justification()
						if *key == "" || why == "" || (*dev == "") == (*group == "") {
							return usageError{"access request needs --device or --group, --key and --justification"}
						}
						b, err := os.ReadFile(*key)
						if err != nil {
							return err
						}
						g, err := x.client.RequestAccess(ctx, access.Draft{Device: *dev, Group: *group, Login: *login, PublicKey: string(b),
							Justification: why, Duration: config.Duration(*dur), SourceAddress: *src})
						if err != nil {
							return err
						}
						return show(x, g, "")
					}
				}},
			{name: "list", args: "[--state S] [--device ID] [-o json]", summary: "list grants (yours, or all with access.approve)", conn: connClient,
				setup: func(fs *flag.FlagSet) action {
					state := fs.String("state", "", "requested, approved, active, expired, revoked or denied")
					dev := fs.String("device", "", "grants for this device")
					return func(ctx context.Context, x *call) error {
						l, err := x.client.ListAccess(ctx, *state, *dev)
						if err != nil {
							return err
						}
						return x.table(l, "ID\tSTATE\tTARGET\tLOGIN\tREQUESTER\tAPPROVERS\tEND\tWHY", func(tw io.Writer) {
							for _, g := range l.Grants {
								fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%v\t%s\t%s\n", g.ID, g.State, g.Target(), g.Login, g.Requester, g.Approvers, rfc3339(g.End), g.Justification)
							}
						})
					}
				}},
			{name: "show", args: "ID [--cert-out FILE] [-o json]", summary: "show a grant; write its certificate once approved", conn: connClient, pos: []string{id},
				setup: func(fs *flag.FlagSet) action {
					out := fs.String("cert-out", "", "write the certificate here (e.g. ~/.ssh/id_ed25519-cert.pub)")
					return func(ctx context.Context, x *call) error {
						g, err := x.client.Access(ctx, x.arg(0))
						if err != nil {
							return err
						}
						return show(x, g, *out)
					}
				}},
			{name: "approve", args: "ID [--comment C] [-o json]", summary: "approve another's grant (the certificate is signed once approved)", conn: connClient, pos: []string{id},
				setup: decide("approve")},
			{name: "deny", args: "ID --reason R [-o json]", summary: "reject a requested grant, or withdraw your own", conn: connClient, pos: []string{id},
				setup: decide("deny")},
			{name: "revoke", args: "ID --reason R [-o json]", summary: "end a grant at once: devices refuse its certificate", conn: connClient, pos: []string{id},
				setup: decide("revoke")},
		}}
}
