package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strconv"

	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/workload"
)

// workloadsCommand is `sigil workloads list | add NAME | delete NAME |
// rotate-key`: the workload registrations that sigild's SPIFFE Workload
// API serves, and the JWT-SVID signing key.
func workloadsCommand() *command {
	const name = "a workload name"
	return &command{name: "workloads", summary: "workload identities (SPIFFE SVIDs) on devices", def: "list", subs: []*command{
		{name: "list", args: "[-o json]", summary: "list the workload registrations", conn: connClient,
			run: listing((*api.Client).Workloads, "NAME\tSCOPE\tTARGET\tUID\tGID\tEXE PATH\tEXE SHA-256\tCREATED", func(tw io.Writer, l *api.WorkloadList) {
				for _, r := range l.Workloads {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Name, r.Scope, r.Target, optID(r.UID), optID(r.GID),
						dash(r.ExePath), dash(r.ExeSHA256), rfc3339(r.CreatedAt))
				}
			})},
		{name: "add", args: "NAME (--device ID | --group G | --model M) [--uid N] [--gid N] [--exe PATH] [--sha256 HEX]",
			summary: "register a workload (or replace its registration); a process must match every selector given", conn: connClient, pos: []string{name},
			setup: func(fs *flag.FlagSet) action {
				device := fs.String("device", "", "scope: one device ID")
				group := fs.String("group", "", "scope: devices of this group")
				model := fs.String("model", "", "scope: devices of this model")
				uid := fs.String("uid", "", "selector: the process's user ID")
				gid := fs.String("gid", "", "selector: the process's group ID")
				exe := fs.String("exe", "", "selector: the process's executable path")
				sum := fs.String("sha256", "", "selector: the SHA-256 of the process's executable (hex)")
				return func(ctx context.Context, x *call) error {
					r := workload.Registration{Name: x.arg(0), ExePath: *exe, ExeSHA256: *sum}
					n := 0
					for _, s := range []struct {
						scope  workload.Scope
						target string
					}{{workload.ScopeDevice, *device}, {workload.ScopeGroup, *group}, {workload.ScopeModel, *model}} {
						if s.target != "" {
							r.Scope, r.Target = s.scope, s.target
							n++
						}
					}
					if n != 1 {
						return usageError{"give exactly one of --device, --group and --model"}
					}
					var err error
					if r.UID, err = parseID("--uid", *uid); err != nil {
						return err
					}
					if r.GID, err = parseID("--gid", *gid); err != nil {
						return err
					}
					if err := r.Validate(); err != nil {
						return usageError{err.Error()}
					}
					out, err := x.client.RegisterWorkload(ctx, r)
					if err != nil {
						return err
					}
					x.printf("registered workload %s for %s %s\n", out.Name, out.Scope, out.Target)
					return nil
				}
			}},
		{name: "delete", args: "NAME", summary: "delete a workload registration (no new SVIDs for it)", conn: connClient, pos: []string{name},
			run: func(ctx context.Context, x *call) error {
				if err := x.client.DeleteWorkload(ctx, x.arg(0)); err != nil {
					return err
				}
				x.printf("deleted workload %s\n", x.arg(0))
				return nil
			}},
		{name: "rotate-key", summary: "rotate the JWT-SVID signing key now", conn: connClient,
			run: func(ctx context.Context, x *call) error {
				k, err := x.client.RotateWorkloadKeys(ctx)
				if err != nil {
					return err
				}
				x.printf("JWT-SVID signing key rotated: %s (the retired key stays in the JWKS until its tokens expire)\n", k.KeyID)
				return nil
			}},
	}}
}

func parseID(flagName, s string) (*uint32, error) {
	if s == "" {
		return nil, nil
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return nil, usageError{flagName + " must be a number"}
	}
	v := uint32(n)
	return &v, nil
}

func optID(p *uint32) string {
	if p == nil {
		return "-"
	}
	return strconv.FormatUint(uint64(*p), 10)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
