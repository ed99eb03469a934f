package console_test

import (
	"context"
	"html"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/inventory"
)

// TestRiskPages: the device page breaks the governance service's score
// into its factors with their points and evidence; after a sweep, the risk
// page ranks devices as the service does and the overview names the
// riskiest.
func TestRiskPages(t *testing.T) {
	ff := newFleetFixture(t, fleetOptions{})
	viewer := ff.login("vera", auth.RoleViewer)
	now := ff.clock.Now()
	calm := ff.addDevice(1, inventory.StateActive, func(d *inventory.Device) {
		d.Attestation, d.LastAttested, d.Owner, d.Connected = "pass", now, "plant-a", true
	})
	risky := ff.addDevice(2, inventory.StateActive, func(d *inventory.Device) {
		d.Attestation, d.LastAttested, d.LastSeen = "fail", now.Add(-50*time.Hour), now.Add(-48*time.Hour)
		d.CertExpiry = now.Add(time.Hour)
	})

	mustContain(t, body(t, viewer.get("/"), http.StatusOK), "Highest risk", "no device scored yet")
	for _, d := range []*inventory.Device{calm, risky} {
		want, err := ff.gov.Score(d.ID)
		if err != nil {
			t.Fatal(err)
		}
		page := body(t, viewer.get("/devices/"+d.ID), http.StatusOK)
		mustContain(t, page, `id="risk-h">Risk</h2>`, `score">`+strconv.Itoa(want.Score)+"</span>")
		for _, f := range want.Factors {
			mustContain(t, page, "<tr><td>"+html.EscapeString(f.Name)+"</td>", html.EscapeString(f.Evidence))
		}
	}
	if s1, _ := ff.gov.Score(calm.ID); func() bool { s2, _ := ff.gov.Score(risky.ID); return s2.Score <= s1.Score }() {
		t.Fatalf("the fixture's risky device does not score above the calm one")
	}

	if _, err := ff.gov.Sweep(context.Background()); err != nil {
		t.Fatal(err)
	}
	ranking, _, err := ff.gov.Ranking("", 10)
	if err != nil || len(ranking) != 2 {
		t.Fatalf("ranking: %v %v", ranking, err)
	}
	page := body(t, viewer.get("/risk"), http.StatusOK)
	i, j := strings.Index(page, `href="/devices/`+ranking[0].DeviceID+`"`), strings.Index(page, `href="/devices/`+ranking[1].DeviceID+`"`)
	if i < 0 || j < i {
		t.Fatalf("the risk page does not list the ranking in order:\n%s", page)
	}
	mustContain(t, body(t, viewer.get("/"), http.StatusOK), `<span class="card-title">Highest risk</span><span class="card-value">`+strconv.Itoa(ranking[0].Score)+"</span>")
	body(t, viewer.get("/risk?after=Not%2FAn%2FID"), http.StatusBadRequest)
}

// TestRiskSweepNow: an operator sweeps from the risk page and the ranking
// is there at once; a viewer gets no button and is refused when posting.
func TestRiskSweepNow(t *testing.T) {
	ff := newFleetFixture(t, fleetOptions{})
	viewer := ff.login("vera", auth.RoleViewer)
	op := ff.login("olga", auth.RoleOperator)
	d := ff.addDevice(1, inventory.StateActive, func(d *inventory.Device) { d.Attestation = "fail" })

	page := body(t, op.get("/risk"), http.StatusOK)
	mustContain(t, page, `action="/risk/sweep"`, "Sweep now", "No device is scored yet")
	checkForms(t, "/risk", page)
	vpage := body(t, viewer.get("/risk"), http.StatusOK)
	mustNotContain(t, vpage, `action="/risk/sweep"`)
	body(t, viewer.post("/risk/sweep", nil), http.StatusForbidden)
	if r, _, _ := ff.gov.Ranking("", 10); len(r) != 0 {
		t.Fatalf("a viewer's refused sweep scored %+v", r)
	}

	if to := redirect(t, op.post("/risk/sweep", nil)); to != "/risk?ok=risk.sweep" {
		t.Fatalf("redirected to %q", to)
	}
	page = body(t, op.get("/risk?ok=risk.sweep"), http.StatusOK)
	mustContain(t, page, "Swept: every device was judged", `href="/devices/`+d.ID+`"`)
}
