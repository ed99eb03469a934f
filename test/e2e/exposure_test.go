package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/csv"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/firmware/manifest"
	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/campaign"
	"github.com/sigil-iot/sigil/fleet/exposure"
	"github.com/sigil-iot/sigil/fleet/governance"
	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/pkg/config"
	"github.com/sigil-iot/sigil/sim/harness"
)

// sbomFor is a CycloneDX SBOM of gw-os listing openssl at a version.
func sbomFor(version, openssl string) []byte {
	return []byte(`{"bomFormat":"CycloneDX","specVersion":"1.5","version":1,` +
		`"metadata":{"component":{"type":"firmware","name":"gw-os","version":"` + version + `","purl":"pkg:generic/gw-os@` + version + `"}},` +
		`"components":[{"type":"library","name":"openssl","version":"` + openssl + `","purl":"pkg:deb/debian/openssl@` + openssl + `"},` +
		`{"type":"library","name":"busybox","version":"1.36.1","purl":"pkg:generic/busybox@1.36.1"}]}`)
}

// TestExposureCampaign: releases whose signed manifests bind an SBOM; an
// OSV advisory matching one component (imported with the sigil CLI); the
// devices that attested running the affected release listed; one of them
// updated by a campaign to the fixed release drops off once it attests the
// new image; the report exported by the CLI as JSON and CSV parses back; a
// new advisory matching deployed devices raises an alert for each.
// The release each device runs is the one its TPM quoted (PCR 14), never
// the version it claims.
func TestExposureCampaign(t *testing.T) {
	kit := newReleaseKit(t)
	f := startFleet(t, withEKCA(t, func(c *server.Config) { c.ReleaseTrust = kit.trustFile }))
	admin, _ := f.Client()
	ctx := context.Background()
	sigil, _ := buildBinaries(t)

	var ids []string
	for range 3 {
		d := startDevice(t, f, newTPM(t), harness.DeviceConfig{Dir: t.TempDir(), Firmware: "1.0.0", Tweak: func(c *agentConfig) { c.EventLog = "-" }})
		id := waitConnected(t, d).DeviceID
		waitFirmware(t, f, id, "1.0.0")
		assign(t, admin, id, "gw-1", "")
		ids = append(ids, id)
	}
	slices.Sort(ids)

	ana := asUser(t, f, admin, "ana", auth.RoleOperator)
	bo := asUser(t, f, admin, "bo", auth.RoleReleaseApprover)
	upload := func(version string, image, sbom []byte) *api.Release {
		t.Helper()
		m := &manifest.Manifest{Name: "gw-os", Version: version, SecurityVersion: 2, Models: []string{"gw-1"}, Size: int64(len(image)),
			SHA256: sha256.Sum256(image), Expires: time.Now().Add(24 * time.Hour).UTC().Truncate(time.Second),
			SBOM: &manifest.SBOM{Format: manifest.SBOMCycloneDX, SHA256: sha256.Sum256(sbom)}}
		raw, bundles, err := harness.SignRelease(m, kit.signers[:2]...)
		if err != nil {
			t.Fatal(err)
		}
		rel, err := ana.UploadRelease(ctx, raw, bundles, bytes.NewReader(image), int64(len(image)))
		if err != nil {
			t.Fatalf("upload %s: %v", version, err)
		}
		if _, err := bo.ApproveRelease(ctx, rel.ID); err != nil {
			t.Fatal(err)
		}
		return rel
	}
	image2, image3 := bytes.Repeat([]byte("gw-os 2.0.0 "), 5000), bytes.Repeat([]byte("gw-os 2.0.1 "), 5000)
	sbom2, sbom3 := sbomFor("2.0.0", "3.0.1"), sbomFor("2.0.1", "3.0.8")
	rel2, rel3 := upload("2.0.0", image2, sbom2), upload("2.0.1", image3, sbom3)

	env := append(os.Environ(), "SIGIL_SERVER="+f.APIURL(), "SIGIL_TOKEN="+f.AdminToken(), "SIGIL_CA="+f.CACertPath())
	cli := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(sigil, args...)
		cmd.Env, cmd.Dir = env, t.TempDir()
		var o, e bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &e
		if err := cmd.Run(); err != nil {
			t.Fatalf("sigil %s: %v\n%s%s", strings.Join(args, " "), err, o.String(), e.String())
		}
		return o.String()
	}
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// An SBOM the manifest does not bind is refused; the bound one is kept.
	if _, err := ana.PutSBOM(ctx, rel2.ID, sbom3); status(err) != http.StatusUnprocessableEntity {
		t.Fatalf("SBOM of another release: %v, want 422", err)
	}
	if out := cli("firmware", "sbom", rel2.ID, write("sbom2.json", sbom2)); !strings.Contains(out, "pkg:deb/debian/openssl@3.0.1") {
		t.Fatalf("firmware sbom: %s", out)
	}
	if _, err := ana.PutSBOM(ctx, rel3.ID, sbom3); err != nil {
		t.Fatal(err)
	}

	// attestedOn asks each device for a fresh attestation and waits for
	// its verdict on the given claimed version.
	attestedOn := func(version string, devs ...string) {
		t.Helper()
		for _, id := range devs {
			before, err := admin.Attestations(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if err := admin.Attest(ctx, id); err != nil {
				t.Fatal(err)
			}
			waitFor(t, func() bool {
				l, err := admin.Attestations(ctx, id)
				return err == nil && len(l.Attestations) > len(before.Attestations) && l.Attestations[0].Firmware == version
			}, "a verdict of "+id+" on "+version)
		}
	}
	rollout := func(rel *api.Release, devs ...string) {
		t.Helper()
		c, err := ana.CreateCampaign(ctx, campaign.Definition{Release: rel.ID, Targets: campaign.Selector{DeviceIDs: devs},
			Waves: campaign.Waves{Sizes: []int{len(devs)}}, DeviceTimeout: config.Duration(30 * time.Second)}, "e2e")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ana.CampaignAction(ctx, c.ID, "start", "e2e", time.Time{}); err != nil {
			t.Fatal(err)
		}
		c = waitCampaign(t, ana, c.ID, 90*time.Second, "completed", func(c *campaign.Campaign) bool { return c.State == campaign.StateCompleted })
		if c.Counts.Committed != len(devs) {
			t.Fatalf("campaign to %s: %+v", rel.Version, c.Counts)
		}
	}

	// Before any update the devices run an image of no release: nothing is
	// exposed, whatever they claim.
	osv := write("osv.json", []byte(`{"id":"OSV-2026-0042","aliases":["CVE-2026-0042"],"summary":"openssl overrun",`+
		`"affected":[{"package":{"ecosystem":"Debian","name":"openssl","purl":"pkg:deb/debian/openssl"},`+
		`"ranges":[{"type":"ECOSYSTEM","events":[{"introduced":"3.0.0"},{"fixed":"3.0.8"}]}]}]}`))
	if out := cli("exposure", "import", osv); !strings.Contains(out, "OSV-2026-0042 (CVE-2026-0042): 0 exposed device(s), 3 of unknown release") {
		t.Fatalf("exposure import: %s", out)
	}
	rollout(rel2, ids...)
	attestedOn("2.0.0", ids...)
	if out := cli("exposure", "report", "OSV-2026-0042"); !strings.Contains(out, "3 exposed device(s), 0 of unknown release") {
		t.Fatalf("exposure report after the campaign to 2.0.0: %s", out)
	}
	l, err := ana.Exposure(ctx, "pkg:deb/debian/openssl", ">= 3.0.0, < 3.0.8")
	if err != nil || len(l.Devices) != 3 {
		t.Fatalf("devices on openssl 3.0.x before 3.0.8: %+v, %v", l, err)
	}
	// A new advisory that matches deployed devices raises an alert for
	// each (the default rule vulnerability-exposed, one open alert per
	// device and advisory), which counts in their risk score; the devices
	// that became exposed to OSV-2026-0042 by attesting 2.0.0 after it was
	// imported were alerted for it too.
	riskAlerts := func() int {
		r, err := admin.Risk(ctx, ids[1])
		if err != nil {
			return -1
		}
		f, _ := r.Factor(governance.FactorAlerts)
		return f.Points
	}
	before := max(riskAlerts(), 0)
	if _, err := ana.ImportAdvisory(ctx, []byte(`{"id":"OSV-2026-0043","affected":[{"package":{"purl":"pkg:generic/busybox"},`+
		`"ranges":[{"type":"SEMVER","events":[{"introduced":"0"},{"fixed":"1.37.0"}]}]}]}`)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		al, err := admin.Alerts(ctx, api.AlertQuery{RuleID: "vulnerability-exposed"})
		if err != nil {
			return false
		}
		var got, want []string
		for _, a := range al.Alerts {
			got = append(got, a.DeviceID+" "+a.Key)
		}
		for _, id := range ids {
			want = append(want, id+" OSV-2026-0042", id+" OSV-2026-0043")
		}
		slices.Sort(got)
		slices.Sort(want)
		return slices.Equal(got, want)
	}, "a vulnerability-exposed alert for each device and advisory")
	waitFor(t, func() bool { return riskAlerts() > before }, "the exposure alert in the risk score")

	// The first device gets the fixed release and attests it: it drops off.
	rollout(rel3, ids[0])
	attestedOn("2.0.1", ids[0])
	// The next device's update is planned: the report shows its campaign.
	draft, err := ana.CreateCampaign(ctx, campaign.Definition{Release: rel3.ID, Targets: campaign.Selector{DeviceIDs: ids[1:2]}}, "fix OSV-2026-0042")
	if err != nil {
		t.Fatal(err)
	}
	reportFile := filepath.Join(dir, "report.json")
	cli("exposure", "report", "OSV-2026-0042", "--format", "json", "--out", reportFile)
	b, err := os.ReadFile(reportFile)
	if err != nil {
		t.Fatal(err)
	}
	var rep exposure.Report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	var exposed []string
	for i, d := range rep.Devices {
		exposed = append(exposed, d.DeviceID)
		if want := map[bool]string{true: draft.ID}[i == 0]; d.Campaign != want || (want != "" && d.CampaignStep != string(campaign.StepPending)) {
			t.Errorf("%s in campaign %q at %q, want %q", d.DeviceID, d.Campaign, d.CampaignStep, want)
		}
		if d.Release != rel2.ID || d.Fixed != "3.0.8" || d.FixRelease != rel3.ID || d.Model != "gw-1" || d.FirstSeen.IsZero() {
			t.Errorf("finding %+v", d)
		}
	}
	if !slices.Equal(exposed, ids[1:]) || rep.ByModel["gw-1"] != 2 {
		t.Fatalf("exposed after the update of %s: %v (by model %v), want %v", ids[0], exposed, rep.ByModel, ids[1:])
	}
	csvFile := filepath.Join(dir, "report.csv")
	cli("exposure", "report", "OSV-2026-0042", "--format", "csv", "--out", csvFile)
	cb, err := os.ReadFile(csvFile)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(bytes.NewReader(cb)).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 3 || rows[1][2] != ids[1] || rows[2][2] != ids[2] || rows[1][11] != rel3.ID {
		t.Fatalf("CSV report: %q", rows)
	}
	if l, err := ana.Exposure(ctx, "pkg:deb/debian/openssl", ">= 3.0.8"); err != nil || len(l.Devices) != 1 || l.Devices[0].DeviceID != ids[0] {
		t.Fatalf("devices on openssl >= 3.0.8: %+v, %v", l, err)
	}
	var se *api.StatusError
	if _, err := ana.Exposure(ctx, "not a purl", ""); !errors.As(err, &se) || se.Status != http.StatusBadRequest {
		t.Fatalf("query with a bad package URL: %v, want 400", err)
	}
}
