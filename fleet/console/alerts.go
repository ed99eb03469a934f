package console

import (
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/sigil-iot/sigil/fleet/alert"
	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/auth"
)

// Alerts reads the alert engine. *alert.Engine implements it.
type Alerts interface {
	Alerts(q alert.Query) ([]alert.Alert, uint64, error)
	DeadLetters(before uint64, limit int) ([]alert.DeadLetter, uint64, error)
	Groups(q alert.Query, by alert.GroupBy) ([]alert.Group, bool, error)
}

var _ Alerts = (*alert.Engine)(nil)

// AlertPages are the alerting pages: open or all alerts, filtered by
// state, severity, rule and device, listed or grouped by rule or device
// (acknowledge one with a note, or many at once: a selection, a group or
// everything the filter shows; resolve), what flood control held back,
// the configured sinks and the dead letters (read only), and the
// overview's open-alerts tile.
type AlertPages struct {
	// Alerts is the alert engine; nil makes an empty Extension.
	Alerts Alerts
	// Sinks are the configured sinks, without their secrets.
	Sinks []api.AlertSink
}

// Limits of the alerts page.
const (
	alertsShown      = 50
	deadLettersShown = 20
	// openCounted bounds the open alerts the overview counts.
	openCounted = 1000
)

// Extension returns the alerts page and the overview tile.
func (a AlertPages) Extension() Extension {
	if a.Alerts == nil {
		return Extension{}
	}
	note := func(form url.Values) (any, error) {
		n, err := optionalNote(form, "note", 1024)
		return api.AlertNote{Note: n}, err
	}
	return Extension{
		Pages: []Page{{Name: "alerts", Path: "/alerts", Nav: "Alerts", Perm: auth.PermAlertsRead, Template: source("alerts.html"),
			Load: a.load, Actions: []Action{
				{Name: "alert.ack", Path: "/alerts/{id}/ack", API: "POST /api/v1/alerts/{id}/ack", Then: "/alerts", Body: note,
					OK: "Acknowledged: the alert stays open until its condition clears or someone resolves it."},
				{Name: "alert.resolve", Path: "/alerts/{id}/resolve", API: "POST /api/v1/alerts/{id}/resolve", Then: "/alerts", Body: note,
					OK: "Resolved: should the condition come back, a new alert fires."},
				{Name: "alert.bulkack", Path: "/alerts/ack", API: "POST /api/v1/alerts/ack", Then: "/alerts", Body: bulkAckBody,
					OK: "Acknowledged: the firing alerts you chose stay open until their conditions clear or someone resolves them."},
			}}},
		Cards: []CardFunc{a.card},
	}
}

// bulkAckBody builds a bulk acknowledgement from the alerts page's form:
// the checked alerts (id), or with scope "filter" every firing alert the
// filter fields select (a group's rule or device, a severity; none: all).
func bulkAckBody(form url.Values) (any, error) {
	note, err := optionalNote(form, "note", 1024)
	if err != nil {
		return nil, err
	}
	req := api.BulkAckRequest{Note: note}
	if form.Get("scope") == "filter" {
		f := api.AlertFilter{Rule: form.Get("f_rule"), Device: form.Get("f_device")}
		if sev := form.Get("f_severity"); sev != "" {
			f.Severity = []string{sev}
		}
		if f.Rule == "" && f.Device == "" && len(f.Severity) == 0 {
			req.All = true
		} else {
			req.Filter = &f
		}
		return req, nil
	}
	for _, v := range form["id"] {
		id, err := strconv.ParseUint(v, 10, 64)
		if err != nil || id == 0 {
			return nil, errUser("the selection holds something that is not an alert")
		}
		req.IDs = append(req.IDs, id)
	}
	if len(req.IDs) == 0 {
		return nil, errUser("select the alerts to acknowledge first")
	}
	if len(req.IDs) > alert.MaxAckIDs {
		return nil, errUser("select at most 1000 alerts, or acknowledge them with the filter")
	}
	return req, nil
}

