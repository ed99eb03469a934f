package conformance

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"slices"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/sigil-iot/sigil/device/tpm"
	"github.com/sigil-iot/sigil/fleet/verifier"
	"github.com/sigil-iot/sigil/pkg/wire"
	"github.com/sigil-iot/sigil/sim/softtpm"
)

func sha256Sel(pcrs ...int) wire.PCRSelection {
	return wire.PCRSelection{Hash: uint16(tpm2.TPMAlgSHA256), PCRs: pcrs}
}

// trust is the fleet's EK trust in the backend's manufacturer.
func (e *env) trust() *verifier.EKTrust {
	return &verifier.EKTrust{Roots: e.roots, Intermediates: e.interms}
}

// verifiedEK has the fleet verify d's EK and its certificate chain.
func (e *env) verifiedEK(t *testing.T, d *Device) *verifier.EK {
	t.Helper()
	ek, err := d.EK()
	if err != nil {
		t.Fatal(err)
	}
	v, err := e.trust().VerifyEK(ek.Public, ek.Cert, nil)
	if err != nil {
		t.Fatalf("fleet refuses the EK: %v", err)
	}
	if !v.ChainVerified {
		t.Fatalf("EK certificate does not chain to the manufacturer CA: %v", v.ChainErr)
	}
	return v
}

func verifyAK(t *testing.T, d *Device, ak *tpm.KeyBlob) *verifier.AK {
	t.Helper()
	v, err := verifier.VerifyAK(ak.Public)
	if err != nil {
		t.Fatalf("fleet refuses the AK: %v", err)
	}
	pub, err := d.PublicKey(ak)
	if err != nil {
		t.Fatal(err)
	}
	if !v.Key.Equal(pub) {
		t.Fatal("PublicKey of the AK differs from its public area's key")
	}
	return v
}

func verifyTK(t *testing.T, tk *tpm.KeyBlob) *verifier.TransportKey {
	t.Helper()
	v, err := verifier.VerifyTransportKeyPublic(tk.Public)
	if err != nil {
		t.Fatalf("fleet refuses the transport key: %v", err)
	}
	return v
}

// refused fails t unless err is a refusal of the fleet with reason.
func refused(t *testing.T, what string, err error, reason wire.Reason) {
	t.Helper()
	var we *wire.Error
	if !errors.As(err, &we) || we.Reason != reason {
		t.Errorf("%s: got %v, want a refusal with reason %v", what, err, reason)
	}
}

// isRC fails t unless err carries the TPM response code rc.
func isRC(t *testing.T, what string, err error, rc tpm2.TPMRC) {
	t.Helper()
	if !errors.Is(err, rc) {
		t.Errorf("%s: got %v, want %v", what, err, rc)
	}
}

func flip(b []byte, i int) []byte {
	b = bytes.Clone(b)
	b[i%len(b)] ^= 0x40
	return b
}

