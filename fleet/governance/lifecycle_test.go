package governance_test

import (
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
