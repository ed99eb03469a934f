package browser

import (
	"context"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/governance"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/sim/harness"
)

// quarantineReason is the cause the Go side records for the quarantined
// device; the script looks for it in the banner at the top of its page.
const quarantineReason = "PCR 7 differs from policy gw-base: Secure Boot was turned off"

// TestDevicePagesInChromium checks the device list and the device page
// in a real browser at a phone's (375 px), a tablet's (768 px) and a
// desktop's (1280 px) width: nothing is wider than the window, axe-core
// finds no serious or critical accessibility violation, every section of
// the device page is one link away from its top, the lifecycle events
// page back beyond the first 20, a quarantined device says why at the top,
// the list sorts by a column, and ticking two devices and tagging them
// tags those two (which this test then checks in the inventory).
//
// The fleet is real (sigil serve in-process, its API and console over
// TLS); the devices are inventory records, as an imported fleet's are:
// these pages read records, not live TPMs.
func TestDevicePagesInChromium(t *testing.T) {
	requireBrowser(t)
	installPlaywright(t)
	ctx := context.Background()
	f, err := harness.StartFleet(ctx, server.Config{DataDir: t.TempDir(), ManualApproval: true}, logger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Stop() })

	now := time.Now().UTC()
	id := func(i int) string { return fmt.Sprintf("%064x", 0xb0000+i) }
	// The devices' owners are registered: governance's sweep, which runs
	// while the test adds the devices, then has no orphan to record in
	// their lifecycle events (the pages below count those events).
	for _, o := range []string{"plant-a", "plant-b", "warehouse-north-17"} {
		if _, err := f.Governance.PutOwner(governance.Owner{ID: o, Kind: governance.OwnerTeam}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 75 {
		d := &inventory.Device{ID: id(i), EKFingerprint: fmt.Sprintf("%064x", 0xe0000+i), State: inventory.StateActive,
			Model: []string{"gw-1", "cam-2"}[i%2], Firmware: []string{"1.4.2", "2.0.0", "2.1.0-rc.1"}[i%3],
			Serial: fmt.Sprintf("SN-BR-%04d", (i*37)%75), Owner: []string{"plant-a", "plant-b", "warehouse-north-17"}[i%3],
			Group: []string{"gateways", "cameras"}[i%2], TrustPath: inventory.TrustEKCA, CertSerial: fmt.Sprintf("%x", 0xc0000+i),
			CertExpiry: now.Add(time.Duration(i+1) * 7 * time.Hour), FirstSeen: now.Add(-72 * time.Hour), EnrolledAt: now.Add(-72 * time.Hour),
			LastSeen: now.Add(-time.Duration(i) * 13 * time.Minute), Attestation: "pass", LastAttested: now.Add(-time.Duration(i) * time.Minute)}
		if err := f.Inv.PutDevice(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	// The device whose history pages: 45 events (20 + 20 + 5).
	paged := id(1)
	for i := range 45 {
		if err := f.Inv.AddEvent(ctx, inventory.Event{DeviceID: paged, Time: now.Add(-time.Duration(45-i) * time.Hour), Kind: "renewed",
			Detail: fmt.Sprintf("event %02d: certificate %064x for a new TPM key; replaces %064x", i, i+1, i)}); err != nil {
			t.Fatal(err)
		}
	}
	quarantined := id(2)
	if _, _, err := f.Inv.Quarantine(ctx, quarantined, inventory.Cause{Source: inventory.CauseAttestation, Policy: "gw-base", Reason: quarantineReason,
		Time: now.Add(-20 * time.Minute)}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Auth.CreateUser(ctx, "olga", "browser test password of olga", auth.RoleOperator); err != nil {
		t.Fatal(err)
	}
	tagA, tagB := id(3), id(4)

	shots := t.ArtifactDir()
	env := append(os.Environ(),
		"SIGIL_URL="+f.APIURL(), "SIGIL_CA="+f.CACertPath(), "SIGIL_CHROMIUM="+chromiumPath, "SIGIL_SCREENSHOTS="+shots,
		"SIGIL_OPERATOR=olga", "SIGIL_OPERATOR_PASSWORD=browser test password of olga",
		"SIGIL_PAGED_ID="+paged, "SIGIL_QUARANTINED_ID="+quarantined, "SIGIL_QUARANTINE_REASON="+quarantineReason,
		"SIGIL_TAG_A="+tagA, "SIGIL_TAG_B="+tagB,
	)
	runScript(t, "devices.spec.js", env)

	// The tag the browser added, as the inventory has it: on the two
	// devices ticked, on no other.
	for i := range 75 {
		d, err := f.Inv.Device(ctx, id(i))
		if err != nil {
			t.Fatal(err)
		}
		if tagged := slices.Contains(d.Tags, "browser-canary"); tagged != (d.ID == tagA || d.ID == tagB) {
			t.Errorf("device %s tags %v", d.ID, d.Tags)
		}
	}
	if os.Getenv("SIGIL_UPDATE_SCREENSHOTS") == "1" {
		updateScreenshots(t, shots)
	}
}
