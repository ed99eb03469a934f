package verifier

import (
	"errors"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/sigil-iot/sigil/pkg/wire"
)

// checkOutcome fails unless exactly one of value and err is set and err is
// a refusal (or, for arguments the fleet itself chose, a plain error).
func checkOutcome(t *testing.T, accepted bool, err error) {
	t.Helper()
	if accepted == (err != nil) {
		t.Fatalf("accepted %v with error %v", accepted, err)
	}
	var we *wire.Error
	if err != nil && !errors.As(err, &we) {
		t.Fatalf("error %v is not a refusal", err)
	}
}

// FuzzVerifyEK feeds public areas and certificates to VerifyEK, VerifyAK
// and VerifyTransportKeyPublic.
func FuzzVerifyEK(f *testing.F) {
	cert := fx.vendor.issueEK(f, ekKey(f, fx.rsaEK), time.Now().Add(time.Hour), nil)
	f.Add(fx.rsaEK, cert, fx.vendor.inter.Raw)
	f.Add(fx.eccEK, []byte(nil), []byte(nil))
	f.Add(fx.ak.pubBytes, []byte(nil), []byte(nil))
	f.Add(fx.tk.pubBytes, fx.vendor.inter.Raw, cert)
	trust := vendorTrust()
	f.Fuzz(func(t *testing.T, pub, cert, inter []byte) {
		ek, err := trust.VerifyEK(pub, cert, [][]byte{inter})
		checkOutcome(t, ek != nil, err)
		if ek != nil && ek.ChainVerified && ek.Cert == nil {
			t.Fatal("chain verified without a certificate")
		}
		ak, err := VerifyAK(pub)
		checkOutcome(t, ak != nil, err)
		tk, err := VerifyTransportKeyPublic(pub)
		checkOutcome(t, tk != nil, err)
	})
}

// FuzzVerifyCertify feeds certify structures and signatures to
// VerifyCertify against the fixture's AK and transport key.
func FuzzVerifyCertify(f *testing.F) {
	ak, tk := mustAK(f, fx.ak), mustTK(f, fx.tk)
	n := []byte("fuzz nonce, thirty-two bytes ...")
	attest, sig := fx.certify(f, fx.ak, fx.tk, n)
	f.Add(attest, sig)
	other, otherSig := fx.certify(f, fx.ak, fx.tk2, n)
	f.Add(other, otherSig)
	q := fx.quote(f, fx.ak, n, tpm2.TPMAlgSHA256, 0, 7)
	f.Add(q.Attest, q.Signature)
	f.Fuzz(func(t *testing.T, attest, sig []byte) {
		ck, err := VerifyCertify(ak, tk, n, attest, sig)
		checkOutcome(t, ck != nil, err)
	})
}

// FuzzVerifyQuote feeds quote structures, signatures and PCR values to
// VerifyQuote against the fixture's AK.
func FuzzVerifyQuote(f *testing.F) {
	ak := mustAK(f, fx.ak)
	n := []byte("fuzz nonce, thirty-two bytes ...")
	sel := wire.PCRSelection{Hash: uint16(tpm2.TPMAlgSHA256), PCRs: []int{0, 7}}
	q := fx.quote(f, fx.ak, n, tpm2.TPMAlgSHA256, 0, 7)
	f.Add(q.Attest, q.Signature, q.Values[0], q.Values[1])
	q1 := fx.quote(f, fx.ak, n, tpm2.TPMAlgSHA1, 0, 7)
	f.Add(q1.Attest, q1.Signature, q1.Values[0], q1.Values[1])
	attest, sig := fx.certify(f, fx.ak, fx.tk, n)
	f.Add(attest, sig, q.Values[0], q.Values[1])
	f.Fuzz(func(t *testing.T, attest, sig, v0, v1 []byte) {
		in := &wire.Quote{Attest: attest, Signature: sig, Hash: sel.Hash, PCRs: []int{0, 7}, Values: [][]byte{v0, v1}}
		vq, err := VerifyQuote(ak, n, sel, in)
		checkOutcome(t, vq != nil, err)
	})
}
