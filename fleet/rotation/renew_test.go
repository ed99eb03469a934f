package rotation

import (
	"bytes"
	"crypto/x509"
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
		d, _ := h.inv.Device(t.Context(), benchDevice)
		old = append(old, d.CertSerial)
		if err := h.renewal(encode(wire.TypeRenewRequest, &rec.reqs[i%2])); err != nil {
			t.Fatalf("renewal %d: %v", i, err)
		}
	}
	d, _ := h.inv.Device(t.Context(), benchDevice)
	h.svc.Connected(benchDevice, d.CertSerial)
	d, _ = h.inv.Device(t.Context(), benchDevice)
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
	if err := h.renewal(encode(wire.TypeRenewRequest, &rec.reqs[0])); err != nil {
		t.Fatal(err)
	}
	before, _ := h.inv.Device(t.Context(), benchDevice)
	h.att.OnVerdict(func(id string, _ *attest.Record, _ time.Duration) {
		h.att.OnVerdict(nil)
		if err := h.att.Quarantine(id, "alert rule: racing the renewal"); err != nil {
			t.Error(err)
		}
	})
	var re *refusedError
	if err := h.renewal(encode(wire.TypeRenewRequest, &rec.reqs[1])); !errors.As(err, &re) || re.res.Reason != wire.ReasonQuarantined {
		t.Fatalf("renewal racing a quarantine: %v", err)
	}
	d, _ := h.inv.Device(t.Context(), benchDevice)
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
	if err := h.renewal(encode(wire.TypeRenewRequest, &rec.reqs[0])); err != nil {
		t.Fatal(err)
	}
	before, _ := h.inv.Device(t.Context(), benchDevice)
	h.att.OnVerdict(func(id string, _ *attest.Record, _ time.Duration) {
		h.att.OnVerdict(nil)
		if _, _, err := h.inv.RevokeDevice(t.Context(), id, inventory.ReasonKeyCompromise); err != nil {
			t.Error(err)
		}
	})
	var re *refusedError
	if err := h.renewal(encode(wire.TypeRenewRequest, &rec.reqs[1])); !errors.As(err, &re) || re.res.Reason != wire.ReasonRevoked {
		t.Fatalf("renewal racing a revocation: %v", err)
	}
	d, _ := h.inv.Device(t.Context(), benchDevice)
	if d.CertSerial != before.CertSerial || len(d.Certs) != len(before.Certs) {
		t.Fatalf("the refused renewal was recorded: %+v", d.Certs)
	}
	for _, c := range d.Certs {
		if !c.Revoked {
			t.Errorf("serial %s survived the revocation", c.Serial)
		}
	}
}

// renewResult runs one renewal (challenge, then Renew) and returns the
// fleet's answer, whatever it is.
func (h *harness) renewResult(t *testing.T, req *wire.RenewRequest) *wire.RenewResult {
	t.Helper()
	h.rand.rewind()
	if _, err := h.challenge(); err != nil {
		t.Fatal(err)
	}
	env, err := wire.Decode(encode(wire.TypeRenewRequest, req))
	if err != nil {
		t.Fatal(err)
	}
	h.svc.Renew(benchDevice, env)
	var res wire.RenewResult
	if err := h.last("cert", wire.TypeRenewResult, &res); err != nil {
		t.Fatal(err)
	}
	return &res
}

// TestRenewalIdempotentPerKey: a device that asks again for the key it
// asked for before (the first answer was slow or lost) gets the
// certificate already issued for that key, after the same checks (a fresh
// passing attestation), and no second certificate is issued or recorded;
// after a CA rotation the same key gets a certificate of the new
// generation; a new key gets a new certificate. Once the certificate for
// the key is revoked, asking again for that key is refused.
func TestRenewalIdempotentPerKey(t *testing.T) {
	if testing.Short() {
		t.Skip("records evidence with the TPM simulator")
	}
	rec := record(t)
	h, err := rec.newHarness(t.TempDir(), true)
	if err != nil {
		t.Fatal(err)
	}
	defer h.close()
	renewals := func() int {
		evs, err := h.inv.Events(t.Context(), benchDevice, 100)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, e := range evs {
			if e.Kind == "renewed" {
				n++
			}
		}
		return n
	}

	first := h.renewResult(t, &rec.reqs[0])
	if first.Status != wire.StatusActive {
		t.Fatalf("first renewal: %+v", first)
	}
	after, _ := h.inv.Device(t.Context(), benchDevice)
	passes := func() int {
		recs, err := h.att.History(t.Context(), benchDevice, 100)
		if err != nil {
			t.Fatal(err)
		}
		return len(recs)
	}
	judged := passes()
	again := h.renewResult(t, &rec.reqs[0])
	if again.Status != wire.StatusActive || !bytes.Equal(again.Certificate, first.Certificate) || len(again.TrustBundle) == 0 {
		t.Fatalf("the same key again: %s %v %q, want the certificate already issued", again.Status, again.Reason, again.Message)
	}
	d, _ := h.inv.Device(t.Context(), benchDevice)
	if d.CertSerial != after.CertSerial || len(d.Certs) != len(after.Certs) || renewals() != 1 {
		t.Fatalf("asking again recorded another certificate: %+v (%d renewed events)", d.Certs, renewals())
	}
	if passes() != judged+1 {
		t.Fatalf("asking again was not judged: %d attestations, want %d", passes(), judged+1)
	}

	// The CA rotates: a certificate of the generation being retired is not
	// current any more; the same key gets one from the new generation.
	fleetCA := h.svc.cfg.CA
	if _, err := fleetCA.Prepare(); err != nil {
		t.Fatal(err)
	}
	if _, err := fleetCA.Activate(); err != nil {
		t.Fatal(err)
	}
	reissued := h.renewResult(t, &rec.reqs[0])
	if reissued.Status != wire.StatusActive || bytes.Equal(reissued.Certificate, first.Certificate) || renewals() != 2 {
		t.Fatalf("the same key after a CA rotation: %s %v %q (%d renewed events), want a certificate of the new generation",
			reissued.Status, reissued.Reason, reissued.Message, renewals())
	}
	if c, err := x509.ParseCertificate(reissued.Certificate); err != nil || c.CheckSignatureFrom(fleetCA.Certificate()) != nil {
		t.Fatalf("the re-issued certificate is not from the active generation: %v", err)
	}

	other := h.renewResult(t, &rec.reqs[1])
	if other.Status != wire.StatusActive || bytes.Equal(other.Certificate, reissued.Certificate) {
		t.Fatalf("a new key: %s %v %q, want a new certificate", other.Status, other.Reason, other.Message)
	}
	if d, _ = h.inv.Device(t.Context(), benchDevice); d.CertSerial == after.CertSerial || renewals() != 3 {
		t.Fatalf("a new key was not recorded: %s (%d renewed events)", d.CertSerial, renewals())
	}

	if _, _, err := h.inv.RevokeDevice(t.Context(), benchDevice, inventory.ReasonKeyCompromise); err != nil {
		t.Fatal(err)
	}
	if res := h.renewResult(t, &rec.reqs[1]); res.Status != wire.StatusRefused || res.Reason != wire.ReasonRevoked {
		t.Fatalf("the key of a revoked certificate again: %s %v %q, want refused (%v)", res.Status, res.Reason, res.Message, wire.ReasonRevoked)
	}
}
