package conformance

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/sigil-iot/sigil/device/tpm"
	"github.com/sigil-iot/sigil/fleet/secrets"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// wrapFor seals secret to d's EK with the fleet's secrets.Wrap.
func wrapFor(t *testing.T, d *Device, secret []byte, sel *wire.PCRSelection, values [][]byte) *secrets.Blob {
	t.Helper()
	ek, err := d.EK()
	if err != nil {
		t.Fatal(err)
	}
	b, err := secrets.Wrap(rand.Reader, ek.Public, secret, sel, values)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func importBlob(d *Device, b *secrets.Blob) (*tpm.SealedBlob, error) {
	return d.ImportSecret(b.Public, b.Duplicate, b.Seed, b.PCRs)
}

// testSecrets delivers secrets sealed by the fleet (secrets.Wrap): each
// device imports and unseals its own, never the other's, and nothing
// altered imports.
func testSecrets(t *testing.T, e *env) {
	secret := []byte("db-password: correct horse battery staple")
	blobA := wrapFor(t, e.a, secret, nil, nil)
	sealed, err := importBlob(e.a, blobA)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(sealed.Private, secret) || bytes.Contains(blobA.Duplicate, secret) {
		t.Fatal("secret in the clear in a blob")
	}
	for range 2 { // the imported blob is reusable
		if got, err := e.a.Unseal(sealed); err != nil || !bytes.Equal(got, secret) {
			t.Fatalf("unseal: %q %v", got, err)
		}
	}

	// Another device can neither import the delivery nor unseal the
	// imported blob; its own delivery works.
	if _, err := importBlob(e.b, blobA); err == nil {
		t.Error("device B imported device A's secret")
	}
	if _, err := e.b.Unseal(sealed); err == nil {
		t.Error("device B unsealed device A's imported secret")
	}
	sealedB, err := importBlob(e.b, wrapFor(t, e.b, []byte("b"), nil, nil))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := e.b.Unseal(sealedB); err != nil || string(got) != "b" {
		t.Fatalf("B unseal: %q %v", got, err)
	}

	other := wrapFor(t, e.a, []byte("another secret"), nil, nil)
	for name, bl := range map[string]*secrets.Blob{
		"duplicate":   {Public: blobA.Public, Duplicate: flip(blobA.Duplicate, 40), Seed: blobA.Seed},
		"outer HMAC":  {Public: blobA.Public, Duplicate: flip(blobA.Duplicate, 5), Seed: blobA.Seed},
		"seed":        {Public: blobA.Public, Duplicate: blobA.Duplicate, Seed: flip(blobA.Seed, 20)},
		"policy":      {Public: flip(blobA.Public, 20), Duplicate: blobA.Duplicate, Seed: blobA.Seed},
		"mixed blobs": {Public: other.Public, Duplicate: blobA.Duplicate, Seed: blobA.Seed},
		"mixed seed":  {Public: blobA.Public, Duplicate: blobA.Duplicate, Seed: other.Seed},
		"truncated":   {Public: blobA.Public, Duplicate: blobA.Duplicate[:len(blobA.Duplicate)-1], Seed: blobA.Seed},
	} {
		if _, err := importBlob(e.a, bl); err == nil {
			t.Errorf("%s altered: imported", name)
		}
	}
	bad := *sealed
	bad.Private = flip(sealed.Private, 50)
	if _, err := e.a.Unseal(&bad); err == nil {
		t.Error("altered imported blob unsealed")
	}
	bad = *sealed
	bad.Public = other.Public
	if _, err := e.a.Unseal(&bad); err == nil {
		t.Error("imported blob unsealed under another public area")
	}

	// Only sealed data objects are imported.
	ek, err := e.a.EK()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.a.ImportSecret(ek.Public, blobA.Duplicate, blobA.Seed, nil); err == nil {
		t.Error("imported with a key's public area")
	}
	if _, err := e.a.ImportSecret(nil, nil, nil, nil); err == nil {
		t.Error("empty delivery imported")
	}
	if _, err := e.a.Unseal(nil); err == nil {
		t.Error("nil blob unsealed")
	}
}

// testSecretPCRBound seals a secret to the current values of PCRs 16 and
// 9: it unseals; a blob bound to other values never does; after PCR 16 is
// extended it fails with a policy failure until a reboot resets PCR 16.
func testSecretPCRBound(t *testing.T, e *env) {
	if err := e.a.Reboot(); err != nil {
		t.Fatal(err)
	}
	sel := sha256Sel(16, 9)
	values, err := e.a.ReadPCRs(sel)
	if err != nil {
		t.Fatal(err)
	}
	secret := []byte("bound to boot state")
	sealed, err := importBlob(e.a, wrapFor(t, e.a, secret, &sel, values))
	if err != nil {
		t.Fatal(err)
	}
	if sealed.PCRs == nil || len(sealed.PCRs.PCRs) != 2 {
		t.Fatalf("sealed blob lost its selection: %+v", sealed.PCRs)
	}
	if got, err := e.a.Unseal(sealed); err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("unseal: %q %v", got, err)
	}

	wrong, err := importBlob(e.a, wrapFor(t, e.a, secret, &sel, [][]byte{values[0], bytes.Repeat([]byte{1}, 32)}))
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.a.Unseal(wrong)
	isRC(t, "unseal bound to other PCR values", err, tpm2.TPMRCPolicyFail)
	noSel := *sealed
	noSel.PCRs = nil
	if _, err := e.a.Unseal(&noSel); err == nil {
		t.Error("PCR-bound secret unsealed without its PCR policy")
	}

	d := sha256.Sum256([]byte("unexpected software"))
	if err := e.a.ExtendPCR(16, d[:]); err != nil {
		t.Fatal(err)
	}
	_, err = e.a.Unseal(sealed)
	isRC(t, "unseal after PCR 16 changed", err, tpm2.TPMRCPolicyFail)
	if err := e.a.Reboot(); err != nil {
		t.Fatal(err)
	}
	if got, err := e.a.Unseal(sealed); err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("unseal after reboot: %q %v", got, err)
	}
}
