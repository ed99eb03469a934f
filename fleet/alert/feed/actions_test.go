package feed

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/alert"
	"github.com/sigil-iot/sigil/fleet/governance"
	"github.com/sigil-iot/sigil/fleet/inventory"
)

// TestAlertRevokeRevokesEverySerial: an alert rule's revoke action revokes
// every certificate of the device that has not expired (a renewed-away
// one too, which used to stay admitted) and lists each for the CRL.
func TestAlertRevokeRevokesEverySerial(t *testing.T) {
	inv, err := inventory.Open(filepath.Join(t.TempDir(), "inv.db"), inventory.WithNoSync())
	if err != nil {
		t.Fatal(err)
	}
	defer inv.Close()
	actions := Actions{Revoker: governance.InventoryRevoker{Inventory: inv}}
	const id = "0123456789abcdef0123456789abcdef"
	now := time.Now()
	if err := inv.PutDevice(t.Context(), &inventory.Device{ID: id, State: inventory.StateActive, CertSerial: "0c", CertExpiry: now.Add(time.Hour),
		Certs: []inventory.Cert{{Serial: "0b", NotAfter: now.Add(30 * time.Minute)}, {Serial: "0c", NotAfter: now.Add(time.Hour)}}}); err != nil {
		t.Fatal(err)
	}
	if err := actions.Act(context.Background(), alert.ActionRevoke, alert.Alert{ID: 7, RuleID: "odd-port", DeviceID: id, Summary: "port 4444 opened"}); err != nil {
		t.Fatal(err)
	}
	d, _ := inv.Device(t.Context(), id)
	for _, serial := range []string{"0b", "0c"} {
		if d.Admits(serial, now) {
			t.Errorf("serial %s is still admitted after the alert's revocation", serial)
		}
	}
	revs, err := inv.Revocations(t.Context(), now)
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]bool{}
	for _, r := range revs {
		listed[r.Serial] = true
	}
	if !listed["0b"] || !listed["0c"] {
		t.Fatalf("revocations for the CRL: %+v", revs)
	}
}
