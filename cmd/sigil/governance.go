package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/governance"
)

// Identity governance over the API: owners, the triage list of unknown
// identities, the block list, clone incidents, risk scores.

// ownersCommand is `sigil owners list | show ID | put ID | status ID
// STATUS | assign DEVICE OWNER | orphans`.
func ownersCommand() *command {
	const id = "an ID"
	return &command{name: "owners", summary: "owners of devices, assignments and orphaned devices", def: "list", subs: []*command{
		{name: "list", args: "[-o json]", summary: "list the owners", conn: connClient,
			run: func(ctx context.Context, x *call) error {
				l, err := x.client.Owners(ctx, "", 1000)
				if err != nil {
					return err
				}
				return x.table(l, "ID\tKIND\tSTATUS\tNAME\tCONTACT", func(tw io.Writer) {
					for _, o := range l.Owners {
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", o.ID, o.Kind, o.Status, o.Name, o.Contact)
					}
				})
			}},
		{name: "show", args: "ID", summary: "print an owner (JSON)", conn: connClient, pos: []string{id},
			run: func(ctx context.Context, x *call) error {
				o, err := x.client.Owner(ctx, x.arg(0))
				if err != nil {
					return err
				}
				return x.json(o)
			}},
		{name: "put", args: "ID [--name N] [--kind person|team] [--contact C] [--status S]", summary: "create or change an owner", conn: connClient, pos: []string{id},
			setup: func(fs *flag.FlagSet) action {
				name := fs.String("name", "", "display name")
				kind := fs.String("kind", "", "person (default) or team")
				contact := fs.String("contact", "", "how to reach the owner")
				status := fs.String("status", "", "active (default), inactive or departed")
				return func(ctx context.Context, x *call) error {
					o, err := x.client.PutOwner(ctx, x.arg(0), api.OwnerRequest{Name: *name, Kind: *kind, Contact: *contact, Status: *status})
					if err != nil {
						return err
					}
					x.printf("owner %s (%s) is %s\n", o.ID, o.Kind, o.Status)
					return nil
				}
			}},
		{name: "status", args: "ID active|inactive|departed", summary: "change an owner's status; its devices are judged at the next sweep", conn: connClient,
			pos: []string{id, "a status: active, inactive or departed"},
			run: func(ctx context.Context, x *call) error {
				o, err := x.client.SetOwnerStatus(ctx, x.arg(0), x.arg(1))
				if err != nil {
					return err
				}
				x.printf("owner %s is %s; its devices are judged at the next sweep (sigil governance sweep)\n", o.ID, o.Status)
				return nil
			}},
		{name: "assign", args: "DEVICE OWNER [--purpose P] [-o json]", summary: "assign a device to an owner", conn: connClient,
			pos: []string{id, "a device ID and an owner ID"},
			setup: func(fs *flag.FlagSet) action {
				purpose := fs.String("purpose", "", "why the device exists")
				return func(ctx context.Context, x *call) error {
					own, err := x.client.AssignOwner(ctx, x.arg(0), x.arg(1), *purpose)
					if err != nil {
						return err
					}
					return x.either(own, func() {
						x.printf("device %s: owner %s, purpose %q\n", own.DeviceID, own.Owner, own.Purpose)
						if own.Status != nil && own.Status.Orphaned {
							x.printf("still orphaned: %s\n", own.Status.OrphanReason)
						}
					})
				}
			}},
		{name: "orphans", args: "[-o json]", summary: "list the devices without an active owner", conn: connClient,
			run: func(ctx context.Context, x *call) error {
				l, err := x.client.Orphans(ctx, "", 1000)
				if err != nil {
					return err
				}
				return x.table(l, "DEVICE\tSINCE\tREASON", func(tw io.Writer) {
					for _, st := range l.Devices {
						fmt.Fprintf(tw, "%s\t%s\t%s\n", st.DeviceID, stamp(st.OrphanedSince), st.OrphanReason)
					}
				})
			}},
	}}
}

