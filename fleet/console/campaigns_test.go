package console_test

import (
	"html"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/campaign"
	"github.com/sigil-iot/sigil/fleet/firmware"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// TestReleasesTwoPersonRule: the uploader of a release is told they cannot
// approve it and has no button; posting anyway shows the API's two-person
// refusal and changes nothing. A release approver approves it; an
// operator withdraws another with a justification; a viewer sees neither
// button.
func TestReleasesTwoPersonRule(t *testing.T) {
	ff := newFleetFixture(t, fleetOptions{})
	admin := ff.login("ada", auth.RoleAdmin)
	rita := ff.login("rita", auth.RoleReleaseApprover)
	op := ff.login("olga", auth.RoleOperator)
	viewer := ff.login("vera", auth.RoleViewer)
	ff.clock.Advance(time.Second) // the accounts predate the uploads: newer ones may not approve them
	rel := ff.upload("ada", "2.1.0", 3)
	other := ff.upload("olga", "2.2.0", 3)
	approve := `action="/releases/` + rel.ID + `/approve"`

	page := body(t, admin.get("/releases"), http.StatusOK)
	mustContain(t, page, "gw-os 2.1.0", "you uploaded this release, so you cannot approve it", "waiting for approval", rel.ID)
	mustNotContain(t, page, approve)
	mustContain(t, body(t, admin.post("/releases/"+rel.ID+"/approve", nil), http.StatusForbidden), "uploader of a release cannot approve it")
	if r := release(t, ff, rel.ID); r.State != firmware.StateUploaded || len(r.Approvals) != 0 {
		t.Fatalf("the uploader's refused approval changed the release: %s %v", r.State, r.Approvals)
	}

	mustNotContain(t, body(t, viewer.get("/releases"), http.StatusOK), approve, "/withdraw")
	mustContain(t, body(t, rita.get("/releases"), http.StatusOK), approve)
	if to := redirect(t, rita.post("/releases/"+rel.ID+"/approve", nil)); to != "/releases?ok=release.approve" {
		t.Fatalf("redirected to %q", to)
	}
	if r := release(t, ff, rel.ID); r.State != firmware.StateApproved || r.Approvals[0].By != "rita" {
		t.Fatalf("after approval: %s %+v", r.State, r.Approvals)
	}
	page = body(t, rita.get("/releases?ok=release.approve"), http.StatusOK)
	mustContain(t, page, "Approved: once it has every approval", "offered to campaigns")
	mustNotContain(t, page, approve)

	w := `action="/releases/` + other.ID + `/withdraw"`
	mustContain(t, body(t, op.get("/releases"), http.StatusOK), w)
	mustContain(t, body(t, op.post("/releases/"+other.ID+"/withdraw", url.Values{"justification": {""}}), http.StatusBadRequest), "justification")
	redirect(t, op.post("/releases/"+other.ID+"/withdraw", url.Values{"justification": {"build server compromised"}}))
	if r := release(t, ff, other.ID); r.State != firmware.StateWithdrawn || r.WithdrawReason != "build server compromised" || r.WithdrawnBy != "olga" {
		t.Fatalf("after withdrawal: %s %q by %q", r.State, r.WithdrawReason, r.WithdrawnBy)
	}
	mustContain(t, body(t, op.get("/releases"), http.StatusOK), "build server compromised", "not offered: withdrawn")
}

func release(t *testing.T, ff *fleetFixture, id string) *firmware.Release {
	t.Helper()
	rs, err := ff.releases.List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if r.ID == id {
			return r
		}
	}
	t.Fatalf("no release %s", id)
	return nil
}

var campaignLink = regexp.MustCompile(`href="/campaigns/(cmp_[0-9a-f]+)"`)