// testEK checks the EK and its certificate with the fleet's VerifyEK: a TCG
// endorsement key whose certificate chains to the manufacturer CA, with
// the traits of real EK certificates; stable; unique per TPM; untrusted by
// a fleet that trusts another manufacturer.
func testEK(t *testing.T, e *env) {
	ek, err := e.a.EK()
	if err != nil {
		t.Fatal(err)
	}
	if len(ek.Cert) == 0 {
		t.Fatal("no EK certificate")
	}
	v := e.verifiedEK(t, e.a)
	if !v.Key.(interface{ Equal(crypto.PublicKey) bool }).Equal(ek.Key) {
		t.Fatal("EK.Key differs from the key of EK.Public")
	}
	if !v.Cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(ek.Key) {
		t.Fatal("EK certificate is for another key")
	}
	again, err := e.a.EK()
	if err != nil || !bytes.Equal(again.Public, ek.Public) || !bytes.Equal(again.Cert, ek.Cert) {
		t.Fatalf("EK changed between calls (%v)", err)
	}
	vb := e.verifiedEK(t, e.b)
	if vb.DeviceID == v.DeviceID || vb.Fingerprint == v.Fingerprint {
		t.Fatal("two TPMs share an EK")
	}

	// The traits the fleet copes with: Go's x509 alone refuses the
	// certificate for its critical directoryName SAN, and the TCG EK usage.
	cert, err := x509.ParseCertificate(ek.Cert)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(cert.UnhandledCriticalExtensions, func(o asn1.ObjectIdentifier) bool { return o.Equal(asn1.ObjectIdentifier{2, 5, 29, 17}) }) {
		t.Error("EK certificate lacks the critical directoryName subject alternative name of the TCG profile")
	}
	if !slices.ContainsFunc(cert.UnknownExtKeyUsage, func(o asn1.ObjectIdentifier) bool { return o.Equal(asn1.ObjectIdentifier{2, 23, 133, 8, 1}) }) {
		t.Error("EK certificate lacks the TCG EK certificate extended key usage")
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: e.roots, Intermediates: e.interms, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err == nil {
		t.Error("Go's x509 accepts the EK certificate unchanged: it lacks the critical SAN real ones have")
	}

	// A fleet that trusts another manufacturer does not trust this EK.
	other, err := softtpm.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	w, err := (&verifier.EKTrust{Roots: other.Roots(), Intermediates: other.Intermediates()}).VerifyEK(ek.Public, ek.Cert, nil)
	if err != nil {
		t.Fatal(err)
	}
	if w.ChainVerified {
		t.Fatal("EK certificate chains to a manufacturer that did not issue it")
	}
}

// testKeyTemplates checks the AK and transport key with the fleet's
// attribute checks, and that their public areas are device/tpm's templates
// with only the point filled in.
func testKeyTemplates(t *testing.T, e *env) {
	ak := verifyAK(t, e.a, e.akA)
	verifyTK(t, e.tkA)
	_, err := verifier.VerifyAK(e.tkA.Public)
	refused(t, "transport key as AK", err, wire.ReasonAKAttributes)
	_, err = verifier.VerifyTransportKeyPublic(e.akA.Public)
	refused(t, "AK as transport key", err, wire.ReasonTKAttributes)

	for _, c := range []struct {
		name     string
		blob     *tpm.KeyBlob
		template tpm2.TPMTPublic
	}{{"AK", e.akA, tpm.AKTemplate()}, {"transport key", e.tkA, tpm.TransportKeyTemplate()}} {
		pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](c.blob.Public)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(tpm2.Marshal(pub), c.blob.Public) {
			t.Errorf("%s: public area is not canonical", c.name)
		}
		point, err := pub.Unique.ECC()
		if err != nil {
			t.Fatal(err)
		}
		if len(point.X.Buffer) != 32 || len(point.Y.Buffer) != 32 {
			t.Errorf("%s: point coordinates of %d and %d bytes, want 32", c.name, len(point.X.Buffer), len(point.Y.Buffer))
		}
		pub.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{})
		if !bytes.Equal(tpm2.Marshal(pub), tpm2.Marshal(c.template)) {
			t.Errorf("%s: public area is not device/tpm's template:\n got %x\nwant %x", c.name, tpm2.Marshal(pub), tpm2.Marshal(c.template))
		}
		if len(c.blob.Private) == 0 {
			t.Errorf("%s: no private area", c.name)
		}
	}
	ak2, err := e.a.CreateAK()
	if err != nil {
		t.Fatal(err)
	}
	if v := verifyAK(t, e.a, ak2); bytes.Equal(v.Name, ak.Name) {
		t.Fatal("two AKs with one name")
	}
}

// testActivateCredential runs the fleet's MakeCredential and
// CheckActivation around ActivateCredential, and checks that a credential
// for another AK, for another TPM's EK, or altered, is refused.
func testActivateCredential(t *testing.T, e *env) {
	ek := e.verifiedEK(t, e.a)
	ak := verifyAK(t, e.a, e.akA)
	secret := bytes.Repeat([]byte{0x5a}, 32)
	blob, enc, err := verifier.MakeCredential(rand.Reader, ek, ak, secret)
	if err != nil {
		t.Fatal(err)
	}
	got, err := e.a.ActivateCredential(e.akA, blob, enc)
	if err != nil {
		t.Fatal(err)
	}
	session, nonce := []byte("session"), []byte("nonce")
	if err := verifier.CheckActivation(secret, session, nonce, verifier.ActivationProof(got, session, nonce)); err != nil {
		t.Fatalf("fleet refuses the activation: %v", err)
	}

	ak2, err := e.a.CreateAK()
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.a.ActivateCredential(ak2, blob, enc)
	isRC(t, "credential for another AK", err, tpm2.TPMRCIntegrity)

	ekB := e.verifiedEK(t, e.b)
	blobB, encB, err := verifier.MakeCredential(rand.Reader, ekB, ak, secret)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.a.ActivateCredential(e.akA, blobB, encB); err == nil {
		t.Error("credential made for another TPM's EK activated")
	}
	if _, err := e.a.ActivateCredential(e.akA, flip(blob, len(blob)-1), enc); !errors.Is(err, tpm2.TPMRCIntegrity) {
		t.Errorf("altered credential: %v, want TPM_RC_INTEGRITY", err)
	}
	if _, err := e.a.ActivateCredential(e.akA, blob, flip(enc, 5)); err == nil {
		t.Error("credential with an altered seed activated")
	}
	// The other TPM, holding the blob and the AK's public area, cannot.
	if _, err := e.b.ActivateCredential(e.akA, blob, enc); err == nil {
		t.Error("another TPM activated the credential")
	}
}

