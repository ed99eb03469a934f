package conformance

import (
	"bytes"
	"crypto/rand"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/sigil-iot/sigil/fleet/secrets"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// FuzzImportSecret feeds arbitrary secret deliveries (wire.SecretDeliver's
// Public, Duplicate and Seed, bounded as the device bounds them) to tp's
// ImportSecret and Unseal. None may panic, and only the authentic blob of
// the seed corpus may import: anything else that imported would be a
// forgery the TPM let through. What the authentic blob unseals to is the
// one wrapped secret, and never through a PCR policy it was not bound to.
func FuzzImportSecret(f *testing.F, tp TPM) {
	ek, err := tp.EK()
	if err != nil {
		f.Fatal(err)
	}
	secret := []byte("fuzz secret")
	blob, err := secrets.Wrap(rand.Reader, ek.Public, secret, nil, nil)
	if err != nil {
		f.Fatal(err)
	}
	// The authentic blob works, so the property below is not vacuous.
	if sealed, err := tp.ImportSecret(blob.Public, blob.Duplicate, blob.Seed, nil); err != nil {
		f.Fatal(err)
	} else if got, err := tp.Unseal(sealed); err != nil || !bytes.Equal(got, secret) {
		f.Fatalf("unseal: %q %v", got, err)
	}
	f.Add(blob.Public, blob.Duplicate, blob.Seed, false)
	f.Add(blob.Public, blob.Duplicate, blob.Seed, true)
	f.Add(blob.Public[:10], blob.Duplicate, blob.Seed, false)
	f.Add(append(bytes.Clone(blob.Public), 0), blob.Duplicate, blob.Seed, false)
	f.Add(blob.Public, blob.Duplicate[2:], blob.Seed, false)
	f.Add(blob.Public, blob.Duplicate, blob.Seed[:len(blob.Seed)/2], false)
	f.Add(ek.Public, blob.Duplicate, blob.Seed, false)
	f.Add([]byte{0, 8, 0, 0xb}, []byte{0}, []byte{0}, false)

	sel := &wire.PCRSelection{Hash: uint16(tpm2.TPMAlgSHA256), PCRs: []int{16}}
	f.Fuzz(func(t *testing.T, public, duplicate, seed []byte, bound bool) {
		d := wire.SecretDeliver{Name: "fuzz", Version: 1, Public: public, Duplicate: duplicate, Seed: seed}
		if bound {
			d.PCRs = sel
		}
		if d.Validate() != nil {
			return // the device drops the message before the TPM sees it
		}
		sealed, err := tp.ImportSecret(d.Public, d.Duplicate, d.Seed, d.PCRs)
		if err != nil {
			return
		}
		if !bytes.Equal(public, blob.Public) || !bytes.Equal(duplicate, blob.Duplicate) || !bytes.Equal(seed, blob.Seed) {
			t.Fatalf("a modified delivery imported: public %x duplicate %x seed %x", public, duplicate, seed)
		}
		got, err := tp.Unseal(sealed)
		switch {
		case bound && err == nil:
			t.Fatal("unbound secret unsealed through a PCR policy")
		case !bound && (err != nil || !bytes.Equal(got, secret)):
			t.Fatalf("imported delivery unseals to %q, %v", got, err)
		}
	})
}
