package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/governance"
)

// Identity governance over the API: owners, the triage list of unknown
// identities, the block list, clone incidents, risk scores.

func stamp(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

// cmdOwners: sigil owners list | show ID | put ID | status ID STATUS |
// assign DEVICE OWNER | orphans.
func cmdOwners(ctx context.Context, args []string, stdout io.Writer) error {
	sub, args := subcommand(args, "list")
	fs := flag.NewFlagSet("owners "+sub, flag.ContinueOnError)
	af := addAPIFlags(fs)
	name := fs.String("name", "", "display name (put)")
	kind := fs.String("kind", "", "person (default) or team (put)")
	contact := fs.String("contact", "", "how to reach the owner (put)")
	status := fs.String("status", "", "active (default), inactive or departed (put)")
	purpose := fs.String("purpose", "", "why the device exists (assign)")
	var arg, arg2 string
	var err error
	switch sub {
	case "show", "put", "status", "assign":
		if arg, args, err = positional(args, "owners "+sub+" needs an ID"); err != nil {
			return err
		}
	}
	switch sub {
	case "status":
		if arg2, args, err = positional(args, "owners status needs a status: active, inactive or departed"); err != nil {
			return err
		}
	case "assign":
		if arg2, args, err = positional(args, "owners assign needs a device ID and an owner ID"); err != nil {
			return err
		}
	}
	c, err := af.parse(fs, args)
	if err != nil {
		return err
	}
	switch sub {
	case "list":
		l, err := c.Owners(ctx, "", 1000)
		if err != nil {
			return err
		}
		return af.table(stdout, l, "ID\tKIND\tSTATUS\tNAME\tCONTACT", func(tw io.Writer) {
			for _, o := range l.Owners {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", o.ID, o.Kind, o.Status, o.Name, o.Contact)
			}
		})
	case "show":
		o, err := c.Owner(ctx, arg)
		if err != nil {
			return err
		}
		return printJSON(stdout, o)
	case "put":
		o, err := c.PutOwner(ctx, arg, api.OwnerRequest{Name: *name, Kind: *kind, Contact: *contact, Status: *status})
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "owner %s (%s) is %s\n", o.ID, o.Kind, o.Status)
		return nil
	case "status":
		o, err := c.SetOwnerStatus(ctx, arg, arg2)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "owner %s is %s; its devices are judged at the next sweep (sigil governance sweep)\n", o.ID, o.Status)
		return nil
	case "assign":
		own, err := c.AssignOwner(ctx, arg, arg2, *purpose)
		if err != nil {
			return err
		}
		if *af.output == "json" {
			return printJSON(stdout, own)
		}
		fmt.Fprintf(stdout, "device %s: owner %s, purpose %q\n", own.DeviceID, own.Owner, own.Purpose)
		if own.Status != nil && own.Status.Orphaned {
			fmt.Fprintf(stdout, "still orphaned: %s\n", own.Status.OrphanReason)
		}
		return nil
	case "orphans":
		l, err := c.Orphans(ctx, "", 1000)
		if err != nil {
			return err
		}
		return af.table(stdout, l, "DEVICE\tSINCE\tREASON", func(tw io.Writer) {
			for _, st := range l.Devices {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", st.DeviceID, stamp(st.OrphanedSince), st.OrphanReason)
			}
		})
	}
	return usageError{"unknown owners subcommand " + sub}
}

