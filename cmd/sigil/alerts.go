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
	"github.com/sigil-iot/sigil/fleet/telemetry"
	"github.com/sigil-iot/sigil/pkg/config"
)

// alertsCommand is `sigil alerts list | show ID | ack ID | resolve ID |
// rules [list | put FILE | delete ID] | deadletters | redrive (ID | --all)
// | sinks`.
func alertsCommand() *command {
	const id = "an alert ID"
	// alertAction shows, acknowledges or resolves one alert.
	alertAction := func(verb string) func(fs *flag.FlagSet) action {
		return func(fs *flag.FlagSet) action {
			var note *string
			if verb != "show" {
				note = fs.String("note", "", "note recorded with the "+map[string]string{"ack": "acknowledgement", "resolve": "resolution"}[verb])
			}
			return func(ctx context.Context, x *call) error {
				id, err := alertArgs(x, true)
				if err != nil {
					return err
				}
				var a *alert.Alert
				switch verb {
				case "show":
					a, err = x.client.Alert(ctx, id)
				case "ack":
					a, err = x.client.AckAlert(ctx, id, *note)
				default:
					a, err = x.client.ResolveAlert(ctx, id, *note)
				}
				if err != nil {
					return err
				}
				return x.either(a, func() {
					if verb == "show" {
						printAlert(x.stdout, a)
					} else {
						x.printf("alert %d %s\n", a.ID, a.State)
					}
				})
			}
		}
	}
	return &command{name: "alerts", summary: "alerts raised by rules on telemetry and events, their rules, sinks and dead letters", def: "list", subs: []*command{
		{name: "list", args: "[--device ID] [--rule R] [--state firing|acknowledged|resolved|open] [--limit N] [--before ID] [-o json]",
			summary: "list alerts, newest first", conn: connClient,
			setup: func(fs *flag.FlagSet) action {
				device := fs.String("device", "", "only this device's alerts")
				rule := fs.String("rule", "", "only this rule's alerts")
				state := fs.String("state", "", "firing, acknowledged, resolved or open")
				limit := fs.Int("limit", 50, "page size, at most 1000")
				before := fs.Uint64("before", 0, "page cursor: the next value a previous page printed")
				return func(ctx context.Context, x *call) error {
					if _, err := alertArgs(x, false); err != nil {
						return err
					}
					l, err := x.client.Alerts(ctx, api.AlertQuery{DeviceID: *device, RuleID: *rule, State: *state, Before: *before, Limit: *limit})
					if err != nil {
						return err
					}
					if x.jsonOut() {
						return x.json(l)
					}
					err = x.plainTable("ID\tSTATE\tSEVERITY\tRULE\tDEVICE\tKEY\tCOUNT\tSTARTED\tSUMMARY", func(tw io.Writer) {
						for _, a := range l.Alerts {
							fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", a.ID, a.State, a.Severity, a.RuleID, a.DeviceID, a.Key, a.Count,
								rfc3339(a.StartsAt), a.Summary)
						}
					})
					return x.more(err, l.Next)
				}
			}},
		{name: "show", args: "ID [-o json]", summary: "show an alert with its evidence", conn: connClient, pos: []string{id}, setup: alertAction("show")},
		{name: "ack", args: "ID [--note T] [-o json]", summary: "acknowledge an alert", conn: connClient, pos: []string{id}, setup: alertAction("ack")},
		{name: "resolve", args: "ID [--note T] [-o json]", summary: "resolve an alert", conn: connClient, pos: []string{id}, setup: alertAction("resolve")},
		{name: "rules", summary: "the alert rules", def: "list", subs: []*command{
			{name: "list", args: "[-o json]", summary: "list the alert rules", conn: connClient,
				run: func(ctx context.Context, x *call) error {
					if _, err := alertArgs(x, false); err != nil {
						return err
					}
					l, err := x.client.AlertRules(ctx)
					if err != nil {
						return err
					}
					return x.table(l, "ID\tKIND\tSEVERITY\tACTION\tENABLED\tNAME", func(tw io.Writer) {
						for _, r := range l.Rules {
							fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\t%s\n", r.ID, r.Kind(), r.Severity, r.Action, !r.Disabled, r.Name)
						}
					})
				}},
			{name: "put", args: "FILE [-o json]", summary: "store a rule from a JSON file", conn: connClient, pos: []string{"a rule file (JSON)"},
				run: func(ctx context.Context, x *call) error {
					if len(x.args) > 1 {
						return usageError{"unexpected argument " + strconv.Quote(x.args[1])}
					}
					var r alert.Rule
					if err := config.Load(x.arg(0), &r); err != nil {
						return err
					}
					stored, err := x.client.PutAlertRule(ctx, r)
					if err != nil {
						return err
					}
					return x.either(stored, func() {
						x.printf("rule %s stored (%s, %s)\n", stored.ID, stored.Kind(), stored.Severity)
					})
				}},
			{name: "delete", args: "ID", summary: "delete a rule; its open alerts are resolved", conn: connClient, pos: []string{"a rule ID"},
				run: func(ctx context.Context, x *call) error {
					if len(x.args) > 1 {
						return usageError{"unexpected argument " + strconv.Quote(x.args[1])}
					}
					if err := x.client.DeleteAlertRule(ctx, x.arg(0)); err != nil {
						return err
					}
					x.printf("rule %s deleted; its open alerts are resolved\n", x.arg(0))
					return nil
				}},
		}},
		{name: "deadletters", args: "[--limit N] [--before ID] [-o json]", summary: "list notifications no sink accepted", conn: connClient,
			setup: func(fs *flag.FlagSet) action {
				limit := fs.Int("limit", 50, "page size, at most 1000")
				before := fs.Uint64("before", 0, "page cursor: the next value a previous page printed")
				return func(ctx context.Context, x *call) error {
					if _, err := alertArgs(x, false); err != nil {
						return err
					}
					l, err := x.client.DeadLetters(ctx, *before, *limit)
					if err != nil {
						return err
					}
					if x.jsonOut() {
						return x.json(l)
					}
					err = x.plainTable("ID\tSINK\tALERT\tTRANSITION\tATTEMPTS\tAT\tERROR", func(tw io.Writer) {
						for _, d := range l.DeadLetters {
							fmt.Fprintf(tw, "%d\t%s\t%d\t%s\t%d\t%s\t%s\n", d.ID, d.Route, d.Notification.Alert.ID, d.Notification.Transition, d.Attempts, rfc3339(d.At), d.Error)
						}
					})
					return x.more(err, l.Next)
				}
			}},
		{name: "redrive", args: "(ID | --all [--route SINK])", summary: "queue dead letters again", conn: connClient, opt: true,
			setup: func(fs *flag.FlagSet) action {
				all := fs.Bool("all", false, "re-drive every dead letter")
				route := fs.String("route", "", "with --all: only this sink's dead letters")
				return func(ctx context.Context, x *call) error {
					id, err := alertArgs(x, len(x.args) > 0)
					if err != nil {
						return err
					}
					if (id == 0) == !*all {
						return usageError{"alerts redrive needs a dead letter ID or --all"}
					}
					if *all {
						n, err := x.client.RedriveAll(ctx, *route)
						if err != nil {
							return err
						}
						x.printf("%d dead letters queued again\n", n)
						return nil
					}
					if err := x.client.Redrive(ctx, id); err != nil {
						return err
					}
					x.printf("dead letter %d queued again\n", id)
					return nil
				}
			}},
		{name: "sinks", args: "[-o json]", summary: "list where alerts are sent", conn: connClient,
			run: func(ctx context.Context, x *call) error {
				if _, err := alertArgs(x, false); err != nil {
					return err
				}
				l, err := x.client.AlertSinks(ctx)
				if err != nil {
					return err
				}
				return x.table(l, "NAME\tTYPE\tTARGET\tMIN SEVERITY\tSIGNED", func(tw io.Writer) {
					for _, s := range l.Sinks {
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\n", s.Name, s.Type, s.Target, s.MinSeverity, s.Signed)
					}
				})
			}},
	}}
}

