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
	"strings"

	"github.com/google/go-tpm/tpm2"

	"github.com/sigil-iot/sigil/pkg/wire"
)

// maxStruct bounds any TPM structure handed to a decoder.
const maxStruct = 4096

// decode unmarshals a TPM structure from untrusted bytes and requires the
// encoding to be canonical: the bytes must be exactly what marshalling the
// decoded value yields, so trailing data is refused. A panic inside the
// third-party decoder is turned into an error: bytes from the network must
// never crash the fleet.
func decode[T tpm2.Marshallable, P interface {
	*T
	tpm2.Unmarshallable
}](b []byte) (v *T, err error) {
	if len(b) == 0 {
		return nil, errors.New("empty")
	}
	if len(b) > maxStruct {
		return nil, fmt.Errorf("%d bytes, more than %d", len(b), maxStruct)
	}
	defer func() {
		if r := recover(); r != nil {
			v, err = nil, fmt.Errorf("malformed (decoder panicked: %v)", r)
		}
	}()
	v, err = tpm2.Unmarshal[T, P](b)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(tpm2.Marshal(*v), b) {
		return nil, errors.New("not canonical (trailing or re-encoded bytes)")
	}
	return v, nil
}

// sha256Name returns the TPM2B_NAME contents of an object whose nameAlg is
// SHA-256, from its canonical TPMT_PUBLIC encoding: nameAlg || SHA-256(pub).
func sha256Name(pub []byte) []byte {
	sum := sha256.Sum256(pub)
	return append([]byte{byte(tpm2.TPMAlgSHA256 >> 8), byte(tpm2.TPMAlgSHA256)}, sum[:]...)
}

// eccKey returns the ECDSA public key of an ECC public area, checking that
// the curve is one of curves, the coordinates have the curve's size and the
// point lies on the curve.
func eccKey(pub *tpm2.TPMTPublic, curves ...tpm2.TPMECCCurve) (*ecdsa.PublicKey, tpm2.TPMECCCurve, error) {
	if pub.Type != tpm2.TPMAlgECC {
		return nil, 0, fmt.Errorf("type %#04x, want ECC", uint16(pub.Type))
	}
	parms, err := pub.Parameters.ECCDetail()
	if err != nil {
		return nil, 0, err
	}
	var curve elliptic.Curve
	size := 0
	switch parms.CurveID {
	case tpm2.TPMECCNistP256:
		curve, size = elliptic.P256(), 32
	case tpm2.TPMECCNistP384:
		curve, size = elliptic.P384(), 48
	}
	ok := false
	for _, c := range curves {
		ok = ok || c == parms.CurveID
	}
	if !ok || curve == nil {
		return nil, 0, fmt.Errorf("curve %#04x not accepted", uint16(parms.CurveID))
	}
	pt, err := pub.Unique.ECC()
	if err != nil {
		return nil, 0, err
	}
	if len(pt.X.Buffer) != size || len(pt.Y.Buffer) != size {
		return nil, 0, fmt.Errorf("point coordinates of %d and %d bytes, want %d", len(pt.X.Buffer), len(pt.Y.Buffer), size)
	}
	raw := make([]byte, 0, 1+2*size)
	raw = append(append(append(raw, 4), pt.X.Buffer...), pt.Y.Buffer...)
	key, err := ecdsa.ParseUncompressedPublicKey(curve, raw)
	if err != nil {
		return nil, 0, fmt.Errorf("point: %w", err)
	}
	return key, parms.CurveID, nil
}