// AlertRow is an alert as the alerts page lists it.
type AlertRow struct {
	alert.Alert
	// SeverityTone and StateTone colour the badges.
	SeverityTone, StateTone string
	// Evidence is the alert's evidence in key order.
	Evidence [][2]string
}

// AlertsPage is the alerts page's data.
type AlertsPage struct {
	// View is "open" (firing or acknowledged), "all", or a state.
	View   string
	Views  []string
	Device string
	// Severity, Rule and Group are the other filters ("" for any) and the
	// grouping ("", "rule" or "device"); Severities and Groupings their
	// choices; Filtered says a rule, device or severity is chosen.
	Severity, Rule, Group string
	Severities, Groupings []string
	Filtered              bool
	// Groups are the groups when grouped (Truncated: more alerts than
	// counted).
	Groups    []GroupRow
	Truncated bool
	// Floods are the open flood summaries: what flood control held back.
	Floods []FloodRow
	// Firing counts the firing alerts listed (for the bulk buttons).
	Firing int
	Alerts []AlertRow
	// Next links to older alerts; First to the newest.
	Next, First string
	Sinks       []api.AlertSink
	DeadLetters []alert.DeadLetter
	// MoreDeadLetters says there are older dead letters than listed.
	MoreDeadLetters bool
}

func alertRow(x alert.Alert) AlertRow {
	row := AlertRow{Alert: x, SeverityTone: severityTone(x.Severity)}
	switch x.State {
	case alert.StateFiring:
		row.StateTone = "bad"
	case alert.StateAcknowledged:
		row.StateTone = "warn"
	default:
		row.StateTone = "muted"
	}
	for _, k := range slices.Sorted(maps.Keys(x.Evidence)) {
		row.Evidence = append(row.Evidence, [2]string{k, x.Evidence[k]})
	}
	return row
}

func severityTone(s alert.Severity) string {
	switch s {
	case alert.SeverityCritical:
		return "bad"
	case alert.SeverityWarning:
		return "warn"
	}
	return "muted"
}

// GroupRow is a group of alerts as the alerts page shows it.
type GroupRow struct {
	alert.Group
	// Show links to the group's alerts; Firing counts its firing ones.
	Show   string
	Firing int
	// Severities are its counts by severity, most severe first.
	Severities []SeverityCount
}

// FloodRow is an open flood summary as the alerts page shows it.
type FloodRow struct {
	alert.Alert
	Tone string
	// MoreDevices counts the devices concerned beyond those named.
	MoreDevices int
}

// SeverityCount is a count of alerts of one severity.
type SeverityCount struct {
	Severity alert.Severity
	Tone     string
	N        int
}