// testCertify has the fleet's VerifyCertify and VerifyCSR check a
// TPM2_Certify of the transport key by the AK and a CSR signed with it,
// and refuse the wrong nonce, another AK and another key.
func testCertify(t *testing.T, e *env) {
	ak := verifyAK(t, e.a, e.akA)
	tk := verifyTK(t, e.tkA)
	nonce := bytes.Repeat([]byte{7}, 32)
	attest, sig, err := e.a.Certify(e.akA, e.tkA, nonce)
	if err != nil {
		t.Fatal(err)
	}
	ck, err := verifier.VerifyCertify(ak, tk, nonce, attest, sig)
	if err != nil {
		t.Fatalf("fleet refuses the certification: %v", err)
	}
	checkAttestShape(t, attest, sig)

	s, err := e.a.Signer(e.tkA)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "device"}}, s)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := verifier.VerifyCSR(csr, ck); err != nil {
		t.Fatalf("fleet refuses the CSR: %v", err)
	}

	_, err = verifier.VerifyCertify(ak, tk, bytes.Repeat([]byte{8}, 32), attest, sig)
	refused(t, "certify with another nonce", err, wire.ReasonCertifyInvalid)
	akB := verifyAK(t, e.b, e.akB)
	_, err = verifier.VerifyCertify(akB, tk, nonce, attest, sig)
	refused(t, "certify verified with another AK", err, wire.ReasonCertifyInvalid)
	tk2blob, err := e.a.CreateTransportKey()
	if err != nil {
		t.Fatal(err)
	}
	_, err = verifier.VerifyCertify(ak, verifyTK(t, tk2blob), nonce, attest, sig)
	refused(t, "certify presented for another key", err, wire.ReasonCertifyInvalid)
	_, err = verifier.VerifyCertify(ak, tk, nonce, flip(attest, len(attest)-3), sig)
	refused(t, "altered certify", err, wire.ReasonCertifyInvalid)

	// The largest qualifying data a TPM takes is a TPMT_HA (66 bytes).
	if _, _, err := e.a.Certify(e.akA, e.tkA, make([]byte, 66)); err != nil {
		t.Errorf("66-byte nonce: %v", err)
	}
	_, _, err = e.a.Certify(e.akA, e.tkA, make([]byte, 67))
	isRC(t, "67-byte nonce", err, tpm2.TPMRCSize)
}

// checkAttestShape checks what the fleet does not: the signature's r and
// s are padded to the curve size, and the qualified signer is a SHA-256
// name.
func checkAttestShape(t *testing.T, attest, sig []byte) {
	t.Helper()
	s, err := tpm2.Unmarshal[tpm2.TPMTSignature](sig)
	if err != nil {
		t.Fatal(err)
	}
	ecc, err := s.Signature.ECDSA()
	if err != nil {
		t.Fatal(err)
	}
	if len(ecc.SignatureR.Buffer) != 32 || len(ecc.SignatureS.Buffer) != 32 {
		t.Errorf("signature r and s of %d and %d bytes, want 32", len(ecc.SignatureR.Buffer), len(ecc.SignatureS.Buffer))
	}
	a, err := tpm2.Unmarshal[tpm2.TPMSAttest](attest)
	if err != nil {
		t.Fatal(err)
	}
	if qn := a.QualifiedSigner.Buffer; len(qn) != 34 || qn[0] != 0 || qn[1] != 0x0b {
		t.Errorf("qualified signer %x is not a SHA-256 name", qn)
	}
	if !a.ClockInfo.Safe {
		t.Error("clock not safe")
	}
}

