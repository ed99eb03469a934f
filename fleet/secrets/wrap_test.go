package secrets_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/sigil-iot/sigil/fleet/secrets"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// softEK returns the TPMT_PUBLIC of an endorsement key made in software
// from a TCG template (for tests that need no TPM).
func softEK(t testing.TB, alg tpm2.TPMAlgID) []byte {
	t.Helper()
	switch alg {
	case tpm2.TPMAlgRSA:
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			t.Fatal(err)
		}
		pub := tpm2.RSAEKTemplate
		pub.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: k.N.Bytes()})
		return tpm2.Marshal(pub)
	default:
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		e, err := k.PublicKey.ECDH()
		if err != nil {
			t.Fatal(err)
		}
		raw := e.Bytes() // 0x04 || X || Y
		pub := tpm2.ECCEKTemplate
		pub.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: raw[1:33]},
			Y: tpm2.TPM2BECCParameter{Buffer: raw[33:]},
		})
		return tpm2.Marshal(pub)
	}
}

func TestWrapShape(t *testing.T) {
	for _, alg := range []tpm2.TPMAlgID{tpm2.TPMAlgRSA, tpm2.TPMAlgECC} {
		ek := softEK(t, alg)
		secret := []byte("PLAINTEXT secret")
		b, err := secrets.Wrap(nil, ek, secret, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](b.Public)
		if err != nil {
			t.Fatal(err)
		}
		a := pub.ObjectAttributes
		if pub.Type != tpm2.TPMAlgKeyedHash || pub.NameAlg != tpm2.TPMAlgSHA256 || a.FixedTPM || a.FixedParent ||
			a.UserWithAuth || !a.NoDA || a.SignEncrypt || a.Decrypt || len(pub.AuthPolicy.Buffer) != 32 {
			t.Fatalf("public area: %+v", pub)
		}
		for _, part := range [][]byte{b.Public, b.Duplicate, b.Seed} {
			if bytes.Contains(part, secret) {
				t.Fatal("secret in the clear in the blob")
			}
		}
		d := b.Deliver("wifi", 3)
		if err := d.Validate(); err != nil {
			t.Fatalf("delivery does not validate: %v", err)
		}
		if d.PCRs != nil || !bytes.Equal(d.Seed, b.Seed) {
			t.Fatal("delivery fields")
		}
		// A second wrap of the same secret is different (fresh seeds).
		b2, err := secrets.Wrap(rand.Reader, ek, secret, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(b.Public, b2.Public) || bytes.Equal(b.Seed, b2.Seed) {
			t.Fatal("two wraps are alike")
		}
		// Without PCRs the policy is PolicyCommandCode(Unseal) alone, the
		// same for every wrap.
		p2, _ := tpm2.Unmarshal[tpm2.TPMTPublic](b2.Public)
		if !bytes.Equal(pub.AuthPolicy.Buffer, p2.AuthPolicy.Buffer) {
			t.Fatal("policy differs between wraps")
		}
	}
}

func TestWrapPCRPolicy(t *testing.T) {
	ek := softEK(t, tpm2.TPMAlgRSA)
	v7, v16 := bytes.Repeat([]byte{7}, 32), bytes.Repeat([]byte{16}, 32)
	policyOf := func(sel wire.PCRSelection, values ...[]byte) []byte {
		t.Helper()
		b, err := secrets.Wrap(nil, ek, []byte("s"), &sel, values)
		if err != nil {
			t.Fatal(err)
		}
		if b.PCRs == nil || b.PCRs.Hash != sel.Hash {
			t.Fatal("blob lost the selection")
		}
		pub, _ := tpm2.Unmarshal[tpm2.TPMTPublic](b.Public)
		return pub.AuthPolicy.Buffer
	}
	bank := uint16(tpm2.TPMAlgSHA256)
	a := policyOf(wire.PCRSelection{Hash: bank, PCRs: []int{7, 16}}, v7, v16)
	// Values are taken in the selection's order and sorted by PCR index.
	if b := policyOf(wire.PCRSelection{Hash: bank, PCRs: []int{16, 7}}, v16, v7); !bytes.Equal(a, b) {
		t.Fatal("policy depends on the selection order")
	}
	if b := policyOf(wire.PCRSelection{Hash: bank, PCRs: []int{16, 7}}, v7, v16); bytes.Equal(a, b) {
		t.Fatal("swapped values give the same policy")
	}
	if b := policyOf(wire.PCRSelection{Hash: bank, PCRs: []int{7, 17}}, v7, v16); bytes.Equal(a, b) {
		t.Fatal("another PCR gives the same policy")
	}
	// An independent computation: PolicyPCR then PolicyCommandCode(Unseal).
	calc, err := tpm2.NewPolicyCalculator(tpm2.TPMAlgSHA256)
	if err != nil {
		t.Fatal(err)
	}
	sel := tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: tpm2.TPMAlgSHA256, PCRSelect: []byte{0x80, 0x00, 0x01}}}}
	digest := sha256.Sum256(append(bytes.Clone(v7), v16...))
	if err := (tpm2.PolicyPCR{PcrDigest: tpm2.TPM2BDigest{Buffer: digest[:]}, Pcrs: sel}).Update(calc); err != nil {
		t.Fatal(err)
	}
	if err := (tpm2.PolicyCommandCode{Code: tpm2.TPMCCUnseal}).Update(calc); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(calc.Hash().Digest, a) {
		t.Fatal("policy is not PolicyPCR + PolicyCommandCode(Unseal)")
	}
	// SHA-1 bank: 20-byte values.
	policyOf(wire.PCRSelection{Hash: uint16(tpm2.TPMAlgSHA1), PCRs: []int{0}}, make([]byte, 20))
}