// cmdTriage: sigil triage list | show KEY | enroll KEY | block KEY |
// dismiss KEY.
func cmdTriage(ctx context.Context, args []string, stdout io.Writer) error {
	sub, args := subcommand(args, "list")
	fs := flag.NewFlagSet("triage "+sub, flag.ContinueOnError)
	af := addAPIFlags(fs)
	all := fs.Bool("all", false, "include decided entries (list)")
	kind := fs.String("kind", "", "only this kind: foreign-certificate, unknown-device, unknown-client, unknown-ek (list)")
	note := fs.String("note", "", "why (enroll, block, dismiss)")
	var key string
	if sub != "list" {
		var err error
		if key, args, err = positional(args, "triage "+sub+" needs an entry key (from sigil triage list)"); err != nil {
			return err
		}
	}
	c, err := af.parse(fs, args)
	if err != nil {
		return err
	}
	switch sub {
	case "list":
		l, err := c.Triage(ctx, !*all, *kind, "", 1000)
		if err != nil {
			return err
		}
		if *af.output == "json" {
			return printJSON(stdout, l)
		}
		tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "KEY\tCOUNT\tLAST SEEN\tFROM\tDECISION\tREASON")
		for _, s := range l.Entries {
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\n", s.Key, s.Count, stamp(s.LastSeen), strings.Join(s.Remotes, ","), s.Decision, s.Reason)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		if l.Stats.Dropped > 0 || l.Stats.Evicted > 0 {
			fmt.Fprintf(stdout, "%d attempts not recorded during floods, %d entries evicted\n", l.Stats.Dropped, l.Stats.Evicted)
		}
		return nil
	case "show":
		sh, err := c.TriageEntry(ctx, key)
		if err != nil {
			return err
		}
		return printJSON(stdout, sh)
	case "enroll", "block", "dismiss":
		sh, err := c.Decide(ctx, key, sub, *note)
		if err != nil {
			return err
		}
		switch governance.Decision(sub) {
		case governance.DecisionBlock:
			fmt.Fprintf(stdout, "%s blocked; see sigil blocks list\n", sh.Key)
		case governance.DecisionEnroll:
			fmt.Fprintf(stdout, "%s may enroll now\n", sh.Key)
		default:
			fmt.Fprintf(stdout, "%s dismissed\n", sh.Key)
		}
		return nil
	}
	return usageError{"unknown triage subcommand " + sub}
}

// cmdBlocks: sigil blocks list | add KIND VALUE | remove KIND VALUE.
func cmdBlocks(ctx context.Context, args []string, stdout io.Writer) error {
	sub, args := subcommand(args, "list")
	fs := flag.NewFlagSet("blocks "+sub, flag.ContinueOnError)
	af := addAPIFlags(fs)
	reason := fs.String("reason", "", "why (add)")
	var kind, value string
	if sub != "list" {
		var err error
		if kind, args, err = positional(args, "blocks "+sub+" needs a kind (client-id, address, ek) and a value"); err != nil {
			return err
		}
		if value, args, err = positional(args, "blocks "+sub+" needs a value"); err != nil {
			return err
		}
	}
	c, err := af.parse(fs, args)
	if err != nil {
		return err
	}
	switch sub {
	case "list":
		l, err := c.Blocks(ctx, "", 1000)
		if err != nil {
			return err
		}
		return af.table(stdout, l, "KIND\tVALUE\tBY\tAT\tREASON", func(tw io.Writer) {
			for _, b := range l.Blocks {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", b.Kind, b.Value, b.By, stamp(b.At), b.Reason)
			}
		})
	case "add":
		if err := c.Block(ctx, kind, value, *reason); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "blocked %s %s\n", kind, value)
		return nil
	case "remove":
		if err := c.Unblock(ctx, kind, value); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "unblocked %s %s\n", kind, value)
		return nil
	}
	return usageError{"unknown blocks subcommand " + sub}
}

// cmdClones: sigil clones [list [--all]] | resolve DEVICE --kind K.
func cmdClones(ctx context.Context, args []string, stdout io.Writer) error {
	sub, args := subcommand(args, "list")
	fs := flag.NewFlagSet("clones "+sub, flag.ContinueOnError)
	af := addAPIFlags(fs)
	all := fs.Bool("all", false, "include resolved incidents (list)")
	kind := fs.String("kind", "", "ek or certificate (resolve)")
	note := fs.String("note", "", "what was found (resolve)")
	var id string
	if sub == "resolve" {
		var err error
		if id, args, err = positional(args, "clones resolve needs a device ID"); err != nil {
			return err
		}
	}
	c, err := af.parse(fs, args)
	if err != nil {
		return err
	}
	switch sub {
	case "list":
		l, err := c.Clones(ctx, *all)
		if err != nil {
			return err
		}
		return af.table(stdout, l, "DEVICE\tKIND\tDETECTED\tHOSTS\tQUARANTINED\tRESOLVED\tEVIDENCE", func(tw io.Writer) {
			for _, x := range l.Clones {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\t%v\t%s\n", x.DeviceID, x.Kind, stamp(x.DetectedAt), strings.Join(x.Hosts, ","), x.Quarantined, x.Resolved, x.Evidence)
			}
		})
	case "resolve":
		if *kind == "" {
			return usageError{"clones resolve needs --kind ek or --kind certificate"}
		}
		if err := c.ResolveClone(ctx, id, *kind, *note); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "clone incident of %s resolved; the device stays quarantined until released\n", id)
		return nil
	}
	return usageError{"unknown clones subcommand " + sub}
}