func (a AlertPages) load(r *http.Request, _ auth.Principal) (any, error) {
	q := r.URL.Query()
	out := AlertsPage{View: q.Get("view"), Device: q.Get("device"), Sinks: a.Sinks,
		Severity: q.Get("severity"), Rule: q.Get("rule"), Group: q.Get("group"),
		Views:      []string{"open", "all", string(alert.StateFiring), string(alert.StateAcknowledged), string(alert.StateResolved)},
		Severities: []string{string(alert.SeverityCritical), string(alert.SeverityWarning), string(alert.SeverityInfo)},
		Groupings:  []string{string(alert.GroupByRule), string(alert.GroupByDevice)}}
	if out.View == "" {
		out.View = "open"
	}
	aq := alert.Query{DeviceID: out.Device, RuleID: out.Rule, Limit: alertsShown}
	if out.Severity != "" {
		if !slices.Contains(out.Severities, out.Severity) {
			return nil, badRequestf("severity must be critical, warning or info")
		}
		aq.Severities = []alert.Severity{alert.Severity(out.Severity)}
	}
	if out.Rule != "" && (len(out.Rule) > 64 || strings.ContainsAny(out.Rule, "\x00\n\r")) {
		return nil, badRequestf("rule must be a rule ID")
	}
	if out.Group != "" && !slices.Contains(out.Groupings, out.Group) {
		return nil, badRequestf("group must be rule or device")
	}
	out.Filtered = out.Device != "" || out.Rule != "" || out.Severity != ""
	switch out.View {
	case "open":
		aq.Open = true
	case "all":
	case string(alert.StateFiring), string(alert.StateAcknowledged), string(alert.StateResolved):
		aq.State = alert.State(out.View)
	default:
		return nil, badRequestf("view must be open, all, firing, acknowledged or resolved")
	}
	if out.Device != "" && !isDeviceID(out.Device) {
		return nil, badRequestf("device must be a device ID")
	}
	floods, _, err := a.Alerts.Alerts(alert.Query{Open: true, Kind: alert.KindFlood, Limit: 20})
	if err != nil {
		return nil, err
	}
	for _, x := range floods {
		if x.Held != nil {
			out.Floods = append(out.Floods, FloodRow{Alert: x, Tone: severityTone(x.Severity), MoreDevices: max(0, x.Held.DeviceCount-len(x.Held.Devices))})
		}
	}
	if out.Group != "" {
		groups, truncated, err := a.Alerts.Groups(aq, alert.GroupBy(out.Group))
		if err != nil {
			return nil, err
		}
		out.Truncated = truncated
		for _, g := range groups {
			row := GroupRow{Group: g, Firing: g.ByState[alert.StateFiring]}
			key := [2]string{"rule", g.Key}
			if out.Group == string(alert.GroupByDevice) {
				key = [2]string{"device", g.Key}
			}
			row.Show = pageLink("/alerts", "view", out.View, "device", out.Device, "rule", out.Rule, "severity", out.Severity, key[0], key[1])
			for _, sev := range []alert.Severity{alert.SeverityCritical, alert.SeverityWarning, alert.SeverityInfo} {
				if n := g.BySeverity[sev]; n > 0 {
					row.Severities = append(row.Severities, SeverityCount{Severity: sev, Tone: severityTone(sev), N: n})
				}
			}
			out.Groups = append(out.Groups, row)
		}
		return a.deadLetters(out)
	}
	if s := q.Get("before"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return nil, badRequestf("before must be an alert ID")
		}
		aq.Before = n
		out.First = pageLink("/alerts", "view", out.View, "device", out.Device, "rule", out.Rule, "severity", out.Severity)
	}
	list, next, err := a.Alerts.Alerts(aq)
	if err != nil {
		return nil, err
	}
	for _, x := range list {
		out.Alerts = append(out.Alerts, alertRow(x))
		if x.State == alert.StateFiring {
			out.Firing++
		}
	}
	if next != 0 {
		out.Next = pageLink("/alerts", "view", out.View, "device", out.Device, "rule", out.Rule, "severity", out.Severity, "before", strconv.FormatUint(next, 10))
	}
	return a.deadLetters(out)
}

// deadLetters adds the newest dead letters to the page.
func (a AlertPages) deadLetters(out AlertsPage) (any, error) {
	dls, more, err := a.Alerts.DeadLetters(0, deadLettersShown)
	if err != nil {
		return nil, err
	}
	out.DeadLetters, out.MoreDeadLetters = dls, more != 0
	return out, nil
}

// card is the overview's open-alerts tile.
func (a AlertPages) card(_ *http.Request, p auth.Principal) ([]Card, error) {
	if !p.Can(auth.PermAlertsRead) {
		return nil, nil
	}
	open, next, err := a.Alerts.Alerts(alert.Query{Open: true, Limit: openCounted})
	if err != nil {
		return nil, err
	}
	var critical, firing, acked int
	for _, x := range open {
		if x.Severity == alert.SeverityCritical {
			critical++
		}
		if x.State == alert.StateAcknowledged {
			acked++
		} else {
			firing++
		}
	}
	c := Card{Title: "Open alerts", Value: strconv.Itoa(len(open)), Link: "/alerts", Tone: "ok",
		Detail: fmt.Sprintf("%d critical · %d firing · %d acknowledged", critical, firing, acked)}
	if next != 0 {
		c.Value = strconv.Itoa(len(open)) + "+"
	}
	switch {
	case critical > 0:
		c.Tone = "bad"
	case len(open) > 0:
		c.Tone = "warn"
	}
	return []Card{c}, nil
}
