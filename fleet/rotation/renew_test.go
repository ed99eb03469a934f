package rotation

import (
	"errors"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/attest"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// TestSupersededSerialsAreNotForgotten: however many renewals a device
// makes before it connects with the newest certificate, every serial they
// replaced is revoked once it does (renewal used to keep only the last 8).
func TestSupersededSerialsAreNotForgotten(t *testing.T) {
	if testing.Short() {
		t.Skip("records evidence with the TPM simulator")
	}
	rec := record(t)
	h, err := rec.newHarness(t.TempDir(), true)
	if err != nil {
		t.Fatal(err)
	}
	defer h.close()
	var old []string
	for i := range 10 {
		d, _ := h.inv.Device(benchDevice)
		old = append(old, d.CertSerial)
		if err := h.renewal(encode(wire.TypeRenewRequest, &rec.req)); err != nil {
			t.Fatalf("renewal %d: %v", i, err)
		}
	}
	d, _ := h.inv.Device(benchDevice)
	h.svc.Connected(benchDevice, d.CertSerial)
	d, _ = h.inv.Device(benchDevice)
	for _, s := range old {
		if !d.IsRevoked(s) {
			t.Errorf("superseded serial %s not revoked", s)
		}
	}
	if d.IsRevoked(d.CertSerial) {
		t.Fatal("the current serial was revoked")
	}
}

// TestQuarantineDuringRenewal: a quarantine that commits while a renewal
// is between its passing verdict and recording its certificate refuses
// the renewal (its certificate is never recorded, so never admitted); one
// that commits after revokes the renewed certificate with the others.
func TestQuarantineDuringRenewal(t *testing.T) {
	if testing.Short() {
		t.Skip("records evidence with the TPM simulator")
	}
	rec := record(t)
	h, err := rec.newHarness(t.TempDir(), true)
	if err != nil {
		t.Fatal(err)
	}
	defer h.close()
	if err := h.renewal(encode(wire.TypeRenewRequest, &rec.req)); err != nil {
		t.Fatal(err)
	}
	before, _ := h.inv.Device(benchDevice)
	h.att.OnVerdict(func(id string, _ *attest.Record, _ time.Duration) {
		h.att.OnVerdict(nil)
		if err := h.att.Quarantine(id, "alert rule: racing the renewal"); err != nil {
			t.Error(err)
		}
	})
	var re *refusedError
	if err := h.renewal(encode(wire.TypeRenewRequest, &rec.req)); !errors.As(err, &re) || re.res.Reason != wire.ReasonQuarantined {
		t.Fatalf("renewal racing a quarantine: %v", err)
	}
	d, _ := h.inv.Device(benchDevice)
	if d.CertSerial != before.CertSerial || len(d.Certs) != len(before.Certs) {
		t.Fatalf("the refused renewal was recorded: %+v", d.Certs)
	}
	for _, c := range d.Certs {
		if !c.Revoked {
			t.Errorf("serial %s survived the quarantine", c.Serial)
		}
	}
}

// TestRevocationDuringRenewal: a revocation of the device that commits
// while a renewal is between its passing verdict and recording its
// certificate refuses the renewal (its certificate would have been the
// only one left unrevoked); one that commits after revokes the renewed
// certificate with the others.
func TestRevocationDuringRenewal(t *testing.T) {
	if testing.Short() {
		t.Skip("records evidence with the TPM simulator")
	}
	rec := record(t)
	h, err := rec.newHarness(t.TempDir(), true)
	if err != nil {
		t.Fatal(err)
	}
	defer h.close()
	if err := h.renewal(encode(wire.TypeRenewRequest, &rec.req)); err != nil {
		t.Fatal(err)
	}
	before, _ := h.inv.Device(benchDevice)
	h.att.OnVerdict(func(id string, _ *attest.Record, _ time.Duration) {
		h.att.OnVerdict(nil)
		if _, _, err := h.inv.RevokeDevice(id, inventory.ReasonKeyCompromise); err != nil {
			t.Error(err)
		}
	})
	var re *refusedError
	if err := h.renewal(encode(wire.TypeRenewRequest, &rec.req)); !errors.As(err, &re) || re.res.Reason != wire.ReasonRevoked {
		t.Fatalf("renewal racing a revocation: %v", err)
	}
	d, _ := h.inv.Device(benchDevice)
	if d.CertSerial != before.CertSerial || len(d.Certs) != len(before.Certs) {
		t.Fatalf("the refused renewal was recorded: %+v", d.Certs)
	}
	for _, c := range d.Certs {
		if !c.Revoked {
			t.Errorf("serial %s survived the revocation", c.Serial)
		}
	}
}