// cmdRisk: sigil risk [DEVICE]: one device's score now with its factors,
// or the fleet sorted by the stored scores; sigil risk sweep: judge and
// score every device now.
func cmdRisk(ctx context.Context, args []string, stdout io.Writer) error {
	var id string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		id, args = args[0], args[1:]
	}
	if id == "sweep" {
		fs := flag.NewFlagSet("risk sweep", flag.ContinueOnError)
		af := addAPIFlags(fs)
		c, err := af.parse(fs, args)
		if err != nil {
			return err
		}
		return sweep(ctx, c, af, stdout)
	}
	fs := flag.NewFlagSet("risk", flag.ContinueOnError)
	af := addAPIFlags(fs)
	limit := fs.Int("limit", 50, "devices listed (fleet view)")
	c, err := af.parse(fs, args)
	if err != nil {
		return err
	}
	if id != "" {
		r, err := c.Risk(ctx, id)
		if err != nil {
			return err
		}
		if *af.output == "json" {
			return printJSON(stdout, r)
		}
		fmt.Fprintf(stdout, "%s risk %d/100\n", r.DeviceID, r.Score)
		tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "POINTS\tFACTOR\tEVIDENCE")
		for _, f := range r.Factors {
			fmt.Fprintf(tw, "%d\t%s\t%s\n", f.Points, f.Name, f.Evidence)
		}
		return tw.Flush()
	}
	l, err := c.RiskRanking(ctx, "", *limit)
	if err != nil {
		return err
	}
	return af.table(stdout, l, "SCORE\tDEVICE\tTOP FACTORS\tSCORED", func(tw io.Writer) {
		for _, r := range l.Risks {
			var top []string
			for _, f := range r.Factors[:min(3, len(r.Factors))] {
				top = append(top, fmt.Sprintf("%s(%d)", f.Name, f.Points))
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", r.Score, r.DeviceID, strings.Join(top, " "), stamp(r.At))
		}
	})
}

// sweep judges every device now (sigil governance sweep, sigil risk sweep).
func sweep(ctx context.Context, c *api.Client, af apiFlags, stdout io.Writer) error {
	rep, err := c.Sweep(ctx)
	if err != nil {
		return err
	}
	if *af.output == "json" {
		return printJSON(stdout, rep)
	}
	fmt.Fprintf(stdout, "%d devices judged: %d orphaned, %d dormant (%d certificates revoked now), %d new clone incidents, %d scored, %d failed\n",
		rep.Devices, rep.Orphaned, rep.Dormant, rep.Revoked, rep.Clones, rep.Scored, rep.Failed)
	return nil
}

// cmdGovernance: sigil governance sweep | dormant.
func cmdGovernance(ctx context.Context, args []string, stdout io.Writer) error {
	sub, args := subcommand(args, "")
	fs := flag.NewFlagSet("governance "+sub, flag.ContinueOnError)
	af := addAPIFlags(fs)
	c, err := af.parse(fs, args)
	if err != nil {
		return err
	}
	switch sub {
	case "sweep":
		return sweep(ctx, c, af, stdout)
	case "dormant":
		l, err := c.Dormant(ctx, "", 1000)
		if err != nil {
			return err
		}
		return af.table(stdout, l, "DEVICE\tLAST SEEN\tDORMANT SINCE\tREVOKED SERIAL", func(tw io.Writer) {
			for _, st := range l.Devices {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", st.DeviceID, stamp(st.LastSeen), stamp(st.DormantSince), st.RevokedSerial)
			}
		})
	}
	return usageError{"governance needs a subcommand: sweep or dormant"}
}