func TestWrapRefusals(t *testing.T) {
	ek := softEK(t, tpm2.TPMAlgRSA)
	bank := uint16(tpm2.TPMAlgSHA256)
	v := make([]byte, 32)
	signing := tpm2.RSAEKTemplate
	signing.ObjectAttributes.SignEncrypt = true
	for name, c := range map[string]struct {
		ek, secret []byte
		sel        *wire.PCRSelection
		values     [][]byte
	}{
		"empty secret":      {ek, nil, nil, nil},
		"large secret":      {ek, make([]byte, secrets.MaxValue+1), nil, nil},
		"garbage EK":        {[]byte{1, 2, 3}, []byte("s"), nil, nil},
		"signing EK":        {tpm2.Marshal(signing), []byte("s"), nil, nil},
		"values, no PCRs":   {ek, []byte("s"), nil, [][]byte{v}},
		"too few values":    {ek, []byte("s"), &wire.PCRSelection{Hash: bank, PCRs: []int{1, 2}}, [][]byte{v}},
		"short value":       {ek, []byte("s"), &wire.PCRSelection{Hash: bank, PCRs: []int{1}}, [][]byte{v[:20]}},
		"bad PCR":           {ek, []byte("s"), &wire.PCRSelection{Hash: bank, PCRs: []int{24}}, [][]byte{v}},
		"duplicate PCR":     {ek, []byte("s"), &wire.PCRSelection{Hash: bank, PCRs: []int{1, 1}}, [][]byte{v, v}},
		"unknown bank":      {ek, []byte("s"), &wire.PCRSelection{Hash: 0x1234, PCRs: []int{1}}, [][]byte{v}},
		"empty selection":   {ek, []byte("s"), &wire.PCRSelection{Hash: bank}, nil},
		"nil EK public":     {nil, []byte("s"), nil, nil},
		"unsealable secret": {ek, make([]byte, 129), nil, nil},
	} {
		if _, err := secrets.Wrap(nil, c.ek, c.secret, c.sel, c.values); err == nil || !strings.HasPrefix(err.Error(), "secrets: wrap: ") {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := secrets.Wrap(nil, ek, make([]byte, secrets.MaxValue), nil, nil); err != nil {
		t.Fatalf("largest secret: %v", err)
	}
}

// BenchmarkWrap is the fleet's cost of sealing one secret to one device.
func BenchmarkWrap(b *testing.B) {
	sel := wire.PCRSelection{Hash: uint16(tpm2.TPMAlgSHA256), PCRs: []int{7, 16}}
	values := [][]byte{make([]byte, 32), make([]byte, 32)}
	secret := bytes.Repeat([]byte{1}, 64)
	for _, c := range []struct {
		name string
		alg  tpm2.TPMAlgID
	}{{"RSA2048EK", tpm2.TPMAlgRSA}, {"ECCP256EK", tpm2.TPMAlgECC}} {
		ek := softEK(b, c.alg)
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				if _, err := secrets.Wrap(nil, ek, secret, &sel, values); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
