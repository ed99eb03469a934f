package admission_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/admission"
	"github.com/sigil-iot/sigil/fleet/broker"
	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/inventory/inventorytest"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// TestGateAdmitsOnlyIssuedSerials: a certificate of the fleet CA for an
// active device is refused unless the fleet issued that serial to it.
func TestGateAdmitsOnlyIssuedSerials(t *testing.T) {
	inv := inventorytest.Open(t)
	fleetCA, err := ca.Open(ca.Config{Dir: filepath.Join(t.TempDir(), "ca"), TrustDomain: "test.local"})
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	const id = "0123456789abcdef0123456789abcdef"
	if err := inv.PutDevice(t.Context(), &inventory.Device{ID: id, State: inventory.StateActive, CertSerial: "0a", CertExpiry: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	crafted, err := fleetCA.IssueDevice(id, &key.PublicKey, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := (admission.Gate{Devices: inv, CA: fleetCA}).AdmitDevice(id, crafted); err == nil {
		t.Fatal("the gate admitted a fleet certificate never issued to the device")
	}
}

// TestAdmitActive: firmware downloads admit a device holding a certificate
// the fleet issued it while it is active, not once it is quarantined.
func TestAdmitActive(t *testing.T) {
	inv := inventorytest.Open(t)
	fleetCA, err := ca.Open(ca.Config{Dir: filepath.Join(t.TempDir(), "ca"), TrustDomain: "test.local"})
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	const id = "0123456789abcdef0123456789abcdef"
	cert, err := fleetCA.IssueDevice(id, &key.PublicKey, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	serial := hex.EncodeToString(cert.SerialNumber.Bytes())
	d := &inventory.Device{ID: id, State: inventory.StateActive, Certs: []inventory.Cert{{Serial: serial, NotAfter: cert.NotAfter}}}
	if err := inv.PutDevice(t.Context(), d); err != nil {
		t.Fatal(err)
	}
	g := admission.Gate{Devices: inv, CA: fleetCA}
	if err := g.AdmitActive(id, cert); err != nil {
		t.Fatalf("an active device: %v", err)
	}
	d.State = inventory.StateQuarantined
	if err := inv.PutDevice(t.Context(), d); err != nil {
		t.Fatal(err)
	}
	if acc, err := g.AdmitDevice(id, cert); err != nil || acc.UpKinds == nil {
		t.Fatalf("the gate for a quarantined device: %+v, %v", acc, err)
	}
	if err := g.AdmitActive(id, cert); err == nil {
		t.Fatal("a quarantined device was admitted to downloads")
	}
}

// TestUpKind: a device message is accepted only on the up kind the
// protocol gives its type; fleet-to-device and enrollment types on none.
func TestUpKind(t *testing.T) {
	for typ, want := range map[string]string{
		wire.TypeHello: "hello", wire.TypeAttestRequest: "attest", wire.TypeAttestEvidence: "attest",
		wire.TypeRenewRequest: "renew", wire.TypeSSHRequest: "ssh", wire.TypeSecretAck: "secret",
		wire.TypeTelemetryBatch: "telemetry", wire.TypeFirmwareReport: "fw",
		wire.TypeAttestChallenge: "", wire.TypeSecretDeliver: "", wire.TypeEnrollRequest: "", "no.such": "",
	} {
		if got := admission.UpKind(typ); got != want {
			t.Errorf("UpKind(%q) = %q, want %q", typ, got, want)
		}
	}
}

// TestCheck: a message is served only on its type's kind and in a state
// that accepts the kind; through a broker pool (no certificate reported)
// only while the device holds a current certificate.
func TestCheck(t *testing.T) {
	inv := inventorytest.Open(t)
	now := time.Now()
	const active, quarantined, revoked = "0123456789abcdef0123456789abcde1", "0123456789abcdef0123456789abcde2", "0123456789abcdef0123456789abcde3"
	for id, d := range map[string]inventory.Device{
		active:      {State: inventory.StateActive, Certs: []inventory.Cert{{Serial: "0a", NotAfter: now.Add(time.Hour)}}},
		quarantined: {State: inventory.StateQuarantined, Certs: []inventory.Cert{{Serial: "0b", NotAfter: now.Add(time.Hour)}}},
		revoked:     {State: inventory.StateActive, Certs: []inventory.Cert{{Serial: "0c", NotAfter: now.Add(time.Hour), Revoked: true, RevokedAt: now}}},
	} {
		d.ID = id
		if err := inv.PutDevice(t.Context(), &d); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		id, typ, kind string
		want          error
	}{
		{active, wire.TypeAttestRequest, "attest", nil},
		{active, wire.TypeAttestRequest, "renew", admission.ErrRefused}, // not its kind
		{quarantined, wire.TypeAttestRequest, "attest", nil},
		{quarantined, wire.TypeRenewRequest, "renew", admission.ErrRefused}, // not while quarantined
		{revoked, wire.TypeAttestRequest, "attest", admission.ErrStaleSession},
	} {
		// As a broker pool reports a sender: no certificate.
		_, err := admission.Check(t.Context(), inv, broker.Identity{ClientID: c.id, DeviceID: c.id}, c.typ, c.kind)
		if !errors.Is(err, c.want) || (c.want == nil && err != nil) {
			t.Errorf("Check(%s, %s on %s) = %v, want %v", c.id[28:], c.typ, c.kind, err, c.want)
		}
	}
	if _, err := admission.Check(t.Context(), inv, broker.Identity{DeviceID: "ffffffffffffffffffffffffffffffff"}, wire.TypeHello, "hello"); !errors.Is(err, inventory.ErrNotFound) {
		t.Errorf("an unknown device: %v", err)
	}
}
