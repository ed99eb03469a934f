package console_test

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/sigil-iot/sigil/fleet/alert"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/campaign"
	"github.com/sigil-iot/sigil/fleet/inventory"
)

// TestExtensionPagesCSP: the campaigns, releases, alerts, approvals,
// audit and risk pages and the device sections hold nothing the
// Content-Security-Policy forbids, with hostile text in every field an
// operator or a device controls, for the role that sees every form; every
// form carries the CSRF token and every input a label.
func TestExtensionPagesCSP(t *testing.T) {
	ff := newFleetFixture(t, fleetOptions{})
	admin := ff.login("ada", auth.RoleAdmin)
	ff.login("sam", auth.RoleSecurityAdmin)
	const evil = `"><script>alert(1)</script>`
	d := ff.addDevice(1, inventory.StateActive, func(d *inventory.Device) { d.Group, d.Owner, d.Firmware = "kiosks", evil, evil })
	rel := ff.approved("rita", "ravi", "2.0.0", 2)
	ff.upload("sam", "2.0.1", 2)
	c, err := ff.campaigns.Create(context.Background(), campaign.Definition{Name: evil, Release: rel.ID, Targets: campaign.Selector{Group: "kiosks"}}, "ada", evil)
	if err != nil {
		t.Fatal(err)
	}
	if err := ff.campaigns.Start(c.ID, ff.clock.Now(), "ada", evil); err != nil {
		t.Fatal(err)
	}
	awaitAnnounced(t, ff, c.ID)
	if _, err := ff.alerts.PutRule(alert.Rule{ID: "evil", Name: evil, Description: evil, Severity: alert.SeverityWarning,
		Threshold: &alert.Threshold{Metric: "x", Op: ">", Value: 1}}); err != nil {
		t.Fatal(err)
	}
	if err := ff.alerts.Observe(d.ID, ff.clock.Now(), map[string]float64{"x": 2}, nil); err != nil {
		t.Fatal(err)
	}
	if resp := ff.apiAs("sam", auth.RoleSecurityAdmin, http.MethodPost, "/api/v1/ca/prepare", nil, evil); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("filing a request: %d", resp.StatusCode)
	}
	redirect(t, admin.post("/devices/"+d.ID+"/edit", url.Values{"owner": {evil}}))
	ff.ingest(d.ID, make([]byte, 16), 1, []map[string]float64{{"cpu.busy": 0.5}, {"cpu.busy": 0.6}}, 0)

	for _, path := range []string{"/", "/campaigns", "/campaigns/" + c.ID, "/releases", "/alerts", "/alerts?view=all", "/approvals",
		"/audit", "/audit?target=" + url.QueryEscape(evil), "/risk", "/devices/" + d.ID} {
		page := body(t, admin.get(path), http.StatusOK)
		for _, v := range cspViolations(page) {
			t.Errorf("%s: %s", path, v)
		}
		if strings.Contains(page, "<script>alert(1)") {
			t.Errorf("%s: hostile text was not escaped", path)
		}
		checkForms(t, path, page)
	}
}

// checkForms: every post form carries the CSRF field, and every visible
// input, select and textarea has a label.
func checkForms(t *testing.T, path, page string) {
	t.Helper()
	for _, form := range strings.Split(page, "<form")[1:] {
		form = form[:strings.Index(form, "</form>")]
		if strings.Contains(form, `method="post"`) && !strings.Contains(form, `name="csrf_token"`) {
			t.Errorf("%s: a post form without the CSRF token: <form%s", path, form)
		}
		for _, tag := range []string{"<input ", "<select ", "<textarea "} {
			for _, field := range strings.Split(form, tag)[1:] {
				field = field[:strings.IndexByte(field, '>')]
				if strings.Contains(field, `type="hidden"`) {
					continue
				}
				i := strings.Index(field, `id="`)
				if i < 0 {
					t.Errorf("%s: a field without an id (and so without a label): %s%s", path, tag, field)
					continue
				}
				id := field[i+4:]
				id = id[:strings.IndexByte(id, '"')]
				if !strings.Contains(page, `<label for="`+id+`"`) {
					t.Errorf("%s: field %s has no label", path, id)
				}
			}
		}
	}
}
