package verifier

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"strings"

	"github.com/google/go-tpm/tpm2"

	"github.com/sigil-iot/sigil/pkg/wire"
)

// sha256Name returns the TPM2B_NAME contents of an object whose nameAlg is
// SHA-256, from its canonical TPMT_PUBLIC encoding: nameAlg || SHA-256(pub).
func sha256Name(pub []byte) []byte {
	sum := sha256.Sum256(pub)
	return append([]byte{byte(tpm2.TPMAlgSHA256 >> 8), byte(tpm2.TPMAlgSHA256)}, sum[:]...)
}

// eccKey returns the ECDSA public key of an ECC public area, checking that
// the curve is one of curves, the coordinates have the curve's size and the
// point lies on the curve.
func eccKey(pub *public, curves ...tpm2.TPMECCCurve) (*ecdsa.PublicKey, error) {
	if pub.typ != algECC {
		return nil, fmt.Errorf("type %#04x, want ECC", pub.typ)
	}
	var curve elliptic.Curve
	size := 0
	switch tpm2.TPMECCCurve(pub.curve) {
	case tpm2.TPMECCNistP256:
		curve, size = elliptic.P256(), 32
	case tpm2.TPMECCNistP384:
		curve, size = elliptic.P384(), 48
	}
	if !slices.Contains(curves, tpm2.TPMECCCurve(pub.curve)) || curve == nil {
		return nil, fmt.Errorf("curve %#04x not accepted", pub.curve)
	}
	if len(pub.x) != size || len(pub.y) != size {
		return nil, fmt.Errorf("point coordinates of %d and %d bytes, want %d", len(pub.x), len(pub.y), size)
	}
	raw := make([]byte, 0, 1+2*size)
	raw = append(append(append(raw, 4), pub.x...), pub.y...)
	key, err := ecdsa.ParseUncompressedPublicKey(curve, raw)
	if err != nil {
		return nil, fmt.Errorf("point: %w", err)
	}
	return key, nil
}

// rsaKey returns the RSA public key of an RSA public area, checking that the
// modulus has exactly one of the accepted sizes.
func rsaKey(pub *public, bits ...int) (*rsa.PublicKey, error) {
	if pub.typ != algRSA {
		return nil, fmt.Errorf("type %#04x, want RSA", pub.typ)
	}
	if !slices.Contains(bits, int(pub.rsaBits)) {
		return nil, fmt.Errorf("RSA key size %d not accepted", pub.rsaBits)
	}
	mod := new(big.Int).SetBytes(pub.modulus)
	if mod.BitLen() != int(pub.rsaBits) {
		return nil, fmt.Errorf("modulus of %d bits, parameters say %d", mod.BitLen(), pub.rsaBits)
	}
	e := int(pub.exponent)
	if e == 0 {
		e = 65537
	}
	if e < 3 || e&1 == 0 {
		return nil, fmt.Errorf("RSA exponent %d", e)
	}
	return &rsa.PublicKey{N: mod, E: e}, nil
}

// attribute is one TPMA_OBJECT bit a key must have or lack.
type attribute struct {
	name string
	bit  uint32
	want bool
}

// checkAttributes returns an error naming every attribute of got that
// differs from what attrs want.
func checkAttributes(got uint32, attrs ...attribute) error {
	var bad []string
	for _, a := range attrs {
		switch {
		case (got&a.bit != 0) == a.want:
		case a.want:
			bad = append(bad, a.name+" not set")
		default:
			bad = append(bad, a.name+" set")
		}
	}
	if len(bad) > 0 {
		return errors.New(strings.Join(bad, ", "))
	}
	return nil
}

// equalKeys reports whether two public keys are the same key.
func equalKeys(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

// refuse builds a refusal whose internal cause starts with the package name.
func refuse(r wire.Reason, public string, format string, args ...any) error {
	return wire.Refuse(r, public, fmt.Errorf("verifier: "+format, args...))
}

// ClockInfo is the TPM clock state an attestation structure carries.
type ClockInfo struct {
	Clock        uint64 // milliseconds the TPM has been powered since the last clear
	ResetCount   uint32 // TPM resets (reboots) since the last clear
	RestartCount uint32 // restarts and resumes since the last reset
	Safe         bool   // no higher Clock value was ever reported
}

// checkSignedAttest verifies sig over attest with key and decodes attest
// into a. Checks, in order: sig decodes canonically as TPMT_SIGNATURE with
// scheme ECDSA and hash SHA-256; it verifies over SHA-256(attest) with key;
// attest decodes canonically as TPMS_ATTEST; its magic is
// TPM_GENERATED_VALUE; its type is typ; its extraData equals nonce. On
// failure it also returns the name of the failed check, which is safe to
// tell the device.
func checkSignedAttest(key *ecdsa.PublicKey, attest, sig []byte, typ uint16, nonce []byte, a *attestation) (string, error) {
	s, err := parseSignature(sig)
	if err != nil {
		return "signature", fmt.Errorf("signature: %w", err)
	}
	if key == nil {
		return "signature", errors.New("no attestation key")
	}
	digest := sha256.Sum256(attest)
	r := new(big.Int).SetBytes(s.r)
	sv := new(big.Int).SetBytes(s.s)
	if !ecdsa.Verify(key, digest[:], r, sv) {
		return "signature", errors.New("signature does not verify with the attestation key")
	}
	if err := parseAttest(attest, a); err != nil {
		if errors.Is(err, errAttestType) && a.magic == uint32(tpm2.TPMGeneratedValue) {
			return "type", fmt.Errorf("attest type %#04x, want %#04x", a.typ, typ)
		}
		return "structure", fmt.Errorf("attest: %w", err)
	}
	if a.magic != uint32(tpm2.TPMGeneratedValue) {
		return "magic", fmt.Errorf("attest magic %#08x, want TPM_GENERATED_VALUE", a.magic)
	}
	if a.typ != typ {
		return "type", fmt.Errorf("attest type %#04x, want %#04x", a.typ, typ)
	}
	if len(nonce) == 0 || !bytes.Equal(a.extraData, nonce) {
		return "nonce", errors.New("extraData is not the nonce")
	}
	return "", nil
}