// alertArgs checks an alerts command's arguments: with withID, the first
// is an alert or dead letter ID (a positive number); nothing else.
func alertArgs(x *call, withID bool) (uint64, error) {
	n := 0
	if withID {
		n = 1
	}
	if len(x.args) > n {
		return 0, usageError{"unexpected argument " + strconv.Quote(x.args[n])}
	}
	if !withID {
		return 0, nil
	}
	id, err := strconv.ParseUint(x.args[0], 10, 64)
	if err != nil || id == 0 {
		return 0, usageError{"an alert or dead letter ID is a positive number, not " + strconv.Quote(x.args[0])}
	}
	return id, nil
}

// more ends a page: after a table written without error, the cursor of the
// next page, if any.
func (x *call) more(err error, next uint64) error {
	if err == nil && next != 0 {
		x.printf("more: --before %d\n", next)
	}
	return err
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

// telemetryCommand is `sigil telemetry DEVICE [--metric M [--since D]]`.
func telemetryCommand() *command {
	return &command{name: "telemetry", args: "DEVICE [--metric M [--since 1h]] [-o json]", summary: "a device's latest telemetry, or one metric's series",
		conn: connClient, pos: []string{"a device ID"},
		setup: func(fs *flag.FlagSet) action {
			metric := fs.String("metric", "", "print this charted metric's series (e.g. cpu.busy)")
			since := fs.Duration("since", time.Hour, "with --metric: how far back")
			return func(ctx context.Context, x *call) error {
				if *since <= 0 {
					return usageError{"--since must be positive"}
				}
				if *metric != "" {
					s, err := x.client.TelemetrySeries(ctx, x.arg(0), *metric, *since)
					if err != nil {
						return err
					}
					return x.table(s, "TIME\tVALUE\tMIN\tMAX\tPOINTS", func(tw io.Writer) {
						for _, p := range s.Samples {
							fmt.Fprintf(tw, "%s\t%g\t%g\t%g\t%d\n", rfc3339(p.Time), p.Value, p.Min, p.Max, p.Count)
						}
					})
				}
				st, err := x.client.Telemetry(ctx, x.arg(0))
				if err != nil {
					return err
				}
				if x.jsonOut() {
					return x.json(st)
				}
				return printTelemetry(x, st)
			}
		}}
}

// printTelemetry writes a device's telemetry status.
func printTelemetry(x *call, st *telemetry.DeviceStatus) error {
	x.printf("device %s: last batch %s, newest point %s\n", st.DeviceID, rfc3339(st.LastSeen), rfc3339(st.LastPoint))
	n := st.Counts
	x.printf("points: %d stored, %d dropped by the device's outbox, %d rejected, %d duplicates skipped; %d reboots\n",
		n.Ingested, n.Dropped, n.Rejected, n.Duplicates, n.Reboots)
	err := x.plainTable("METRIC\tVALUE", func(tw io.Writer) {
		for _, k := range sortedKeys(st.Metrics) {
			fmt.Fprintf(tw, "%s\t%g\n", k, st.Metrics[k])
		}
		for _, k := range sortedKeys(st.Sets) {
			fmt.Fprintf(tw, "%s\t%s\n", k, strings.Join(st.Sets[k], " "))
		}
		for _, k := range sortedKeys(st.Info) {
			fmt.Fprintf(tw, "%s\t%s\n", k, st.Info[k])
		}
	})
	if err != nil {
		return err
	}
	if len(st.Charted) > 0 {
		x.printf("charted (--metric): %s\n", strings.Join(st.Charted, ", "))
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