// rsaKey returns the RSA public key of an RSA public area, checking that the
// modulus has exactly one of the accepted sizes.
func rsaKey(pub *tpm2.TPMTPublic, bits ...int) (*rsa.PublicKey, error) {
	if pub.Type != tpm2.TPMAlgRSA {
		return nil, fmt.Errorf("type %#04x, want RSA", uint16(pub.Type))
	}
	parms, err := pub.Parameters.RSADetail()
	if err != nil {
		return nil, err
	}
	n, err := pub.Unique.RSA()
	if err != nil {
		return nil, err
	}
	ok := false
	for _, b := range bits {
		ok = ok || int(parms.KeyBits) == b
	}
	if !ok {
		return nil, fmt.Errorf("RSA key size %d not accepted", parms.KeyBits)
	}
	mod := new(big.Int).SetBytes(n.Buffer)
	if mod.BitLen() != int(parms.KeyBits) {
		return nil, fmt.Errorf("modulus of %d bits, parameters say %d", mod.BitLen(), parms.KeyBits)
	}
	e := int(parms.Exponent)
	if e == 0 {
		e = 65537
	}
	if e < 3 || e&1 == 0 {
		return nil, fmt.Errorf("RSA exponent %d", e)
	}
	return &rsa.PublicKey{N: mod, E: e}, nil
}

// attributes is one object attribute a key must have or lack.
type attribute struct {
	name string
	got  bool
	want bool
}

// checkAttributes returns an error naming every attribute that differs.
func checkAttributes(attrs ...attribute) error {
	var bad []string
	for _, a := range attrs {
		switch {
		case a.got == a.want:
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

func clockInfo(c tpm2.TPMSClockInfo) ClockInfo {
	return ClockInfo{Clock: c.Clock, ResetCount: c.ResetCount, RestartCount: c.RestartCount, Safe: bool(c.Safe)}
}

// checkSignedAttest verifies sig over attest with key and decodes attest.
// Checks, in order: sig decodes as TPMT_SIGNATURE with scheme ECDSA and hash
// SHA-256; it verifies over SHA-256(attest) with key; attest decodes as
// TPMS_ATTEST; its magic is TPM_GENERATED_VALUE; its type is typ; its
// extraData equals nonce. On failure it also returns the name of the failed
// check, which is safe to tell the device.
func checkSignedAttest(key *ecdsa.PublicKey, attest, sig []byte, typ tpm2.TPMST, nonce []byte) (*tpm2.TPMSAttest, string, error) {
	s, err := decode[tpm2.TPMTSignature](sig)
	if err != nil {
		return nil, "signature", fmt.Errorf("signature: %w", err)
	}
	if s.SigAlg != tpm2.TPMAlgECDSA {
		return nil, "signature", fmt.Errorf("signature scheme %#04x, want ECDSA", uint16(s.SigAlg))
	}
	ec, err := s.Signature.ECDSA()
	if err != nil {
		return nil, "signature", fmt.Errorf("signature: %w", err)
	}
	if ec.Hash != tpm2.TPMAlgSHA256 {
		return nil, "signature", fmt.Errorf("signature hash %#04x, want SHA-256", uint16(ec.Hash))
	}
	if key == nil {
		return nil, "signature", errors.New("no attestation key")
	}
	digest := sha256.Sum256(attest)
	r := new(big.Int).SetBytes(ec.SignatureR.Buffer)
	sv := new(big.Int).SetBytes(ec.SignatureS.Buffer)
	if !ecdsa.Verify(key, digest[:], r, sv) {
		return nil, "signature", errors.New("signature does not verify with the attestation key")
	}
	a, err := decode[tpm2.TPMSAttest](attest)
	if err != nil {
		return nil, "structure", fmt.Errorf("attest: %w", err)
	}
	if a.Magic != tpm2.TPMGeneratedValue {
		return nil, "magic", fmt.Errorf("attest magic %#08x, want TPM_GENERATED_VALUE", uint32(a.Magic))
	}
	if a.Type != typ {
		return nil, "type", fmt.Errorf("attest type %#04x, want %#04x", uint16(a.Type), uint16(typ))
	}
	if len(nonce) == 0 || !bytes.Equal(a.ExtraData.Buffer, nonce) {
		return nil, "nonce", errors.New("extraData is not the nonce")
	}
	return a, "", nil
}
