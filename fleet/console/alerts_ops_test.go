package console_test

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/alert"
	"github.com/sigil-iot/sigil/fleet/auth"
)

// TestAlertsGroupFilterBulkAckAndFlood: a flood of events from many
// devices under a per-rule limit shows the alerts that opened and, at the
// top, what flood control held back (rule, count, devices, window); the
// alerts group by rule and by device with their counts and filter by
// severity; an operator acknowledges a selection, a group and everything
// a filter selects; a viewer gets no bulk form and is refused.
func TestAlertsGroupFilterBulkAckAndFlood(t *testing.T) {
	ff := newFleetFixture(t, fleetOptions{flood: alert.Flood{Window: time.Hour, PerRule: 10}})
	op := ff.login("olga", auth.RoleOperator)
	viewer := ff.login("vera", auth.RoleViewer)
	for _, r := range []alert.Rule{
		{ID: "logins", Name: "Failed logins", Severity: alert.SeverityWarning, Event: &alert.EventMatch{Kind: alert.EventAuthFailure}},
		{ID: "attest", Name: "Attestation failed", Severity: alert.SeverityCritical, Event: &alert.EventMatch{Kind: alert.EventAttestationFailed}},
	} {
		if _, err := ff.alerts.PutRule(r); err != nil {
			t.Fatal(err)
		}
	}
	at := ff.clock.Now()
	for i := range 30 { // 10 open, 20 held
		if err := ff.alerts.Event(devID(i), alert.EventAuthFailure, "", at, nil); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3 {
		if err := ff.alerts.Event(devID(i), alert.EventAttestationFailed, "", at, nil); err != nil {
			t.Fatal(err)
		}
	}

	page := body(t, op.get("/alerts"), http.StatusOK)
	flood := panelOf(t, page, "Flood control held alerts back")
	mustContain(t, flood, "Failed logins", "held back 20 new alerts of rule logins from 20 devices", "limit: 10 new alerts per rule",
		`href="/devices/`+devID(10)+`"`, `href="/alerts?rule=logins"`)
	mustContain(t, page, `action="/alerts/ack"`, "Acknowledge selected", `form="bulk-ack"`, `name="id" value="`)
	checkForms(t, "/alerts", page)
	for _, v := range cspViolations(page) {
		t.Errorf("/alerts: %s", v)
	}

	// Grouped by rule: counts, severities, held.
	page = body(t, op.get("/alerts?group=rule"), http.StatusOK)
	groups := panelOf(t, page, "Open alerts by rule")
	mustContain(t, groups, "Failed logins", "Attestation failed", ">11</a>", "11 firing", "+ 20 held back", ">3</a>", "3 critical",
		`href="/alerts?rule=logins&amp;view=open"`)
	checkForms(t, "/alerts?group=rule", page)
	page = body(t, op.get("/alerts?group=device"), http.StatusOK)
	mustContain(t, panelOf(t, page, "Open alerts by device"), `href="/devices/`+devID(0)+`"`, ">2</a>", "fleet-wide (flood summaries)")
	body(t, op.get("/alerts?group=owner"), http.StatusBadRequest)

	// Filtered by severity.
	page = body(t, op.get("/alerts?severity=critical"), http.StatusOK)
	list := panelOf(t, page, "Open alerts")
	if n := strings.Count(list, "<tr>") - 1; n != 3 {
		t.Fatalf("%d critical alerts listed, want 3", n)
	}
	mustNotContain(t, list, "Failed logins")
	body(t, op.get("/alerts?severity=loud"), http.StatusBadRequest)

	// A viewer: no bulk form, refused.
	vpage := body(t, viewer.get("/alerts"), http.StatusOK)
	mustNotContain(t, vpage, `action="/alerts/ack"`, `form="bulk-ack"`)
	body(t, viewer.post("/alerts/ack", url.Values{"scope": {"filter"}}), http.StatusForbidden)

	// Bulk acknowledge a selection.
	crit, _, err := ff.alerts.Alerts(alert.Query{Open: true, Severities: []alert.Severity{alert.SeverityCritical}})
	if err != nil || len(crit) != 3 {
		t.Fatal(crit, err)
	}
	sel := url.Values{"scope": {"selected"}, "note": {"bench rack rebooted"}, "id": {strconv.FormatUint(crit[0].ID, 10), strconv.FormatUint(crit[1].ID, 10)}}
	if to := redirect(t, op.post("/alerts/ack", sel)); to != "/alerts?ok=alert.bulkack" {
		t.Fatalf("redirected to %q", to)
	}
	for _, a := range crit[:2] {
		if got, _ := ff.alerts.Alert(a.ID); got.State != alert.StateAcknowledged || got.AckedBy != "olga" || got.AckNote != "bench rack rebooted" {
			t.Fatalf("selected alert after bulk ack: %+v", got)
		}
	}
	if got, _ := ff.alerts.Alert(crit[2].ID); got.State != alert.StateFiring {
		t.Fatalf("an unselected alert was acknowledged: %+v", got)
	}
	mustContain(t, body(t, op.get("/alerts?ok=alert.bulkack"), http.StatusOK), "Acknowledged: the firing alerts you chose")
	body(t, op.post("/alerts/ack", url.Values{"scope": {"selected"}}), http.StatusBadRequest)

	// A group: the rule's firing alerts.
	redirect(t, op.post("/alerts/ack", url.Values{"scope": {"filter"}, "f_rule": {"logins"}}))
	firing, _, err := ff.alerts.Alerts(alert.Query{State: alert.StateFiring, RuleID: "logins", Limit: 100})
	if err != nil || len(firing) != 0 {
		t.Fatalf("logins still firing after its group was acknowledged: %d %v", len(firing), err)
	}
	// The filter: every firing critical alert.
	redirect(t, op.post("/alerts/ack", url.Values{"scope": {"filter"}, "f_severity": {"critical"}}))
	if got, _ := ff.alerts.Alert(crit[2].ID); got.State != alert.StateAcknowledged {
		t.Fatalf("the filter's alert: %+v", got)
	}
	all, _, _ := ff.alerts.Alerts(alert.Query{State: alert.StateFiring, Limit: 1000})
	if len(all) != 0 {
		t.Fatalf("%d alerts still firing: %v", len(all), fmt.Sprint(all[0].RuleID))
	}
}
