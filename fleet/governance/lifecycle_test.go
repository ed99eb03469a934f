package governance_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/governance"
	"github.com/sigil-iot/sigil/fleet/inventory"
)

// TestClonePendingStaysPending: clone handling changes only enrolled
// devices; a record waiting for approval stays pending (a quarantined EK
// would count as known and get a certificate).
func TestClonePendingStaysPending(t *testing.T) {
	f := newFleet(t, nil)
	d := f.device(1, func(d *inventory.Device) {
		d.State, d.CertSerial, d.CertExpiry, d.Revoked, d.EnrolledAt = inventory.StatePending, "", time.Time{}, nil, time.Time{}
	})
	_ = f.svc.EKConflict(d.ID, "EK presented with serial \"B\", enrolled as \"A\"")
	if st := f.get(d.ID).State; st != inventory.StatePending {
		t.Fatalf("clone handling moved a pending record to %s", st)
	}
	f.sweep()
	if st := f.get(d.ID).State; st != inventory.StatePending {
		t.Fatalf("the sweep moved a pending record to %s", st)
	}
}

// TestCloneQuarantineRevokesEverySerial: the quarantine of a clone
// revokes every unexpired serial of the device, a renewed-away one too.
func TestCloneQuarantineRevokesEverySerial(t *testing.T) {
	f := newFleet(t, nil)
	d := f.device(1, func(d *inventory.Device) { d.Superseded = []string{"5e1a11"} })
	q := governance.InventoryQuarantiner{Inventory: f.inv, Now: f.clock.Now}
	if err := q.Quarantine(d.ID, "clone"); err != nil {
		t.Fatal(err)
	}
	got := f.get(d.ID)
	if got.State != inventory.StateQuarantined || !got.IsRevoked(d.CertSerial) || !got.IsRevoked("5e1a11") {
		t.Fatalf("after quarantine: %s, current revoked %v, renewed-away revoked %v", got.State, got.IsRevoked(d.CertSerial), got.IsRevoked("5e1a11"))
	}
}

// TestDormantRevokeRevokesEverySerial: the dormant-device policy revokes
// every unexpired serial of the device, a renewed-away one too (it used to
// revoke the current one only, leaving the other admitted), and closes
// its sessions.
func TestDormantRevokeRevokesEverySerial(t *testing.T) {
	var disconnected []string
	f := newFleet(t, func(c *governance.Config) {
		c.DormantAfter = 30 * 24 * time.Hour
		c.RevokeDormant = true
		c.Revoker = governance.InventoryRevoker{Inventory: c.Devices.(*inventory.Store), Now: c.Now,
			Disconnect: func(id string) { disconnected = append(disconnected, id) }}
	})
	f.owner("plant-a", governance.OwnerActive)
	d := f.device(1, func(d *inventory.Device) {
		d.Connected, d.LastSeen, d.CertExpiry = false, t0.Add(-31*24*time.Hour), t0.Add(90*24*time.Hour)
		d.Superseded = []string{"5e1a11"}
	})
	if rep := f.sweep(); rep.Dormant != 1 || rep.Revoked != 1 {
		t.Fatalf("report %+v", rep)
	}
	got := f.get(d.ID)
	for _, s := range []string{d.CertSerial, "5e1a11"} {
		if got.Admits(s, f.clock.Now()) {
			t.Errorf("serial %s of the dormant device is still admitted", s)
		}
	}
	revs, err := f.inv.Revocations(t.Context(), time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]int{}
	for _, r := range revs {
		listed[r.Serial] = r.Reason
	}
	for _, s := range []string{d.CertSerial, "5e1a11"} {
		if r, ok := listed[s]; !ok || r != inventory.ReasonCessationOfOperation {
			t.Errorf("serial %s for the CRL: %v (reason %d)", s, ok, r)
		}
	}
	if !slices.Equal(disconnected, []string{d.ID}) {
		t.Errorf("sessions closed: %v", disconnected)
	}
	if a := f.alerts.of(governance.KindDormantRevoked, d.ID); len(a) != 1 || !strings.Contains(a[0].Summary, "5e1a11") {
		t.Errorf("revocation alerts %+v", a)
	}
	if rep := f.sweep(); rep.Revoked != 0 {
		t.Fatalf("revoked again: %+v", rep)
	}
}