// TestCampaignLifecycle: an operator creates a campaign from an approved
// release in the form, starts it, pauses and resumes it with a
// justification; devices report through the real campaign manager; the
// pages show each wave's progress, each device's step and why it failed,
// the overview's progress tile and the device's firmware history; a
// rollback campaign goes to the devices that committed. Bad forms and a
// viewer are refused before anything changes.
func TestCampaignLifecycle(t *testing.T) {
	ff := newFleetFixture(t, fleetOptions{})
	op := ff.login("olga", auth.RoleOperator)
	viewer := ff.login("vera", auth.RoleViewer)
	for i := 1; i <= 3; i++ {
		ff.addDevice(i, inventory.StateActive, func(d *inventory.Device) { d.Group, d.Firmware = "kiosks", "1.9.0" })
	}
	ff.addDevice(4, inventory.StateActive, func(d *inventory.Device) { d.Group = "pumps" })
	old := ff.approved("ada", "rita", "1.9.0", 2)
	rel := ff.approved("ada", "rita", "2.0.0", 2)
	unapproved := ff.upload("ada", "2.0.1", 2)

	page := body(t, op.get("/campaigns"), http.StatusOK)
	mustContain(t, page, "No campaign yet.", `action="/campaigns/new"`, `<option value="`+rel.ID+`">gw-os 2.0.0`, "gw-os 1.9.0")
	mustNotContain(t, page, `<option value="`+unapproved.ID+`"`)
	mustNotContain(t, body(t, viewer.get("/campaigns"), http.StatusOK), `action="/campaigns/new"`)

	form := url.Values{"release": {rel.ID}, "name": {"kiosk rollout"}, "group": {"kiosks"}, "canary": {"1"}, "growth": {"2"},
		"success_threshold": {"50"}, "failure_threshold": {"50"}, "on_failure": {"pause"}, "device_timeout": {"30m"},
		"justification": {"monthly kiosk update"}}
	body(t, viewer.post("/campaigns/new", form), http.StatusForbidden)
	for field, want := range map[string]string{"group": "choose the devices", "justification": "justification", "release": "choose a release"} {
		bad := url.Values{}
		for k, v := range form {
			bad[k] = v
		}
		bad.Del(field)
		mustContain(t, body(t, op.post("/campaigns/new", bad), http.StatusBadRequest), want)
	}
	mustContain(t, body(t, op.post("/campaigns/new", url.Values{"release": {rel.ID}, "devices": {"Not/A/Device"}, "justification": {"x y z"}}),
		http.StatusBadRequest), "is not a device ID")
	if cs, _ := ff.campaigns.List(); len(cs) != 0 {
		t.Fatalf("refused forms created %d campaigns", len(cs))
	}

	page = body(t, op.post("/campaigns/new", form), http.StatusOK)
	mustContain(t, page, "Campaign created", "It is a draft")
	m := campaignLink.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no link to the new campaign:\n%s", page)
	}
	id := m[1]
	c := getCampaign(t, ff, id)
	if c.State != campaign.StateDraft || c.Total != 3 || len(c.Waves) != 2 || c.Waves[0].Size != 1 || c.Waves[1].Size != 2 ||
		c.CreatedBy != "olga" || c.Definition.FailureThreshold != 0.5 || time.Duration(c.Definition.DeviceTimeout) != 30*time.Minute {
		t.Fatalf("campaign as created: %+v", c)
	}
	path := "/campaigns/" + id
	page = body(t, op.get(path), http.StatusOK)
	mustContain(t, page, "Campaign kiosk rollout", ">draft<", `action="`+path+`/start"`, "0 of 3 devices finished", "group kiosks", "monthly kiosk update")
	mustNotContain(t, page, `action="`+path+`/pause"`, `action="`+path+`/rollback"`)

	if to := redirect(t, op.post(path+"/start", url.Values{"justification": {"approved in change board"}})); to != path+"?ok=campaign.start" {
		t.Fatalf("redirected to %q", to)
	}
	canary := awaitAnnounced(t, ff, id)
	if c := getCampaign(t, ff, id); c.State != campaign.StateRunning {
		t.Fatalf("after start: %s", c.State)
	}
	mustContain(t, body(t, op.get("/"), http.StatusOK), "Campaign kiosk rollout", `<progress max="3" value="0"`)

	redirect(t, op.post(path+"/pause", url.Values{"justification": {"store opening hours"}}))
	c = getCampaign(t, ff, id)
	if c.State != campaign.StatePaused || c.ChangedBy != "olga" || c.Why != "store opening hours" {
		t.Fatalf("after pause: %s by %s: %s", c.State, c.ChangedBy, c.Why)
	}
	page = body(t, op.get(path), http.StatusOK)
	mustContain(t, page, ">paused<", `action="`+path+`/resume"`, "store opening hours")
	mustNotContain(t, page, `action="`+path+`/pause"`)
	mustContain(t, body(t, op.post(path+"/pause", url.Values{"justification": {"again"}}), http.StatusConflict), "not possible")
	redirect(t, op.post(path+"/resume", url.Values{"justification": {"store closed"}}))

	ff.report(id, canary, campaign.StepCommitted, 0, "2.0.0")
	second := []string{awaitAnnounced(t, ff, id), awaitAnnounced(t, ff, id)}
	ff.report(id, second[0], campaign.StepCommitted, 0, "2.0.0")
	page = body(t, op.get(path), http.StatusOK)
	mustContain(t, page, "1 of 1 committed (1 needed)", "1 of 2 committed (1 needed), 0 failed (1 allowed), 1 in flight",
		`aria-label="All waves: 2 of 3 committed, 0 failed, 1 in flight"`)
	mustContain(t, body(t, op.get("/"), http.StatusOK), `<progress max="3" value="2"`)

	ff.report(id, second[1], campaign.StepRolledBack, wire.ReasonFirmwareHealth, "1.9.0")
	waitFor(t, "campaign completed", func() bool { return getCampaign(t, ff, id).State == campaign.StateCompleted })
	page = body(t, op.get(path), http.StatusOK)
	mustContain(t, page, ">completed<", "1 of 2 committed (1 needed), 1 failed (1 allowed)", html.EscapeString(wire.ReasonFirmwareHealth.Description()),
		`href="/devices/`+second[1]+`"`, `action="`+path+`/rollback"`, `<option value="`+old.ID+`">gw-os 1.9.0`)
	mustNotContain(t, page, `action="`+path+`/start"`, `action="`+path+`/abort"`)
	mustContain(t, body(t, op.get("/"), http.StatusOK), "none running")

	// The device table filters by step.
	page = body(t, op.get(path+"?step=committed"), http.StatusOK)
	if n := strings.Count(page, `<span class="badge ok">committed</span>`); n != 2 {
		t.Errorf("committed filter lists %d devices, want 2", n)
	}
	mustNotContain(t, page, `href="/devices/`+second[1]+`"`)
	body(t, op.get(path+"?step=bogus"), http.StatusBadRequest)
	body(t, op.get(path+"?wave=9"), http.StatusBadRequest)
	body(t, op.get("/campaigns/cmp_0000000000000000"), http.StatusNotFound)

	// The failed device's page tells its firmware history.
	page = body(t, op.get("/devices/"+second[1]), http.StatusOK)
	mustContain(t, page, "Firmware history", `href="`+path+`"`, "kiosk rollout", "rolled_back", "1.9.0")

	// Roll back the devices that committed.
	page = body(t, op.post(path+"/rollback", url.Values{"release": {old.ID}, "canary": {"1"}, "justification": {"health check failures"}}), http.StatusOK)
	mustContain(t, page, "Rollback campaign created")
	m = campaignLink.FindStringSubmatch(page)
	if m == nil || m[1] == id {
		t.Fatalf("no link to the rollback campaign:\n%s", page)
	}
	rb := getCampaign(t, ff, m[1])
	if rb.Definition.RollbackOf != id || rb.Total != 2 || rb.Definition.Release != old.ID || rb.State != campaign.StateDraft {
		t.Fatalf("rollback campaign: %+v", rb)
	}
	mustContain(t, body(t, op.get("/campaigns"), http.StatusOK), "rollback", "kiosk rollout")
	redirect(t, op.post("/campaigns/"+rb.ID+"/abort", url.Values{"justification": {"not needed after all"}}))
	if c := getCampaign(t, ff, rb.ID); c.State != campaign.StateAborted {
		t.Fatalf("after abort: %s", c.State)
	}
}

