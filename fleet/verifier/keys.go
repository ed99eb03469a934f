package verifier

import (
	"crypto/ecdsa"
	"fmt"

	"github.com/google/go-tpm/tpm2"

	"github.com/sigil-iot/sigil/pkg/wire"
)

// AK is an attestation key whose public area passed VerifyAK.
type AK struct {
	Public tpm2.TPMTPublic
	Key    *ecdsa.PublicKey
	Name   []byte // TPM2B_NAME contents: nameAlg || SHA-256(TPMT_PUBLIC)
}

// VerifyAK decodes an attestation key's TPMT_PUBLIC and checks that it is a
// key only the TPM can use to sign TPM-generated structures. Checks, in
// order:
//
//  1. the bytes decode canonically as a TPMT_PUBLIC;
//  2. nameAlg is SHA-256;
//  3. attributes: restricted, sign, fixedTPM, fixedParent and
//     sensitiveDataOrigin set, decrypt clear;
//  4. the key is ECC on NIST P-256 with a valid point;
//  5. its signing scheme is ECDSA with SHA-256, or null (the scheme is then
//     chosen per command, and each signature's scheme is checked when it is
//     verified).
//
// Refusals carry wire.ReasonAKAttributes. RSA AKs are not accepted: devices
// create ECC keys (RSA key generation costs hundreds of milliseconds on a
// TPM).
func VerifyAK(akPublic []byte) (*AK, error) {
	const public = "attestation key must be a restricted, fixedTPM ECDSA P-256 signing key"
	pub, err := parsePublic(akPublic)
	if err != nil {
		return nil, refuse(wire.ReasonAKAttributes, public, "AK public area: %w", err)
	}
	if pub.nameAlg != algSHA256 {
		return nil, refuse(wire.ReasonAKAttributes, public, "AK nameAlg %#04x, want SHA-256", pub.nameAlg)
	}
	if err := checkAttributes(pub.attrs,
		attribute{"restricted", attrRestricted, true},
		attribute{"sign", attrSign, true},
		attribute{"decrypt", attrDecrypt, false},
		attribute{"fixedTPM", attrFixedTPM, true},
		attribute{"fixedParent", attrFixedParent, true},
		attribute{"sensitiveDataOrigin", attrSensitiveDataOrigin, true},
	); err != nil {
		return nil, refuse(wire.ReasonAKAttributes, public, "AK attributes: %w", err)
	}
	key, err := eccKey(pub, tpm2.TPMECCNistP256)
	if err != nil {
		return nil, refuse(wire.ReasonAKAttributes, public, "AK key: %w", err)
	}
	if err := checkSigningScheme(pub); err != nil {
		return nil, refuse(wire.ReasonAKAttributes, public, "AK: %w", err)
	}
	// The encoding is canonical, so hashing the bytes presented gives the
	// name the TPM computed.
	return &AK{Public: pub.tpm(), Key: key, Name: sha256Name(akPublic)}, nil
}

// TransportKey is the device's mTLS key whose public area passed
// VerifyTransportKeyPublic. It is not yet proven to live in the same TPM as
// the AK; VerifyCertify proves that and returns a *CertifiedKey.
type TransportKey struct {
	Public tpm2.TPMTPublic
	Key    *ecdsa.PublicKey
	Name   []byte // TPM2B_NAME contents: nameAlg || SHA-256(TPMT_PUBLIC)
}

// VerifyTransportKeyPublic decodes the transport key's TPMT_PUBLIC and
// checks that it is a general signing key that cannot leave the TPM.
// Checks, in order:
//
//  1. the bytes decode canonically as a TPMT_PUBLIC;
//  2. nameAlg is SHA-256;
//  3. attributes: sign, fixedTPM, fixedParent and sensitiveDataOrigin set;
//     decrypt and restricted clear (it signs TLS handshakes, which are not
//     TPM-generated structures);
//  4. the key is ECC on NIST P-256 with a valid point;
//  5. its signing scheme is ECDSA with SHA-256, or null.
//
// Refusals carry wire.ReasonTKAttributes.
func VerifyTransportKeyPublic(tkPublic []byte) (*TransportKey, error) {
	const public = "transport key must be a non-exportable ECDSA P-256 signing key"
	pub, err := parsePublic(tkPublic)
	if err != nil {
		return nil, refuse(wire.ReasonTKAttributes, public, "transport key public area: %w", err)
	}
	if pub.nameAlg != algSHA256 {
		return nil, refuse(wire.ReasonTKAttributes, public, "transport key nameAlg %#04x, want SHA-256", pub.nameAlg)
	}
	if err := checkAttributes(pub.attrs,
		attribute{"sign", attrSign, true},
		attribute{"decrypt", attrDecrypt, false},
		attribute{"restricted", attrRestricted, false},
		attribute{"fixedTPM", attrFixedTPM, true},
		attribute{"fixedParent", attrFixedParent, true},
		attribute{"sensitiveDataOrigin", attrSensitiveDataOrigin, true},
	); err != nil {
		return nil, refuse(wire.ReasonTKAttributes, public, "transport key attributes: %w", err)
	}
	key, err := eccKey(pub, tpm2.TPMECCNistP256)
	if err != nil {
		return nil, refuse(wire.ReasonTKAttributes, public, "transport key: %w", err)
	}
	if err := checkSigningScheme(pub); err != nil {
		return nil, refuse(wire.ReasonTKAttributes, public, "transport key: %w", err)
	}
	return &TransportKey{Public: pub.tpm(), Key: key, Name: sha256Name(tkPublic)}, nil
}

// checkSigningScheme accepts an ECC key whose scheme is null or ECDSA with
// SHA-256.
func checkSigningScheme(pub *public) error {
	if pub.typ != algECC {
		return fmt.Errorf("type %#04x, want ECC", pub.typ)
	}
	switch pub.scheme {
	case algNull:
		return nil
	case algECDSA:
		if pub.schemeHash != algSHA256 {
			return fmt.Errorf("scheme hash %#04x, want SHA-256", pub.schemeHash)
		}
		return nil
	default:
		return fmt.Errorf("signing scheme %#04x, want ECDSA", pub.scheme)
	}
}
