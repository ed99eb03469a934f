package browser

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/firmware/manifest"
	"github.com/sigil-iot/sigil/firmware/sign"
	"github.com/sigil-iot/sigil/firmware/sign/signtest"
	"github.com/sigil-iot/sigil/fleet/alert"
	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/approval"
	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/campaign"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/policy"
	"github.com/sigil-iot/sigil/internal/wait"
	"github.com/sigil-iot/sigil/sim/harness"
)

// Names the Go side prepares and the script looks for.
const (
	releaseVersion    = "2.0.0" // approved: the browser's campaign installs it
	unapprovedVersion = "2.0.1" // uploaded by the admin, who may not approve it
	alertRuleName     = "Too many processes"
	approvalWhy       = "baseline for the lab bench boards"
)

// releaseKey makes the fleet's release key and writes its trust set (one
// key, threshold 1); it returns the signer and the trust set's path.
func releaseKey(t *testing.T) (*sign.Signer, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "release-trust.json")
	return signtest.TrustFile(t, path), path
}

// clientAs returns an API client acting as an existing user.
func clientAs(t *testing.T, f *harness.Fleet, user string, role auth.Role) *api.Client {
	t.Helper()
	c, err := f.Client()
	if err != nil {
		t.Fatal(err)
	}
	secret, _, err := f.Auth.CreateToken(t.Context(), user, "browser-test", role, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c.Token = secret
	return c
}

// prepared is what the Go side set up for the new pages.
type prepared struct {
	release    *api.Release
	unapproved *api.Release
	alert      alert.Alert
	approval   string
}

// preparePages sets up what the campaign, releases, alerts, approvals and
// risk pages show: a signed release uploaded by ada and approved by rita
// (and one only uploaded), an alert rule that fires on the searched
// device's telemetry, a policy change sam filed for approval, and a
// governance sweep.
func preparePages(t *testing.T, f *harness.Fleet, signer *sign.Signer, searchedID string) prepared {
	t.Helper()
	ctx := context.Background()
	ada, rita := clientAs(t, f, "ada", auth.RoleAdmin), clientAs(t, f, "rita", auth.RoleReleaseApprover)
	upload := func(version string) *api.Release {
		image := bytes.Repeat([]byte("gw-os "+version+" "), 64<<10/12)
		m := &manifest.Manifest{Name: "gw-os", Version: version, SecurityVersion: 2, Models: []string{"gw-1"},
			Size: int64(len(image)), SHA256: sha256.Sum256(image), Expires: time.Now().Add(30 * 24 * time.Hour).UTC().Truncate(time.Second)}
		raw, bundles, err := harness.SignRelease(m, signer)
		if err != nil {
			t.Fatal(err)
		}
		rel, err := ada.UploadRelease(ctx, raw, bundles, bytes.NewReader(image), int64(len(image)))
		if err != nil {
			t.Fatalf("upload %s: %v", version, err)
		}
		return rel
	}
	var p prepared
	p.release = upload(releaseVersion)
	if _, err := rita.ApproveRelease(ctx, p.release.ID); err != nil {
		t.Fatal(err)
	}
	p.unapproved = upload(unapprovedVersion)

	if _, err := f.Alerts.PutRule(alert.Rule{ID: "proc-count", Name: alertRuleName, Severity: alert.SeverityWarning,
		Description: "More processes than the gateway image should run", Devices: []string{searchedID},
		Threshold: &alert.Threshold{Metric: "proc.count", Op: ">", Value: 1}}); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "the alert rule to fire on the device's telemetry", func() bool {
		open, _, err := f.Alerts.Alerts(alert.Query{RuleID: "proc-count", Open: true})
		if err != nil {
			t.Fatal(err)
		}
		if len(open) == 1 {
			p.alert = open[0]
		}
		return len(open) == 1
	})

	sam := clientAs(t, f, "sam", auth.RoleSecurityAdmin)
	sam.Justification = approvalWhy
	_, err := sam.PutPolicy(ctx, &policy.Policy{ID: "lab-bench", Name: "Lab bench boards", Model: "lab-bench", Action: policy.ActionAlert,
		PCRs: map[string]map[int]string{"sha256": {0: strings.Repeat("00", 32)}}})
	var pending *api.PendingError
	if !errors.As(err, &pending) {
		t.Fatalf("a policy change under the two-person rule: %v, want it filed for approval", err)
	}
	p.approval = pending.Pending.Approval.ID

	if _, err := f.Governance.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	return p
}

// checkPages checks the fleet's state behind what the script did on the
// new pages.
func checkPages(t *testing.T, f *harness.Fleet, p prepared, res results) {
	t.Helper()
	// The campaign the browser created and started completed: every device
	// committed and now says it runs the release.
	c, err := f.Campaigns().Get(res.CampaignID)
	if err != nil {
		t.Fatalf("the browser's campaign %q: %v", res.CampaignID, err)
	}
	if c.State != campaign.StateCompleted || c.Counts.Committed != c.Total || c.Total == 0 || c.CreatedBy != "olga" || c.Definition.Release != p.release.ID {
		t.Errorf("campaign %s: %s, %d of %d committed, by %s", c.ID, c.State, c.Counts.Committed, c.Total, c.CreatedBy)
	}
	devs, _, err := f.Campaigns().Devices(c.ID, campaign.DeviceFilter{})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range devs {
		var (
			firmware string
			err      error
		)
		if !wait.Poll(20*time.Second, func() bool {
			var inv *inventory.Device
			if inv, err = f.Inv.Device(t.Context(), d.ID); err == nil {
				firmware = inv.Firmware
			}
			return err == nil && firmware == releaseVersion
		}) {
			t.Errorf("device %s runs %q after the campaign, want %s (%v)", d.ID, firmware, releaseVersion, err)
		}
	}
	// The alert was acknowledged by the operator with the note typed in.
	a, err := f.Alerts.Alert(p.alert.ID)
	if err != nil || a.State != alert.StateAcknowledged || a.AckedBy != "olga" || a.AckNote != res.AlertNote || res.AlertNote == "" {
		t.Errorf("alert after the browser: %+v (%v), note typed %q", a, err, res.AlertNote)
	}
	// The approval was given by the admin and the change carried out.
	req, err := f.Approvals.Get(t.Context(), p.approval)
	if err != nil || req.State != approval.StateExecuted || len(req.Approvals) != 1 || req.Approvals[0].By != "ada" {
		t.Errorf("approval after the browser: %+v (%v)", req, err)
	}
	if _, err := f.Policy.Get(t.Context(), "lab-bench"); err != nil {
		t.Errorf("the approved policy change was not made: %v", err)
	}
	// The release its uploader could not approve is still waiting.
	if r, err := f.Releases().Release(t.Context(), p.unapproved.ID); err != nil || len(r.Approvals) != 0 {
		t.Errorf("release %s: %+v (%v)", p.unapproved.ID, r, err)
	}
	// The verification the admin ran is in the audit log.
	page, err := f.Audit.List(t.Context(), audit.Filter{Actor: audit.User("ada"), Action: "api.audit.verify"})
	if err != nil || len(page.Entries) == 0 || page.Entries[0].Outcome != audit.OK {
		t.Errorf("no successful verification by ada in the audit log: %+v (%v)", page.Entries, err)
	}
}
