package softtpm_test

import (
	"bytes"
	"crypto/rand"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/sigil-iot/sigil/device/tpm"
	"github.com/sigil-iot/sigil/fleet/secrets"
	"github.com/sigil-iot/sigil/pkg/wire"
	"github.com/sigil-iot/sigil/sim/softtpm"
	"github.com/sigil-iot/sigil/sim/softtpm/conformance"
)

// The fuzz tests feed the bytes a device receives from the network (or
// reads back from its state store) to the operations that parse them. None
// may panic, and only the authentic input of the seed corpus may succeed:
// anything else that succeeded would be a forgery the TPM let through.

// FuzzImportSecret fuzzes a secret delivery into ImportSecret and Unseal
// (conformance.FuzzImportSecret).
func FuzzImportSecret(f *testing.F) {
	tp, err := softtpm.New()
	if err != nil {
		f.Fatal(err)
	}
	conformance.FuzzImportSecret(f, tp)
}

// FuzzUnseal fuzzes an imported blob as the device's state store returns
// it.
func FuzzUnseal(f *testing.F) {
	tp, err := softtpm.New()
	if err != nil {
		f.Fatal(err)
	}
	ek, err := tp.EK()
	if err != nil {
		f.Fatal(err)
	}
	blob, err := secrets.Wrap(rand.Reader, ek.Public, []byte("at rest"), nil, nil)
	if err != nil {
		f.Fatal(err)
	}
	sealed, err := tp.ImportSecret(blob.Public, blob.Duplicate, blob.Seed, nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(sealed.Public, sealed.Private)
	f.Add(sealed.Public, sealed.Private[:40])
	f.Add(sealed.Public[:20], sealed.Private)
	f.Fuzz(func(t *testing.T, public, private []byte) {
		got, err := tp.Unseal(&tpm.SealedBlob{Public: public, Private: private})
		if err != nil {
			return
		}
		if !bytes.Equal(public, sealed.Public) || !bytes.Equal(private, sealed.Private) {
			t.Fatalf("a modified blob unsealed to %q: public %x private %x", got, public, private)
		}
	})
}

// FuzzActivateCredential fuzzes an enrollment challenge's credential blob
// and encrypted secret (ECC EK).
func FuzzActivateCredential(f *testing.F) {
	tp, err := softtpm.New()
	if err != nil {
		f.Fatal(err)
	}
	secret := bytes.Repeat([]byte{0xc3}, 32)
	ak, credBlob, encSecret := credential(f, tp, secret)
	if got, err := tp.ActivateCredential(ak, credBlob, encSecret); err != nil || !bytes.Equal(got, secret) {
		f.Fatalf("activate: %x %v", got, err)
	}
	f.Add(credBlob, encSecret)
	f.Add(credBlob[:10], encSecret)
	f.Add(credBlob, encSecret[:20])
	f.Add([]byte{0, 0}, []byte{0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, blob, enc []byte) {
		ch := wire.EnrollChallenge{Session: make([]byte, 16), CredentialBlob: blob, EncryptedSecret: enc,
			Nonce: make([]byte, 32), Selection: wire.PCRSelection{Hash: uint16(tpm2.TPMAlgSHA256), PCRs: []int{0}}, Expires: 1}
		if ch.Validate() != nil {
			return
		}
		got, err := tp.ActivateCredential(ak, blob, enc)
		if err != nil {
			return
		}
		if !bytes.Equal(blob, credBlob) || !bytes.Equal(enc, encSecret) || !bytes.Equal(got, secret) {
			t.Fatalf("a modified credential activated to %x: blob %x secret %x", got, blob, enc)
		}
	})
}

// FuzzKeyBlob fuzzes a key blob as the device's state store returns it
// into Quote (which loads it under the storage root key).
func FuzzKeyBlob(f *testing.F) {
	tp, err := softtpm.New()
	if err != nil {
		f.Fatal(err)
	}
	ak, err := tp.CreateAK()
	if err != nil {
		f.Fatal(err)
	}
	tk, err := tp.CreateTransportKey()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(ak.Public, ak.Private)
	f.Add(tk.Public, ak.Private)
	f.Add(ak.Public, ak.Private[:50])
	f.Add(append(bytes.Clone(ak.Public), 0), ak.Private)
	sel := wire.PCRSelection{Hash: uint16(tpm2.TPMAlgSHA256), PCRs: []int{0}}
	f.Fuzz(func(t *testing.T, public, private []byte) {
		if _, err := tp.Quote(&tpm.KeyBlob{Public: public, Private: private}, nil, sel); err != nil {
			return
		}
		authentic := (bytes.Equal(public, ak.Public) && bytes.Equal(private, ak.Private)) ||
			(bytes.Equal(public, tk.Public) && bytes.Equal(private, tk.Private))
		if !authentic {
			t.Fatalf("a modified key blob loaded: public %x private %x", public, private)
		}
	})
}
