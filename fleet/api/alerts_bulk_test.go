package api

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/alert"
)

// TestAlertGroupsSeverityAndBulkAck: GET /api/v1/alerts groups by rule or
// device with counts and filters by severity; POST /api/v1/alerts/ack
// acknowledges by IDs, by a group's filter or by severity, and refuses a
// request that names no alerts.
func TestAlertGroupsSeverityAndBulkAck(t *testing.T) {
	srv, e, _ := newAlertAPI(t)
	for _, r := range []string{
		`{"severity":"warning","event":{"kind":"auth-failure"}}`,
		`{"severity":"critical","event":{"kind":"attestation-failed"}}`,
	} {
		var rule alert.Rule
		json.Unmarshal([]byte(r), &rule)
		rule.ID = map[bool]string{true: "logins", false: "attest"}[rule.Severity == alert.SeverityWarning]
		if _, err := e.PutRule(rule); err != nil {
			t.Fatal(err)
		}
	}
	at := time.Unix(1_800_000_000, 0)
	for i := range 4 {
		dev := fmt.Sprintf("dev-%d", i)
		if err := e.Event(dev, alert.EventAuthFailure, "", at, nil); err != nil {
			t.Fatal(err)
		}
		if i < 2 {
			if err := e.Event(dev, alert.EventAttestationFailed, "", at, nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	var l AlertList
	resp, body := call(t, srv, "GET", "/api/v1/alerts?state=open&group_by=rule", token, "")
	if resp.StatusCode != 200 || json.Unmarshal([]byte(body), &l) != nil || l.GroupBy != "rule" || len(l.Groups) != 2 ||
		l.Groups[0].Key != "logins" || l.Groups[0].Count != 4 || l.Groups[0].Devices != 4 || l.Groups[1].Count != 2 ||
		l.Groups[1].BySeverity[alert.SeverityCritical] != 2 {
		t.Fatalf("group by rule: %d %s", resp.StatusCode, body)
	}
	resp, body = call(t, srv, "GET", "/api/v1/alerts?group_by=device", token, "")
	if resp.StatusCode != 200 || json.Unmarshal([]byte(body), &l) != nil || len(l.Groups) != 4 || l.Groups[0].Count != 2 || l.Groups[0].Rules != 2 {
		t.Fatalf("group by device: %d %s", resp.StatusCode, body)
	}
	resp, body = call(t, srv, "GET", "/api/v1/alerts?group_by=owner", token, "")
	wantProblem(t, resp, body, 400, "group_by")
	resp, body = call(t, srv, "GET", "/api/v1/alerts?severity=critical", token, "")
	if resp.StatusCode != 200 || json.Unmarshal([]byte(body), &l) != nil || len(l.Alerts) != 2 || l.Alerts[0].Severity != alert.SeverityCritical {
		t.Fatalf("severity filter: %d %s", resp.StatusCode, body)
	}
	resp, body = call(t, srv, "GET", "/api/v1/alerts?severity=critical,warning", token, "")
	if resp.StatusCode != 200 || json.Unmarshal([]byte(body), &l) != nil || len(l.Alerts) != 6 {
		t.Fatalf("two severities: %d %s", resp.StatusCode, body)
	}
	resp, body = call(t, srv, "GET", "/api/v1/alerts?severity=loud", token, "")
	wantProblem(t, resp, body, 400, "severity")

	var rep alert.AckReport
	resp, body = call(t, srv, "POST", "/api/v1/alerts/ack", token, fmt.Sprintf(`{"ids":[%d],"note":"mine"}`, l.Alerts[0].ID))
	if resp.StatusCode != 200 || json.Unmarshal([]byte(body), &rep) != nil || rep.Acknowledged != 1 {
		t.Fatalf("ack by id: %d %s", resp.StatusCode, body)
	}
	resp, body = call(t, srv, "POST", "/api/v1/alerts/ack", token, `{"filter":{"rule":"logins"}}`)
	if resp.StatusCode != 200 || json.Unmarshal([]byte(body), &rep) != nil || rep.Acknowledged != 3 { // the newest, a login alert, was acknowledged by ID
		t.Fatalf("ack by group: %d %s", resp.StatusCode, body)
	}
	resp, body = call(t, srv, "POST", "/api/v1/alerts/ack", token, `{"filter":{"severity":["critical"]}}`)
	if resp.StatusCode != 200 || json.Unmarshal([]byte(body), &rep) != nil || rep.Acknowledged != 2 {
		t.Fatalf("ack by severity: %d %s", resp.StatusCode, body)
	}
	resp, body = call(t, srv, "GET", "/api/v1/alerts?state=firing", token, "")
	if resp.StatusCode != 200 || json.Unmarshal([]byte(body), &l) != nil || len(l.Alerts) != 0 {
		t.Fatalf("still firing: %s", body)
	}
	for _, bad := range []string{`{}`, `{"filter":{}}`, `{"ids":[1],"filter":{"rule":"x"}}`, `{"filter":{"severity":["loud"]}}`} {
		resp, body = call(t, srv, "POST", "/api/v1/alerts/ack", token, bad)
		if resp.StatusCode != 400 {
			t.Errorf("bulk ack %s: %d %s", bad, resp.StatusCode, body)
		}
	}
	resp, body = call(t, srv, "POST", "/api/v1/alerts/ack", token, `{"all":true}`)
	if resp.StatusCode != 200 {
		t.Fatalf("ack all: %d %s", resp.StatusCode, body)
	}
}
