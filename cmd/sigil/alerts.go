package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sigil-iot/sigil/fleet/alert"
	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/pkg/config"
)

// cmdAlerts: sigil alerts list | show ID | ack ID | resolve ID |
// rules [put FILE | delete ID] | deadletters | redrive (ID | --all) | sinks.
func cmdAlerts(ctx context.Context, args []string, stdout io.Writer) error {
	sub, args := subcommand(args, "list")
	fs := flag.NewFlagSet("alerts "+sub, flag.ContinueOnError)
	af := addAPIFlags(fs)
	device := fs.String("device", "", "only this device's alerts (list)")
	rule := fs.String("rule", "", "only this rule's alerts (list)")
	state := fs.String("state", "", "firing, acknowledged, resolved or open (list)")
	limit := fs.Int("limit", 50, "page size, at most 1000 (list, deadletters)")
	before := fs.Uint64("before", 0, "page cursor: the next value a previous page printed (list, deadletters)")
	note := fs.String("note", "", "note recorded with the acknowledgement or resolution (ack, resolve)")
	all := fs.Bool("all", false, "re-drive every dead letter (redrive)")
	route := fs.String("route", "", "with --all: only this sink's dead letters (redrive)")
	var arg, action string
	switch sub {
	case "show", "ack", "resolve":
		var err error
		if arg, args, err = positional(args, "alerts "+sub+" needs an alert ID"); err != nil {
			return err
		}
	case "redrive":
		if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
			arg, args = args[0], args[1:]
		}
	case "rules":
		action, args = subcommand(args, "list")
		if action == "put" || action == "delete" {
			var err error
			if arg, args, err = positional(args, "alerts rules "+action+" needs a "+map[string]string{"put": "rule file (JSON)", "delete": "rule ID"}[action]); err != nil {
				return err
			}
		} else if action != "list" {
			return usageError{"alerts rules takes list, put FILE or delete ID"}
		}
	case "list", "deadletters", "sinks":
	default:
		return usageError{"unknown alerts command " + strconv.Quote(sub)}
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError{"unexpected argument " + strconv.Quote(fs.Arg(0))}
	}
	var id uint64
	if arg != "" && sub != "rules" {
		var err error
		if id, err = strconv.ParseUint(arg, 10, 64); err != nil || id == 0 {
			return usageError{"an alert or dead letter ID is a positive number, not " + strconv.Quote(arg)}
		}
	}
	if sub == "redrive" && (id == 0) == !*all {
		return usageError{"alerts redrive needs a dead letter ID or --all"}
	}
	c, err := af.client()
	if err != nil {
		return err
	}
	jsonOut := *af.output == "json"
	switch sub {
	case "list":
		l, err := c.Alerts(ctx, api.AlertQuery{DeviceID: *device, RuleID: *rule, State: *state, Before: *before, Limit: *limit})
		if err != nil {
			return err
		}
		if jsonOut {
			return printJSON(stdout, l)
		}
		tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tSTATE\tSEVERITY\tRULE\tDEVICE\tKEY\tCOUNT\tSTARTED\tSUMMARY")
		for _, a := range l.Alerts {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", a.ID, a.State, a.Severity, a.RuleID, a.DeviceID, a.Key, a.Count,
				a.StartsAt.Format(time.RFC3339), a.Summary)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		if l.Next != 0 {
			fmt.Fprintf(stdout, "more: --before %d\n", l.Next)
		}
		return nil
	case "show":
		a, err := c.Alert(ctx, id)
		if err != nil {
			return err
		}
		if jsonOut {
			return printJSON(stdout, a)
		}
		printAlert(stdout, a)
		return nil
	case "ack", "resolve":
		var a *alert.Alert
		if sub == "ack" {
			a, err = c.AckAlert(ctx, id, *note)
		} else {
			a, err = c.ResolveAlert(ctx, id, *note)
		}
		if err != nil {
			return err
		}
		if jsonOut {
			return printJSON(stdout, a)
		}
		fmt.Fprintf(stdout, "alert %d %s\n", a.ID, a.State)
		return nil
	case "rules":
		return alertRules(ctx, c, action, arg, jsonOut, stdout)
	case "deadletters":
		l, err := c.DeadLetters(ctx, *before, *limit)
		if err != nil {
			return err
		}
		if jsonOut {
			return printJSON(stdout, l)
		}
		tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tSINK\tALERT\tTRANSITION\tATTEMPTS\tAT\tERROR")
		for _, d := range l.DeadLetters {
			fmt.Fprintf(tw, "%d\t%s\t%d\t%s\t%d\t%s\t%s\n", d.ID, d.Route, d.Notification.Alert.ID, d.Notification.Transition, d.Attempts, d.At.Format(time.RFC3339), d.Error)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		if l.Next != 0 {
			fmt.Fprintf(stdout, "more: --before %d\n", l.Next)
		}
		return nil
	case "redrive":
		if *all {
			n, err := c.RedriveAll(ctx, *route)
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "%d dead letters queued again\n", n)
			return nil
		}
		if err := c.Redrive(ctx, id); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "dead letter %d queued again\n", id)
		return nil
	case "sinks":
		l, err := c.AlertSinks(ctx)
		if err != nil {
			return err
		}
		if jsonOut {
			return printJSON(stdout, l)
		}
		tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tTYPE\tTARGET\tMIN SEVERITY\tSIGNED")
		for _, s := range l.Sinks {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\n", s.Name, s.Type, s.Target, s.MinSeverity, s.Signed)
		}
		return tw.Flush()
	}
	return nil
}