func getCampaign(t testing.TB, ff *fleetFixture, id string) *campaign.Campaign {
	t.Helper()
	c, err := ff.campaigns.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// awaitAnnounced returns the next device the engine announces for the
// campaign.
func awaitAnnounced(t testing.TB, ff *fleetFixture, id string) string {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		select {
		case a := <-ff.announced:
			if a.Campaign == id {
				return a.Device
			}
		case <-deadline:
			t.Fatalf("campaign %s: no announcement", id)
		}
	}
}

// TestCampaignFetched: the campaign page sets the bytes devices say they
// fetched against the release's image size, for the campaign (against a
// full download by each of its devices) and per device (in its own
// column, with a header); a device that said nothing shows a dash.
func TestCampaignFetched(t *testing.T) {
	ff := newFleetFixture(t, fleetOptions{})
	op := ff.login("olga", auth.RoleOperator)
	for i := 1; i <= 3; i++ {
		ff.addDevice(i, inventory.StateActive, func(d *inventory.Device) { d.Group = "kiosks" })
	}
	rel := ff.approved("ada", "rita", "2.0.0", 2) // a 6000-byte image
	form := url.Values{"release": {rel.ID}, "name": {"adaptive"}, "group": {"kiosks"}, "canary": {"3"}, "growth": {"2"},
		"success_threshold": {"50"}, "failure_threshold": {"50"}, "on_failure": {"pause"}, "device_timeout": {"30m"},
		"justification": {"monthly kiosk update"}}
	m := campaignLink.FindStringSubmatch(body(t, op.post("/campaigns/new", form), http.StatusOK))
	if m == nil {
		t.Fatal("no link to the new campaign")
	}
	id, path := m[1], "/campaigns/"+m[1]
	redirect(t, op.post(path+"/start", url.Values{"justification": {"approved in change board"}}))
	dev := awaitAnnounced(t, ff, id)
	page := body(t, op.get(path), http.StatusOK)
	mustNotContain(t, page, "say they fetched")

	if _, err := ff.campaigns.Report(campaign.DeviceReport{DeviceID: dev, Campaign: id, Step: campaign.StepCommitted,
		RunningVersion: "2.0.0", At: ff.clock.Now(), ClaimedFetched: 600}); err != nil {
		t.Fatal(err)
	}
	page = body(t, op.get(path), http.StatusOK)
	mustContain(t, page,
		`id="fetched"`, "Devices say they fetched 600 B in all: 3.3 % of a full download by each of its 3 devices (5.9 KiB each)",
		`<th scope="col">Fetched</th>`, "600 B (10.0 % of the image)")
	if n := strings.Count(page, `<td class="fetched">—</td>`); n != 2 {
		t.Errorf("%d devices without a claim shown with a dash, want 2", n)
	}
}