// testQuote has the fleet's VerifyQuote check quotes over the selection it
// asks for, and refuse another AK, another nonce and altered values; an
// extend shows in the next quote.
func testQuote(t *testing.T, e *env) {
	ak := verifyAK(t, e.a, e.akA)
	sel := sha256Sel(16, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 14, 23)
	nonce := bytes.Repeat([]byte{9}, 32)
	q, err := e.a.Quote(e.akA, nonce, sel)
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Validate(); err != nil {
		t.Fatal(err)
	}
	vq, err := verifier.VerifyQuote(ak, nonce, sel, q)
	if err != nil {
		t.Fatalf("fleet refuses the quote: %v", err)
	}
	checkAttestShape(t, q.Attest, q.Signature)
	values, err := e.a.ReadPCRs(sel)
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range sel.PCRs {
		if !bytes.Equal(vq.PCRs[p], values[i]) {
			t.Errorf("quoted PCR %d = %x, ReadPCRs says %x", p, vq.PCRs[p], values[i])
		}
	}

	akB := verifyAK(t, e.b, e.akB)
	_, err = verifier.VerifyQuote(akB, nonce, sel, q)
	refused(t, "quote verified with another AK", err, wire.ReasonQuoteInvalid)
	_, err = verifier.VerifyQuote(ak, bytes.Repeat([]byte{1}, 32), sel, q)
	refused(t, "quote with another nonce", err, wire.ReasonQuoteInvalid)
	bad := *q
	bad.Values = slices.Clone(q.Values)
	bad.Values[0] = flip(q.Values[0], 0)
	_, err = verifier.VerifyQuote(ak, nonce, sel, &bad)
	refused(t, "quote with an altered PCR value", err, wire.ReasonQuoteInvalid)
	_, err = verifier.VerifyQuote(ak, nonce, sha256Sel(0, 1), q)
	refused(t, "quote of another selection", err, wire.ReasonQuoteInvalid)

	// An extend shows in the next quote.
	d := sha256.Sum256([]byte("quote test"))
	if err := e.a.ExtendPCR(16, d[:]); err != nil {
		t.Fatal(err)
	}
	q2, err := e.a.Quote(e.akA, nonce, sel)
	if err != nil {
		t.Fatal(err)
	}
	vq2, err := verifier.VerifyQuote(ak, nonce, sel, q2)
	if err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(append(bytes.Clone(vq.PCRs[16]), d[:]...))
	if !bytes.Equal(vq2.PCRs[16], want[:]) {
		t.Fatalf("PCR 16 after extend = %x, want %x", vq2.PCRs[16], want)
	}
	if vq2.Clock.Clock < vq.Clock.Clock || vq2.Clock.ResetCount != vq.Clock.ResetCount || vq2.Clock.RestartCount != vq.Clock.RestartCount {
		t.Errorf("clock info went from %+v to %+v without a reboot", vq.Clock, vq2.Clock)
	}
	if vq2.FirmwareVersion != vq.FirmwareVersion {
		t.Error("firmware version changed between quotes")
	}

	if _, err := e.a.Quote(e.akA, make([]byte, 66), sel); err != nil {
		t.Errorf("66-byte nonce: %v", err)
	}
	_, err = e.a.Quote(e.akA, make([]byte, 67), sel)
	isRC(t, "67-byte nonce", err, tpm2.TPMRCSize)
	if _, err := e.a.Quote(e.akA, nonce, wire.PCRSelection{Hash: uint16(tpm2.TPMAlgSHA1), PCRs: []int{0}}); err == nil {
		t.Error("quote of the SHA-1 bank, which is not allocated, succeeded")
	}
	// A transport key is not an AK, but a TPM quotes with any signing key;
	// the fleet refuses it as an AK.
	if _, err := e.a.Quote(e.tkA, nonce, sel); err != nil {
		t.Errorf("quote with the transport key: %v", err)
	}
}

// testPCRResetValues reads all 24 PCRs of a fresh TPM: PC Client reset
// values (0-16 and 23 zero, 17-22 all ones).
func testPCRResetValues(t *testing.T, e *env) {
	all := make([]int, 24)
	for i := range all {
		all[i] = i
	}
	values, err := e.a.ReadPCRs(sha256Sel(all...))
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range values {
		want := bytes.Repeat([]byte{0}, 32)
		if i >= 17 && i <= 22 {
			want = bytes.Repeat([]byte{0xff}, 32)
		}
		if !bytes.Equal(v, want) {
			t.Errorf("PCR %d = %x, want %x", i, v, want)
		}
	}
}

