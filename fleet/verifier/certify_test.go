package verifier

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/sigil-iot/sigil/pkg/wire"
)

func TestVerifyCertify(t *testing.T) {
	ak, tk := mustAK(t, fx.ak), mustTK(t, fx.tk)
	n := nonce(t)
	attest, sig := fx.certify(t, fx.ak, fx.tk, n)
	ck, err := VerifyCertify(ak, tk, n, attest, sig)
	if err != nil {
		t.Fatal(err)
	}
	if ck.TransportKey != tk || ck.Clock.Clock == 0 {
		t.Fatalf("certified key %+v", ck)
	}
}

func TestVerifyCertifyRefusals(t *testing.T) {
	ak, tk := mustAK(t, fx.ak), mustTK(t, fx.tk)
	n := nonce(t)
	good, goodSig := fx.certify(t, fx.ak, fx.tk, n)
	otherKey, otherKeySig := fx.certify(t, fx.ak, fx.tk2, n)
	byAK2, byAK2Sig := fx.certify(t, fx.ak2, fx.tk, n)
	q := fx.quote(t, fx.ak, n, tpm2.TPMAlgSHA256, 0)
	flipped := bytes.Clone(good)
	flipped[len(flipped)-1] ^= 1

	for _, tc := range []struct {
		name        string
		nonce       []byte
		attest, sig []byte
	}{
		{"over a different key", n, otherKey, otherKeySig},
		{"wrong nonce", nonce(t), good, goodSig},
		{"no nonce", nil, good, goodSig},
		{"signed by another AK", n, byAK2, byAK2Sig},
		{"attest tampered", n, flipped, goodSig},
		{"a quote, not a certify", n, q.Attest, q.Signature},
		{"signature garbage", n, good, []byte{0, 0x18, 0}},
		{"signature trailing byte", n, good, append(bytes.Clone(goodSig), 0)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ck, err := VerifyCertify(ak, tk, tc.nonce, tc.attest, tc.sig)
			if ck != nil {
				t.Fatal("refused certify returned a key")
			}
			wantRefusal(t, err, wire.ReasonCertifyInvalid)
		})
	}
}

func TestVerifyCSR(t *testing.T) {
	ak, tk := mustAK(t, fx.ak), mustTK(t, fx.tk)
	n := nonce(t)
	attest, sig := fx.certify(t, fx.ak, fx.tk, n)
	ck, err := VerifyCertify(ak, tk, n, attest, sig)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: "device"}}
	good, err := x509.CreateCertificateRequest(rand.Reader, tmpl, tpmSigner{fx.tk})
	if err != nil {
		t.Fatal(err)
	}
	got, err := VerifyCSR(good, ck)
	if err != nil {
		t.Fatal(err)
	}
	if got.Subject.CommonName != "device" {
		t.Fatalf("CSR subject %v", got.Subject)
	}

	fromTK2, err := x509.CreateCertificateRequest(rand.Reader, tmpl, tpmSigner{fx.tk2})
	if err != nil {
		t.Fatal(err)
	}
	_, err = VerifyCSR(fromTK2, ck)
	wantRefusal(t, err, wire.ReasonCSRKeyMismatch)

	soft, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	fromSoft, err := x509.CreateCertificateRequest(rand.Reader, tmpl, soft)
	if err != nil {
		t.Fatal(err)
	}
	_, err = VerifyCSR(fromSoft, ck)
	wantRefusal(t, err, wire.ReasonCSRKeyMismatch)

	badSig := bytes.Clone(good)
	badSig[len(badSig)-2] ^= 0x55
	_, err = VerifyCSR(badSig, ck)
	wantRefusal(t, err, wire.ReasonCSRInvalid)

	_, err = VerifyCSR([]byte("not a CSR"), ck)
	wantRefusal(t, err, wire.ReasonCSRInvalid)
}
