package console_test

import (
	"html"
	"net/http"
	"net/url"
	"strconv"
	"testing"

	"github.com/sigil-iot/sigil/fleet/alert"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/inventory"
)

// TestAlertsPage: a threshold rule fires on a device's telemetry in the
// real engine; the overview counts it, the alerts page shows it with its
// evidence; an operator acknowledges it with a note, then resolves it;
// the views filter by state; a viewer sees no forms and is refused by
// the API; sinks and dead letters are listed read-only.
func TestAlertsPage(t *testing.T) {
	ff := newFleetFixture(t, fleetOptions{})
	op := ff.login("olga", auth.RoleOperator)
	viewer := ff.login("vera", auth.RoleViewer)
	d := ff.addDevice(1, inventory.StateActive, nil)

	mustContain(t, body(t, op.get("/"), http.StatusOK), `<span class="card-title">Open alerts</span><span class="card-value">0</span>`)
	if _, err := ff.alerts.PutRule(alert.Rule{ID: "cpu-hot", Name: "CPU hot", Severity: alert.SeverityCritical,
		Threshold: &alert.Threshold{Metric: "cpu.busy", Op: ">", Value: 0.9}}); err != nil {
		t.Fatal(err)
	}
	if err := ff.alerts.Observe(d.ID, ff.clock.Now(), map[string]float64{"cpu.busy": 0.97}, nil); err != nil {
		t.Fatal(err)
	}
	open, _, err := ff.alerts.Alerts(alert.Query{Open: true})
	if err != nil || len(open) != 1 {
		t.Fatalf("open alerts: %d %v", len(open), err)
	}
	a := open[0]
	id := strconv.FormatUint(a.ID, 10)

	mustContain(t, body(t, op.get("/"), http.StatusOK), `<a class="card bad" href="/alerts">`, `<span class="card-value">1</span>`, "1 critical · 1 firing · 0 acknowledged")
	page := body(t, op.get("/alerts"), http.StatusOK)
	mustContain(t, page, "CPU hot", html.EscapeString(a.Summary), `href="/devices/`+d.ID+`"`, ">firing<", `action="/alerts/`+id+`/ack"`, `action="/alerts/`+id+`/resolve"`,
		"ops-webhook", "https://hooks.example/sigil", "Dead letters")
	for k, v := range a.Evidence {
		mustContain(t, page, "<dt>"+html.EscapeString(k)+"</dt><dd>"+html.EscapeString(v)+"</dd>")
	}
	page = body(t, viewer.get("/alerts"), http.StatusOK)
	mustContain(t, page, "CPU hot")
	mustNotContain(t, page, `action="/alerts/`)
	body(t, viewer.post("/alerts/"+id+"/ack", url.Values{"note": {"mine"}}), http.StatusForbidden)

	if to := redirect(t, op.post("/alerts/"+id+"/ack", url.Values{"note": {"looking into it"}})); to != "/alerts?ok=alert.ack" {
		t.Fatalf("redirected to %q", to)
	}
	got, err := ff.alerts.Alert(a.ID)
	if err != nil || got.State != alert.StateAcknowledged || got.AckedBy != "olga" || got.AckNote != "looking into it" {
		t.Fatalf("after ack: %+v %v", got, err)
	}
	page = body(t, op.get("/alerts?ok=alert.ack"), http.StatusOK)
	mustContain(t, page, "Acknowledged: the alert stays open", "acknowledged by olga", "looking into it")
	mustNotContain(t, page, `action="/alerts/`+id+`/ack"`)
	mustContain(t, body(t, op.get("/"), http.StatusOK), "1 critical · 0 firing · 1 acknowledged")

	redirect(t, op.post("/alerts/"+id+"/resolve", url.Values{"note": {"runaway job killed"}}))
	if got, _ := ff.alerts.Alert(a.ID); got.State != alert.StateResolved || got.ResolvedBy != "olga" {
		t.Fatalf("after resolve: %+v", got)
	}
	mustContain(t, body(t, op.get("/alerts"), http.StatusOK), "No open alert.")
	mustContain(t, body(t, op.get("/alerts?view=resolved"), http.StatusOK), "CPU hot", "runaway job killed", "resolved")
	mustContain(t, body(t, op.get("/alerts?view=all&device="+d.ID), http.StatusOK), "CPU hot")
	mustContain(t, body(t, op.get("/alerts?view=all&device="+devID(2)), http.StatusOK), "No alert matches.")
	mustContain(t, body(t, op.post("/alerts/"+id+"/resolve", nil), http.StatusConflict), "already resolved")
	mustContain(t, body(t, op.post("/alerts/"+id+"/ack", url.Values{"note": {string(make([]byte, 2000))}}), http.StatusBadRequest), "at most 1024")
	body(t, op.get("/alerts?view=bogus"), http.StatusBadRequest)
	body(t, op.get("/alerts?before=x"), http.StatusBadRequest)
}

// TestAlertsPaging: more alerts than a page link to the older ones, and
// the pages do not overlap.
func TestAlertsPaging(t *testing.T) {
	ff := newFleetFixture(t, fleetOptions{})
	op := ff.login("olga", auth.RoleOperator)
	if _, err := ff.alerts.PutRule(alert.Rule{ID: "hot", Severity: alert.SeverityWarning,
		Threshold: &alert.Threshold{Metric: "temp", Op: ">", Value: 50}}); err != nil {
		t.Fatal(err)
	}
	for i := range 60 {
		if err := ff.alerts.Observe(devID(i), ff.clock.Now(), map[string]float64{"temp": 70}, nil); err != nil {
			t.Fatal(err)
		}
	}
	first := body(t, op.get("/alerts"), http.StatusOK)
	next := regexpLink(t, first)
	second := body(t, op.get(next), http.StatusOK)
	seen := 0
	for i := range 60 {
		in1, in2 := contains(first, `href="/devices/`+devID(i)+`"`), contains(second, `href="/devices/`+devID(i)+`"`)
		if in1 && in2 {
			t.Errorf("device %d on both pages", i)
		}
		if in1 || in2 {
			seen++
		}
	}
	if seen != 60 {
		t.Errorf("the two pages list %d of 60 alerts", seen)
	}
	mustContain(t, second, `<a href="/alerts?view=open">Newest</a>`)
}