// triageCommand is `sigil triage list | show KEY | enroll KEY | block KEY
// | dismiss KEY`.
func triageCommand() *command {
	const key = "an entry key (from sigil triage list)"
	decide := func(d governance.Decision) func(fs *flag.FlagSet) action {
		return func(fs *flag.FlagSet) action {
			note := fs.String("note", "", "why")
			return func(ctx context.Context, x *call) error {
				sh, err := x.client.Decide(ctx, x.arg(0), string(d), *note)
				if err != nil {
					return err
				}
				switch d {
				case governance.DecisionBlock:
					x.printf("%s blocked; see sigil blocks list\n", sh.Key)
				case governance.DecisionEnroll:
					x.printf("%s may enroll now\n", sh.Key)
				default:
					x.printf("%s dismissed\n", sh.Key)
				}
				return nil
			}
		}
	}
	return &command{name: "triage", summary: "unknown identities that tried to connect or enroll, to enroll, block or dismiss", def: "list", subs: []*command{
		{name: "list", args: "[--all] [--kind K] [-o json]", summary: "list the undecided entries", conn: connClient,
			setup: func(fs *flag.FlagSet) action {
				all := fs.Bool("all", false, "include decided entries")
				kind := fs.String("kind", "", "only this kind: foreign-certificate, unknown-device, unknown-client, unknown-ek")
				return func(ctx context.Context, x *call) error {
					l, err := x.client.Triage(ctx, !*all, *kind, "", 1000)
					if err != nil {
						return err
					}
					if x.jsonOut() {
						return x.json(l)
					}
					err = x.plainTable("KEY\tCOUNT\tLAST SEEN\tFROM\tDECISION\tREASON", func(tw io.Writer) {
						for _, s := range l.Entries {
							fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\n", s.Key, s.Count, stamp(s.LastSeen), strings.Join(s.Remotes, ","), s.Decision, s.Reason)
						}
					})
					if err == nil && (l.Stats.Dropped > 0 || l.Stats.Evicted > 0) {
						x.printf("%d attempts not recorded during floods, %d entries evicted\n", l.Stats.Dropped, l.Stats.Evicted)
					}
					return err
				}
			}},
		{name: "show", args: "KEY", summary: "print an entry (JSON)", conn: connClient, pos: []string{key},
			run: func(ctx context.Context, x *call) error {
				sh, err := x.client.TriageEntry(ctx, x.arg(0))
				if err != nil {
					return err
				}
				return x.json(sh)
			}},
		{name: "enroll", args: "KEY [--note T]", summary: "let the identity enroll", conn: connClient, pos: []string{key}, setup: decide(governance.DecisionEnroll)},
		{name: "block", args: "KEY [--note T]", summary: "block the identity", conn: connClient, pos: []string{key}, setup: decide(governance.DecisionBlock)},
		{name: "dismiss", args: "KEY [--note T]", summary: "dismiss the entry", conn: connClient, pos: []string{key}, setup: decide(governance.DecisionDismiss)},
	}}
}

// blocksCommand is `sigil blocks list | add KIND VALUE | remove KIND
// VALUE`.
func blocksCommand() *command {
	kindValue := []string{"a kind (client-id, address, ek) and a value", "a value"}
	return &command{name: "blocks", summary: "the block list: client IDs, addresses and EKs the fleet refuses", def: "list", subs: []*command{
		{name: "list", args: "[-o json]", summary: "list the blocks", conn: connClient,
			run: func(ctx context.Context, x *call) error {
				l, err := x.client.Blocks(ctx, "", 1000)
				if err != nil {
					return err
				}
				return x.table(l, "KIND\tVALUE\tBY\tAT\tREASON", func(tw io.Writer) {
					for _, b := range l.Blocks {
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", b.Kind, b.Value, b.By, stamp(b.At), b.Reason)
					}
				})
			}},
		{name: "add", args: "client-id|address|ek VALUE [--reason R]", summary: "block an identity or address", conn: connClient, pos: kindValue,
			setup: func(fs *flag.FlagSet) action {
				reason := fs.String("reason", "", "why")
				return func(ctx context.Context, x *call) error {
					if err := x.client.Block(ctx, x.arg(0), x.arg(1), *reason); err != nil {
						return err
					}
					x.printf("blocked %s %s\n", x.arg(0), x.arg(1))
					return nil
				}
			}},
		{name: "remove", args: "KIND VALUE", summary: "lift a block", conn: connClient, pos: kindValue,
			run: func(ctx context.Context, x *call) error {
				if err := x.client.Unblock(ctx, x.arg(0), x.arg(1)); err != nil {
					return err
				}
				x.printf("unblocked %s %s\n", x.arg(0), x.arg(1))
				return nil
			}},
	}}
}

