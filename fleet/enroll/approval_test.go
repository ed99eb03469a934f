package enroll_test

import (
	"testing"

	"github.com/sigil-iot/sigil/fleet/enroll"
	"github.com/sigil-iot/sigil/fleet/governance"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/verifier"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// quarantiningIdentities tells governance as the fleet does: a clone
// suspicion quarantines the device through the inventory.
type quarantiningIdentities struct {
	identities
	q governance.InventoryQuarantiner
}

func (x *quarantiningIdentities) CloneSuspect(deviceID, detail string) {
	x.identities.CloneSuspect(deviceID, detail)
	_ = x.q.Quarantine(deviceID, "clone (ek): "+detail)
}

// TestManualApprovalNotBypassedBySecondSerial: under manual approval a
// never-approved TPM that asks again under another serial is not its own
// clone, its pending record stays pending, and it gets no certificate.
func TestManualApprovalNotBypassedBySecondSerial(t *testing.T) {
	rec := record(t)
	h, err := rec.newHarness(t.TempDir(), true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.inv.Close() })
	ids := &quarantiningIdentities{q: governance.InventoryQuarantiner{Inventory: h.inv}}
	h.svc, err = enroll.New(enroll.Config{
		CA: h.ca, Inventory: h.inv, Trust: &verifier.EKTrust{}, Rand: h.rand, Identities: ids, ManualApproval: true,
		Send: h.send,
	})
	if err != nil {
		t.Fatal(err)
	}
	ask := func(clientID, serial string) wire.EnrollResult {
		t.Helper()
		req := rec.req
		req.Serial = serial
		h.rand.rewind()
		h.svc.Handle(clientID, encode(wire.TypeEnrollRequest, &req))
		h.svc.Handle(clientID, encode(wire.TypeEnrollProof, &rec.proof))
		return result(t, h)
	}
	first := ask("e-a", "SERIAL-A")
	if first.Status != wire.StatusPending {
		t.Fatalf("first request: %+v", first)
	}
	for i, serial := range []string{"SERIAL-B", "SERIAL-A", "SERIAL-B"} {
		res := ask("e-b", serial)
		if res.Status != wire.StatusPending || len(res.Certificate) != 0 {
			t.Fatalf("request %d (%s) of a never-approved TPM: %s %v %q", i+2, serial, res.Status, res.Reason, res.Message)
		}
	}
	d, err := h.inv.Device(t.Context(), first.DeviceID)
	if err != nil {
		t.Fatal(err)
	}
	if d.State != inventory.StatePending || d.HasFlag(enroll.FlagCloneSuspect) || d.Serial != "SERIAL-A" || len(ids.clones) != 0 {
		t.Fatalf("pending record after other serials: state %s flags %v serial %s clones %v", d.State, d.Flags, d.Serial, ids.clones)
	}
}
