package console

import (
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"

	"github.com/sigil-iot/sigil/fleet/alert"
	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/auth"
)

// Alerts reads the alert engine. *alert.Engine implements it.
type Alerts interface {
	Alerts(q alert.Query) ([]alert.Alert, uint64, error)
	DeadLetters(before uint64, limit int) ([]alert.DeadLetter, uint64, error)
}

var _ Alerts = (*alert.Engine)(nil)

// AlertPages are the alerting pages: open or all alerts (acknowledge with
// a note, resolve), the configured sinks and the dead letters (read only),
// and the overview's open-alerts tile.
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
			}}},
		Cards: []CardFunc{a.card},
	}
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

func (a AlertPages) load(r *http.Request, _ auth.Principal) (any, error) {
	q := r.URL.Query()
	out := AlertsPage{View: q.Get("view"), Device: q.Get("device"), Sinks: a.Sinks,
		Views: []string{"open", "all", string(alert.StateFiring), string(alert.StateAcknowledged), string(alert.StateResolved)}}
	if out.View == "" {
		out.View = "open"
	}
	aq := alert.Query{DeviceID: out.Device, Limit: alertsShown}
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
	if s := q.Get("before"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return nil, badRequestf("before must be an alert ID")
		}
		aq.Before = n
		out.First = pageLink("/alerts", "view", out.View, "device", out.Device)
	}
	list, next, err := a.Alerts.Alerts(aq)
	if err != nil {
		return nil, err
	}
	for _, x := range list {
		out.Alerts = append(out.Alerts, alertRow(x))
	}
	if next != 0 {
		out.Next = pageLink("/alerts", "view", out.View, "device", out.Device, "before", strconv.FormatUint(next, 10))
	}
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
