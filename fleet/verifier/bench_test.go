package verifier

import (
	"crypto/rand"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/sigil-iot/sigil/pkg/wire"
)

// BenchmarkVerifyEK measures an EK certificate chain check (RSA-2048 vendor
// CA, intermediate presented by the device): cold verifies the whole chain,
// cached finds the intermediate verified by an earlier enrollment and checks
// one signature.
func BenchmarkVerifyEK(b *testing.B) {
	cert := fx.vendor.issueEK(b, ekKey(b, fx.rsaEK), time.Now().Add(time.Hour), nil)
	chain := [][]byte{fx.vendor.inter.Raw}
	b.Run("none", func(b *testing.B) {
		trust := vendorTrust()
		for b.Loop() {
			if _, err := trust.VerifyEK(fx.rsaEK, nil, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("cold", func(b *testing.B) {
		for b.Loop() {
			if ek, err := vendorTrust().VerifyEK(fx.rsaEK, cert, chain); err != nil || !ek.ChainVerified {
				b.Fatal(err, ek.ChainErr)
			}
		}
	})
	b.Run("cached", func(b *testing.B) {
		trust := vendorTrust()
		for b.Loop() {
			if ek, err := trust.VerifyEK(fx.rsaEK, cert, chain); err != nil || !ek.ChainVerified {
				b.Fatal(err, ek.ChainErr)
			}
		}
	})
}

func BenchmarkVerifyAK(b *testing.B) {
	for b.Loop() {
		if _, err := VerifyAK(fx.ak.pubBytes); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkMakeCredential(b *testing.B) {
	ak := mustAK(b, fx.ak)
	secret := make([]byte, 32)
	for _, tc := range []struct {
		name string
		ek   []byte
	}{{"RSA-2048", fx.rsaEK}, {"P-256", fx.eccEK}} {
		ek := mustEK(b, tc.ek)
		b.Run(tc.name, func(b *testing.B) {
			for b.Loop() {
				if _, _, err := MakeCredential(rand.Reader, ek, ak, secret); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkVerifyCertify(b *testing.B) {
	ak, tk := mustAK(b, fx.ak), mustTK(b, fx.tk)
	n := nonce(b)
	attest, sig := fx.certify(b, fx.ak, fx.tk, n)
	for b.Loop() {
		if _, err := VerifyCertify(ak, tk, n, attest, sig); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerifyQuote(b *testing.B) {
	ak := mustAK(b, fx.ak)
	n := nonce(b)
	q := fx.quote(b, fx.ak, n, tpm2.TPMAlgSHA256, 0, 1, 7, 16)
	sel := wire.PCRSelection{Hash: q.Hash, PCRs: q.PCRs}
	for b.Loop() {
		if _, err := VerifyQuote(ak, n, sel, q); err != nil {
			b.Fatal(err)
		}
	}
}
