package softtpm

import (
	"bytes"
	"crypto"
	"crypto/ecdh"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"

	"github.com/sigil-iot/sigil/device/tpm"
)

const crypto256 = crypto.SHA256

// NV indexes of EK certificates in the TCG EK credential profile.
const (
	EKCertIndexRSA  uint32 = 0x01c00002 // RSA-2048 EK certificate
	EKCertIndexP256 uint32 = 0x01c0000a // ECC NIST P-256 EK certificate
)

// endorsementKey is the TPM's EK: an ECC P-256 or RSA-2048 restricted
// decryption key made from the TCG default (low-range) template.
type endorsementKey struct {
	public    []byte // marshaled TPMT_PUBLIC, as TPM2_CreatePrimary returns it
	pub       tpm2.TPMTPublic
	key       crypto.PublicKey // *ecdsa.PublicKey or *rsa.PublicKey, as tpm2.Pub returns it
	ecc       *ecdh.PrivateKey // one of ecc and rsa is set
	rsa       *rsa.PrivateKey
	cert      []byte // DER, nil without a manufacturer CA
	certIndex uint32
}

// deriveECCEK derives the ECC P-256 EK from the primary seed. Like a TPM
// deriving a primary key from its endorsement primary seed, the private
// scalar comes from KDFa over the seed and the template, with a counter for
// the rare candidate outside the curve's order; the same seed always gives
// the same EK.
func deriveECCEK(seed []byte) (*endorsementKey, error) {
	priv, err := deriveP256(seed, "EK", tpm2.ECCEKTemplate)
	if err != nil {
		return nil, err
	}
	pub := eccPublic(tpm2.ECCEKTemplate, priv.PublicKey().Bytes())
	ek, err := newEK(pub, EKCertIndexP256)
	if err != nil {
		return nil, err
	}
	ek.ecc = priv
	return ek, nil
}

// deriveP256 derives a P-256 private key for template from seed.
func deriveP256(seed []byte, label string, template tpm2.TPMTPublic) (*ecdh.PrivateKey, error) {
	h := sha256.Sum256(tpm2.Marshal(template))
	for i := uint32(1); i <= 64; i++ {
		d := tpm2.KDFa(crypto256, seed, label, h[:], binary.BigEndian.AppendUint32(nil, i), 256)
		if priv, err := ecdh.P256().NewPrivateKey(d); err == nil {
			return priv, nil
		}
	}
	return nil, errors.New("no valid P-256 scalar derived") // odds of 2^-2048
}

// eccPublic returns template with the uncompressed P-256 point as its
// unique field, marshaled as TPM2_Create and TPM2_CreatePrimary return it
// (coordinates padded to 32 bytes).
func eccPublic(template tpm2.TPMTPublic, point []byte) tpm2.TPMTPublic {
	template.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
		X: tpm2.TPM2BECCParameter{Buffer: bytes.Clone(point[1:33])},
		Y: tpm2.TPM2BECCParameter{Buffer: bytes.Clone(point[33:65])},
	})
	return template
}

// newRSAEK makes the EK from an RSA-2048 key and the TCG RSA template.
func newRSAEK(key *rsa.PrivateKey) (*endorsementKey, error) {
	if key.N.BitLen() != 2048 || key.E != 65537 {
		return nil, fmt.Errorf("RSA EK must be 2048 bits with exponent 65537, not %d bits, exponent %d", key.N.BitLen(), key.E)
	}
	pub := tpm2.RSAEKTemplate
	pub.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: key.N.FillBytes(make([]byte, 256))})
	ek, err := newEK(pub, EKCertIndexRSA)
	if err != nil {
		return nil, err
	}
	ek.rsa = key
	return ek, nil
}

func newEK(pub tpm2.TPMTPublic, certIndex uint32) (*endorsementKey, error) {
	key, err := tpm2.Pub(pub)
	if err != nil {
		return nil, err
	}
	return &endorsementKey{public: tpm2.Marshal(pub), pub: pub, key: key, certIndex: certIndex}, nil
}

// EK returns the endorsement key with its certificate (nil without a
// manufacturer CA). As on a real TPM, it only decrypts: it is used for
// credential activation and secret import, never to sign.
func (t *TPM) EK() (*tpm.EK, error) {
	var out *tpm.EK
	err := t.do("read EK", func() error {
		out = &tpm.EK{Public: bytes.Clone(t.ek.public), Cert: bytes.Clone(t.ek.cert), Key: t.ek.key}
		return nil
	})
	return out, err
}

// nameHash is the EK's name algorithm, which keys the KDFs of credential
// activation and import (SHA-256 in both TCG templates).
func (ek *endorsementKey) nameHash() crypto.Hash { return crypto256 }

// symBits is the key size of the EK's symmetric algorithm, AES-128-CFB in
// both TCG templates, which encrypts credentials and duplicates.
const symBits = 128

// decapsulate recovers the seed a sender encrypted to the EK with label
// (tpm2.CreateCredential: "IDENTITY", tpm2.CreateDuplicate: "DUPLICATE"),
// as the TPM does on TPM2_ActivateCredential and TPM2_Import: RSA-OAEP
// (SHA-256, label with its terminating zero) for an RSA EK; for an ECC EK,
// ECDH of the EK with the ephemeral point encSecret holds, then KDFe over
// the shared x-coordinate, the ephemeral and the EK's x-coordinates. param
// is the position of the encrypted secret among the command's parameters,
// for the response code.
func (ek *endorsementKey) decapsulate(label string, encSecret []byte, param int) ([]byte, error) {
	h := ek.nameHash()
	if ek.rsa != nil {
		if len(encSecret) != ek.rsa.Size() {
			return nil, paramErr(tpm2.TPMRCSize, param)
		}
		// A TPM answers a failed decryption with TPM_RC_VALUE (swtpm's
		// libtpms says TPM_RC_FAILURE).
		seed, err := rsa.DecryptOAEP(h.New(), nil, ek.rsa, encSecret, []byte(label+"\x00"))
		if err != nil || len(seed) > h.Size() {
			return nil, paramErr(tpm2.TPMRCValue, param)
		}
		return seed, nil
	}
	point, err := tpm2.Unmarshal[tpm2.TPMSECCPoint](encSecret)
	if err != nil || len(tpm2.Marshal(point)) != len(encSecret) {
		return nil, paramErr(tpm2.TPMRCSize, param)
	}
	if len(point.X.Buffer) > 32 || len(point.Y.Buffer) > 32 {
		return nil, paramErr(tpm2.TPMRCECCPoint, param)
	}
	parms, err := ek.pub.Parameters.ECCDetail()
	if err != nil {
		return nil, err
	}
	eph, err := tpm2.ECDHPub(parms, point)
	if err != nil {
		return nil, paramErr(tpm2.TPMRCECCPoint, param)
	}
	z, err := ek.ecc.ECDH(eph)
	if err != nil {
		return nil, paramErr(tpm2.TPMRCECCPoint, param)
	}
	ekPoint, err := ek.pub.Unique.ECC()
	if err != nil {
		return nil, err
	}
	return tpm2.KDFe(h, z, label, point.X.Buffer, ekPoint.X.Buffer, h.Size()*8), nil
}