// clonesCommand is `sigil clones [list [--all]] | resolve DEVICE --kind K`.
func clonesCommand() *command {
	return &command{name: "clones", summary: "clone incidents: an EK or a certificate used by two devices at once", def: "list", subs: []*command{
		{name: "list", args: "[--all] [-o json]", summary: "list the open clone incidents", conn: connClient,
			setup: func(fs *flag.FlagSet) action {
				all := fs.Bool("all", false, "include resolved incidents")
				return func(ctx context.Context, x *call) error {
					l, err := x.client.Clones(ctx, *all)
					if err != nil {
						return err
					}
					return x.table(l, "DEVICE\tKIND\tDETECTED\tHOSTS\tQUARANTINED\tRESOLVED\tEVIDENCE", func(tw io.Writer) {
						for _, c := range l.Clones {
							fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\t%v\t%s\n", c.DeviceID, c.Kind, stamp(c.DetectedAt), strings.Join(c.Hosts, ","), c.Quarantined, c.Resolved, c.Evidence)
						}
					})
				}
			}},
		{name: "resolve", args: "DEVICE --kind ek|certificate [--note T]", summary: "close a clone incident; the device stays quarantined until released",
			conn: connClient, pos: []string{"a device ID"},
			setup: func(fs *flag.FlagSet) action {
				kind := fs.String("kind", "", "ek or certificate")
				note := fs.String("note", "", "what was found")
				return func(ctx context.Context, x *call) error {
					if *kind == "" {
						return usageError{"clones resolve needs --kind ek or --kind certificate"}
					}
					if err := x.client.ResolveClone(ctx, x.arg(0), *kind, *note); err != nil {
						return err
					}
					x.printf("clone incident of %s resolved; the device stays quarantined until released\n", x.arg(0))
					return nil
				}
			}},
	}}
}

// riskCommand is `sigil risk [DEVICE]`: one device's score now with its
// factors, or the fleet sorted by the stored scores; and `sigil risk
// sweep`: judge and score every device now.
func riskCommand() *command {
	return &command{name: "risk", args: "[DEVICE] [--limit N] [-o json]", summary: "risk scores: one device's with its factors, or the fleet's, highest first",
		conn: connClient, opt: true,
		setup: func(fs *flag.FlagSet) action {
			limit := fs.Int("limit", 50, "devices listed (fleet view)")
			return func(ctx context.Context, x *call) error {
				if id := x.arg(0); id != "" {
					r, err := x.client.Risk(ctx, id)
					if err != nil {
						return err
					}
					if x.jsonOut() {
						return x.json(r)
					}
					x.printf("%s risk %d/100\n", r.DeviceID, r.Score)
					return x.plainTable("POINTS\tFACTOR\tEVIDENCE", func(tw io.Writer) {
						for _, f := range r.Factors {
							fmt.Fprintf(tw, "%d\t%s\t%s\n", f.Points, f.Name, f.Evidence)
						}
					})
				}
				l, err := x.client.RiskRanking(ctx, "", *limit)
				if err != nil {
					return err
				}
				return x.table(l, "SCORE\tDEVICE\tTOP FACTORS\tSCORED", func(tw io.Writer) {
					for _, r := range l.Risks {
						var top []string
						for _, f := range r.Factors[:min(3, len(r.Factors))] {
							top = append(top, fmt.Sprintf("%s(%d)", f.Name, f.Points))
						}
						fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", r.Score, r.DeviceID, strings.Join(top, " "), stamp(r.At))
					}
				})
			}
		},
		subs: []*command{sweepCommand()}}
}

// sweepCommand judges every device now (sigil governance sweep, sigil
// risk sweep).
func sweepCommand() *command {
	return &command{name: "sweep", args: "[-o json]", summary: "judge every device now: orphaned, dormant, clones, risk", conn: connClient,
		run: func(ctx context.Context, x *call) error {
			rep, err := x.client.Sweep(ctx)
			if err != nil {
				return err
			}
			return x.either(rep, func() {
				x.printf("%d devices judged: %d orphaned, %d dormant (%d certificates revoked now), %d new clone incidents, %d scored, %d failed\n",
					rep.Devices, rep.Orphaned, rep.Dormant, rep.Revoked, rep.Clones, rep.Scored, rep.Failed)
			})
		}}
}

// governanceCommand is `sigil governance sweep | dormant`.
func governanceCommand() *command {
	return &command{name: "governance", summary: "identity governance sweeps and dormant devices", subs: []*command{
		sweepCommand(),
		{name: "dormant", args: "[-o json]", summary: "list the dormant devices", conn: connClient,
			run: func(ctx context.Context, x *call) error {
				l, err := x.client.Dormant(ctx, "", 1000)
				if err != nil {
					return err
				}
				return x.table(l, "DEVICE\tLAST SEEN\tDORMANT SINCE\tREVOKED SERIAL", func(tw io.Writer) {
					for _, st := range l.Devices {
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", st.DeviceID, stamp(st.LastSeen), stamp(st.DormantSince), st.RevokedSerial)
					}
				})
			}},
	}}
}
