//go:build cgo

package tpmsim_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"math/big"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/sigil-iot/sigil/device/tpm"
	_ "github.com/sigil-iot/sigil/device/tpm/tpmsim"
	"github.com/sigil-iot/sigil/pkg/wire"
)

func TestSimulatorAKQuote(t *testing.T) {
	tp, err := tpm.Open("sim://")
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()
	// A second user of the same simulator.
	tp2, err := tpm.Open("sim://")
	if err != nil {
		t.Fatal(err)
	}

	ak, err := tp.CreateAK()
	if err != nil {
		t.Fatal(err)
	}
	// The second handle sees the same TPM: it can load the first's blob.
	if _, err := tp2.Quote(ak, nil, wire.PCRSelection{Hash: uint16(tpm2.TPMAlgSHA256), PCRs: []int{0}}); err != nil {
		t.Fatalf("second handle: %v", err)
	}
	if err := tp2.Close(); err != nil {
		t.Fatal(err)
	}

	// Closing the second handle left the simulator running for the first.
	nonce := bytes.Repeat([]byte{3}, 32)
	q, err := tp.Quote(ak, nonce, wire.PCRSelection{Hash: uint16(tpm2.TPMAlgSHA256), PCRs: []int{0, 7, 16}})
	if err != nil {
		t.Fatal(err)
	}
	pub, err := tp.PublicKey(ak)
	if err != nil {
		t.Fatal(err)
	}
	s, err := tpm2.Unmarshal[tpm2.TPMTSignature](q.Signature)
	if err != nil {
		t.Fatal(err)
	}
	e, err := s.Signature.ECDSA()
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256(q.Attest)
	if !ecdsa.Verify(pub.(*ecdsa.PublicKey), d[:], new(big.Int).SetBytes(e.SignatureR.Buffer), new(big.Int).SetBytes(e.SignatureS.Buffer)) {
		t.Fatal("quote signature does not verify")
	}
	a, err := tpm2.Unmarshal[tpm2.TPMSAttest](q.Attest)
	if err != nil {
		t.Fatal(err)
	}
	if a.Type != tpm2.TPMSTAttestQuote || !bytes.Equal(a.ExtraData.Buffer, nonce) {
		t.Fatal("quote type or nonce")
	}
	info, err := a.Attested.Quote()
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	for _, v := range q.Values {
		h.Write(v)
	}
	if !bytes.Equal(h.Sum(nil), info.PCRDigest.Buffer) || len(q.Values) != 3 {
		t.Fatal("PCR values do not match the quote")
	}

	// No EK certificate in the simulator; activation works with the
	// recreated EK.
	ek, err := tp.EK()
	if err != nil {
		t.Fatal(err)
	}
	if ek.Cert != nil || ek.Key == nil {
		t.Fatalf("simulator EK: cert %v key %T", ek.Cert != nil, ek.Key)
	}
	ekPub, err := tpm2.Unmarshal[tpm2.TPMTPublic](ek.Public)
	if err != nil {
		t.Fatal(err)
	}
	akPub, err := tpm2.Unmarshal[tpm2.TPMTPublic](ak.Public)
	if err != nil {
		t.Fatal(err)
	}
	akName, err := tpm2.ObjectName(akPub)
	if err != nil {
		t.Fatal(err)
	}
	encKey, err := tpm2.ImportEncapsulationKey(ekPub)
	if err != nil {
		t.Fatal(err)
	}
	secret := []byte("simulated secret")
	blob, enc, err := tpm2.CreateCredential(rand.Reader, encKey, akName.Buffer, secret)
	if err != nil {
		t.Fatal(err)
	}
	got, err := tp.ActivateCredential(ak, blob, enc)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, secret) {
		t.Fatal("activated secret differs")
	}
}
