package verifier

import (
	"crypto/hmac"
	"crypto/x509"
	"errors"

	"github.com/sigil-iot/sigil/pkg/wire"
)

// CertifiedKey is a transport key proven by VerifyCertify to be resident in
// the TPM that holds the AK.
type CertifiedKey struct {
	*TransportKey
	Clock           ClockInfo // the TPM's clock when it certified the key
	FirmwareVersion uint64    // TPM firmware version it reported
}

// VerifyCertify checks a TPM2_Certify of the transport key by the AK and
// returns the certified key. Checks, in order:
//
//  1. sig decodes canonically as TPMT_SIGNATURE, scheme ECDSA, hash SHA-256;
//  2. it verifies over SHA-256(attest) with ak.Key;
//  3. attest decodes canonically as TPMS_ATTEST;
//  4. magic is TPM_GENERATED_VALUE;
//  5. type is TPM_ST_ATTEST_CERTIFY;
//  6. extraData equals nonce;
//  7. the certified name equals tk.Name, the name computed from the public
//     area the device presented (so the attributes VerifyTransportKeyPublic
//     checked are those of the key the TPM certified).
//
// Refusals carry wire.ReasonCertifyInvalid; the public message names the
// failed check.
func VerifyCertify(ak *AK, tk *TransportKey, nonce, attest, sig []byte) (*CertifiedKey, error) {
	if ak == nil || tk == nil {
		return nil, errors.New("verifier: certify: AK and transport key are required")
	}
	var a attestation
	if check, err := checkSignedAttest(ak.Key, attest, sig, stAttestCertify, nonce, &a); err != nil {
		return nil, refuse(wire.ReasonCertifyInvalid, "certify "+check+" invalid", "certify: %w", err)
	}
	if !hmac.Equal(a.name, tk.Name) {
		return nil, refuse(wire.ReasonCertifyInvalid, "certify is for another key",
			"certify: certified name %x is not the transport key's name %x", a.name, tk.Name)
	}
	return &CertifiedKey{TransportKey: tk, Clock: a.clock, FirmwareVersion: a.firmwareVersion}, nil
}

// VerifyCSR parses a PKCS#10 request and checks that the certified
// transport key signed it. Checks, in order:
//
//  1. der parses as a certificate request (wire.ReasonCSRInvalid);
//  2. its signature verifies with its own public key (wire.ReasonCSRInvalid);
//  3. that public key equals ck's key (wire.ReasonCSRKeyMismatch).
//
// Only the key is taken from a CSR; the subject and extensions of the
// device certificate are the fleet's to decide.
func VerifyCSR(der []byte, ck *CertifiedKey) (*x509.CertificateRequest, error) {
	if ck == nil || ck.TransportKey == nil {
		return nil, errors.New("verifier: CSR: certified key is required")
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, refuse(wire.ReasonCSRInvalid, "certificate request does not parse", "CSR: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, refuse(wire.ReasonCSRInvalid, "certificate request signature invalid", "CSR: %w", err)
	}
	if !equalKeys(ck.Key, csr.PublicKey) {
		return nil, refuse(wire.ReasonCSRKeyMismatch, "certificate request key is not the certified transport key",
			"CSR key (%T) is not the certified transport key", csr.PublicKey)
	}
	return csr, nil
}