// testPCRs checks extend and read rules: the order ReadPCRs answers in,
// locality-bound PCRs, and bad arguments.
func testPCRs(t *testing.T, e *env) {
	before, err := e.a.ReadPCRs(sha256Sel(23))
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte("pcr test"))
	if err := e.a.ExtendPCR(23, d[:]); err != nil {
		t.Fatal(err)
	}
	got, err := e.a.ReadPCRs(sha256Sel(23, 0))
	if err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(append(before[0], d[:]...))
	if !bytes.Equal(got[0], want[:]) {
		t.Fatalf("PCR 23 = %x, want %x (values in the order asked)", got[0], want)
	}
	for _, p := range []int{17, 22} {
		isRC(t, "extend of a locality-bound PCR", e.a.ExtendPCR(p, d[:]), tpm2.TPMRCLocality)
	}
	if e.a.ExtendPCR(24, d[:]) == nil || e.a.ExtendPCR(16, d[:20]) == nil {
		t.Error("extend with a bad index or digest size succeeded")
	}
	if _, err := e.a.ReadPCRs(wire.PCRSelection{Hash: uint16(tpm2.TPMAlgSHA1), PCRs: []int{0}}); err == nil {
		t.Error("read of the SHA-1 bank, which is not allocated, succeeded")
	}
	if _, err := e.a.ReadPCRs(sha256Sel(3, 3)); err == nil {
		t.Error("read of a selection naming a PCR twice succeeded")
	}
}

// testSigner signs with the transport key; the AK, a restricted key,
// refuses to sign a digest the TPM did not produce.
func testSigner(t *testing.T, e *env) {
	s, err := e.a.Signer(e.tkA)
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte("handshake"))
	sig, err := s.Sign(rand.Reader, d[:], crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := e.a.PublicKey(e.tkA)
	if err != nil {
		t.Fatal(err)
	}
	if !s.Public().(*ecdsa.PublicKey).Equal(pub) || !ecdsa.VerifyASN1(pub.(*ecdsa.PublicKey), d[:], sig) {
		t.Fatal("signature does not verify with the transport key")
	}
	if _, err := s.Sign(rand.Reader, make([]byte, 48), crypto.SHA384); err == nil {
		t.Error("SHA-384 digest signed")
	}
	as, err := e.a.Signer(e.akA)
	if err != nil {
		t.Fatal(err)
	}
	_, err = as.Sign(rand.Reader, d[:], crypto.SHA256)
	isRC(t, "AK signing an external digest", err, tpm2.TPMRCTicket)
}

// testForeignKeyBlobs checks that key blobs work only on the TPM that made
// them, and not once altered.
func testForeignKeyBlobs(t *testing.T, e *env) {
	nonce := []byte("n")
	_, err := e.b.Quote(e.akA, nonce, sha256Sel(0))
	isRC(t, "quote with another TPM's AK", err, tpm2.TPMRCIntegrity)
	_, _, err = e.b.Certify(e.akB, e.tkA, nonce)
	isRC(t, "certify of another TPM's key", err, tpm2.TPMRCIntegrity)
	s, err := e.b.Signer(e.tkA)
	if err == nil {
		_, err = s.Sign(rand.Reader, make([]byte, 32), crypto.SHA256)
	}
	isRC(t, "sign with another TPM's key", err, tpm2.TPMRCIntegrity)

	altered := &tpm.KeyBlob{Public: e.akA.Public, Private: flip(e.akA.Private, len(e.akA.Private)-1)}
	if _, err := e.a.Quote(altered, nonce, sha256Sel(0)); err == nil {
		t.Error("quote with an altered private area")
	}
	swapped := &tpm.KeyBlob{Public: e.tkA.Public, Private: e.akA.Private}
	if _, err := e.a.Quote(swapped, nonce, sha256Sel(0)); err == nil {
		t.Error("quote with the AK's private area under the transport key's public area")
	}
	if _, err := e.a.Quote(&tpm.KeyBlob{}, nonce, sha256Sel(0)); err == nil {
		t.Error("quote with an empty blob")
	}
}