func alertRules(ctx context.Context, c *api.Client, action, arg string, jsonOut bool, stdout io.Writer) error {
	switch action {
	case "put":
		var r alert.Rule
		if err := config.Load(arg, &r); err != nil {
			return err
		}
		stored, err := c.PutAlertRule(ctx, r)
		if err != nil {
			return err
		}
		if jsonOut {
			return printJSON(stdout, stored)
		}
		fmt.Fprintf(stdout, "rule %s stored (%s, %s)\n", stored.ID, stored.Kind(), stored.Severity)
		return nil
	case "delete":
		if err := c.DeleteAlertRule(ctx, arg); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "rule %s deleted; its open alerts are resolved\n", arg)
		return nil
	}
	l, err := c.AlertRules(ctx)
	if err != nil {
		return err
	}
	if jsonOut {
		return printJSON(stdout, l)
	}
	tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tKIND\tSEVERITY\tACTION\tENABLED\tNAME")
	for _, r := range l.Rules {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\t%s\n", r.ID, r.Kind(), r.Severity, r.Action, !r.Disabled, r.Name)
	}
	return tw.Flush()
}

func printAlert(w io.Writer, a *alert.Alert) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(tw, "%s:\t%s\n", k, v)
		}
	}
	row("alert", strconv.FormatUint(a.ID, 10))
	row("state", string(a.State))
	row("severity", string(a.Severity))
	row("rule", a.RuleID+" ("+a.RuleName+", "+string(a.Kind)+")")
	row("device", a.DeviceID)
	row("key", a.Key)
	row("summary", a.Summary)
	row("started", a.StartsAt.Format(time.RFC3339))
	row("last fired", a.LastFiredAt.Format(time.RFC3339)+" ("+strconv.Itoa(a.Count)+" firings)")
	if a.Action != "" {
		res := "done"
		if a.ActionError != "" {
			res = "failed: " + a.ActionError
		}
		row("action", string(a.Action)+" "+res)
	}
	if a.AckedBy != "" {
		row("acknowledged", a.AckedBy+" at "+a.AckedAt.Format(time.RFC3339)+" "+a.AckNote)
	}
	if !a.ResolvedAt.IsZero() {
		by := a.ResolvedBy
		if by == "" {
			by = "condition cleared"
		}
		row("resolved", a.ResolvedAt.Format(time.RFC3339)+" by "+by+" "+a.ResolveNote)
	}
	keys := make([]string, 0, len(a.Evidence))
	for k := range a.Evidence {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		row("evidence "+k, a.Evidence[k])
	}
	tw.Flush()
}

// cmdTelemetry: sigil telemetry DEVICE [--metric M [--since D]].
func cmdTelemetry(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("telemetry", flag.ContinueOnError)
	af := addAPIFlags(fs)
	metric := fs.String("metric", "", "print this charted metric's series (e.g. cpu.busy)")
	since := fs.Duration("since", time.Hour, "with --metric: how far back")
	id, args, err := positional(args, "telemetry needs a device ID")
	if err != nil {
		return err
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *since <= 0 {
		return usageError{"--since must be positive"}
	}
	c, err := af.client()
	if err != nil {
		return err
	}
	jsonOut := *af.output == "json"
	if *metric != "" {
		s, err := c.TelemetrySeries(ctx, id, *metric, *since)
		if err != nil {
			return err
		}
		if jsonOut {
			return printJSON(stdout, s)
		}
		tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "TIME\tVALUE\tMIN\tMAX\tPOINTS")
		for _, p := range s.Samples {
			fmt.Fprintf(tw, "%s\t%g\t%g\t%g\t%d\n", p.Time.Format(time.RFC3339), p.Value, p.Min, p.Max, p.Count)
		}
		return tw.Flush()
	}
	st, err := c.Telemetry(ctx, id)
	if err != nil {
		return err
	}
	if jsonOut {
		return printJSON(stdout, st)
	}
	fmt.Fprintf(stdout, "device %s: last batch %s, newest point %s\n", st.DeviceID, st.LastSeen.Format(time.RFC3339), st.LastPoint.Format(time.RFC3339))
	n := st.Counts
	fmt.Fprintf(stdout, "points: %d stored, %d dropped by the device's outbox, %d rejected, %d duplicates skipped; %d reboots\n",
		n.Ingested, n.Dropped, n.Rejected, n.Duplicates, n.Reboots)
	tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "METRIC\tVALUE")
	for _, k := range sortedKeys(st.Metrics) {
		fmt.Fprintf(tw, "%s\t%g\n", k, st.Metrics[k])
	}
	for _, k := range sortedKeys(st.Sets) {
		fmt.Fprintf(tw, "%s\t%s\n", k, strings.Join(st.Sets[k], " "))
	}
	for _, k := range sortedKeys(st.Info) {
		fmt.Fprintf(tw, "%s\t%s\n", k, st.Info[k])
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(st.Charted) > 0 {
		fmt.Fprintf(stdout, "charted (--metric): %s\n", strings.Join(st.Charted, ", "))
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
