package tpm_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"math/big"
	"testing"

	"github.com/google/go-tpm/tpm2"
)

// decodePublic unmarshals a TPMT_PUBLIC.
func decodePublic(t *testing.T, b []byte) *tpm2.TPMTPublic {
	t.Helper()
	p, err := tpm2.Unmarshal[tpm2.TPMTPublic](b)
	if err != nil {
		t.Fatalf("decode TPMT_PUBLIC: %v", err)
	}
	return p
}

// verifyAttest checks an ECDSA-SHA256 TPMT_SIGNATURE over attest with the
// AK, then the magic, type and qualifying data, and returns the TPMS_ATTEST.
func verifyAttest(t *testing.T, ak crypto.PublicKey, attest, sig []byte, typ tpm2.TPMST, nonce []byte) *tpm2.TPMSAttest {
	t.Helper()
	s, err := tpm2.Unmarshal[tpm2.TPMTSignature](sig)
	if err != nil {
		t.Fatalf("decode signature: %v", err)
	}
	if s.SigAlg != tpm2.TPMAlgECDSA {
		t.Fatalf("signature algorithm 0x%x, want ECDSA", uint16(s.SigAlg))
	}
	ecc, err := s.Signature.ECDSA()
	if err != nil {
		t.Fatal(err)
	}
	if ecc.Hash != tpm2.TPMAlgSHA256 {
		t.Fatalf("signature hash 0x%x, want SHA-256", uint16(ecc.Hash))
	}
	digest := sha256.Sum256(attest)
	r, ss := new(big.Int).SetBytes(ecc.SignatureR.Buffer), new(big.Int).SetBytes(ecc.SignatureS.Buffer)
	if !ecdsa.Verify(ak.(*ecdsa.PublicKey), digest[:], r, ss) {
		t.Fatal("attestation signature does not verify with the AK")
	}
	a, err := tpm2.Unmarshal[tpm2.TPMSAttest](attest)
	if err != nil {
		t.Fatalf("decode TPMS_ATTEST: %v", err)
	}
	if a.Magic != tpm2.TPMGeneratedValue {
		t.Fatalf("magic 0x%x", uint32(a.Magic))
	}
	if a.Type != typ {
		t.Fatalf("attest type 0x%x, want 0x%x", uint16(a.Type), uint16(typ))
	}
	if !bytes.Equal(a.ExtraData.Buffer, nonce) {
		t.Fatal("qualifying data is not the nonce")
	}
	return a
}

// name is the TPM name of a public area.
func name(t *testing.T, p *tpm2.TPMTPublic) []byte {
	t.Helper()
	n, err := tpm2.ObjectName(p)
	if err != nil {
		t.Fatal(err)
	}
	return n.Buffer
}
