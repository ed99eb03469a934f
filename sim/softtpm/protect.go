package softtpm

import (
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"encoding/binary"
	"fmt"
	"io"

	"github.com/google/go-tpm/tpm2"
)

// KDFa labels of TPM 2.0 Part 1 for the keys that protect an object's
// sensitive area.
const (
	labelStorage   = "STORAGE"
	labelIntegrity = "INTEGRITY"
)

// maxDigest is the largest digest a TPM2B_DIGEST holds (sizeof(TPMU_HA)).
const maxDigest = 64

// openOuter checks and removes an outer wrapper, the protection
// tpm2.CreateCredential gives a credential (Part 1, "Credential
// Protection") and tpm2.CreateDuplicate a duplicated object (Part 1,
// "Outer Duplication Wrapper"):
//
//	blob      = TPM2B_DIGEST(outerHMAC) || encrypted
//	outerHMAC = HMAC(KDFa(h, seed, "INTEGRITY", -, -, |h|), encrypted || name)
//	encrypted = AES-CFB(KDFa(h, seed, "STORAGE", name, -, symBits), IV 0, TPM2B)
//
// and returns the contents of the decrypted TPM2B. seed is what the sender
// encrypted to the EK; name binds the blob to one object (the AK whose
// credential it is, the duplicated object itself). The HMAC is checked, in
// constant time, before anything is decrypted. Failures are response codes
// for parameter param, as swtpm answers them: TPM_RC_INSUFFICIENT when
// the blob is shorter than its integrity field says, TPM_RC_INTEGRITY when
// the HMAC fails, TPM_RC_SIZE when a size is wrong.
func openOuter(h crypto.Hash, seed, name, blob []byte, param int) ([]byte, error) {
	if len(blob) < 2 {
		return nil, paramErr(tpm2.TPMRCInsufficient, param)
	}
	n := int(binary.BigEndian.Uint16(blob))
	switch {
	case n > maxDigest:
		return nil, paramErr(tpm2.TPMRCSize, param)
	case len(blob) < 2+n:
		return nil, paramErr(tpm2.TPMRCInsufficient, param)
	}
	integrity, encrypted := blob[2:2+n], blob[2+n:]
	mac := hmac.New(h.New, tpm2.KDFa(h, seed, labelIntegrity, nil, nil, h.Size()*8))
	mac.Write(encrypted)
	mac.Write(name)
	if !hmac.Equal(mac.Sum(nil), integrity) {
		return nil, paramErr(tpm2.TPMRCIntegrity, param)
	}
	if len(encrypted) < 2 {
		return nil, paramErr(tpm2.TPMRCSize, param)
	}
	block, err := aes.NewCipher(tpm2.KDFa(h, seed, labelStorage, name, nil, symBits))
	if err != nil {
		return nil, err
	}
	plain := make([]byte, len(encrypted))
	//lint:ignore SA1019 TPM 2.0 fixes AES-CFB for this format
	cipher.NewCFBDecrypter(block, make([]byte, aes.BlockSize)).XORKeyStream(plain, encrypted)
	if int(binary.BigEndian.Uint16(plain)) != len(plain)-2 {
		return nil, paramErr(tpm2.TPMRCSize, param)
	}
	return plain[2:], nil
}

// A TPM keeps a loaded object's sensitive area outside the TPM encrypted
// and integrity-protected under its parent's seed (Part 1, "Protected
// Storage"). The software TPM does the same for the blobs it hands out,
// with a storage seed derived from its primary seed, in the TPM's layout of
// a TPM2B_PRIVATE's contents:
//
//	private   = TPM2B_DIGEST(integrity) || TPM2B_IV(iv) || encrypted
//	integrity = HMAC-SHA256(KDFa(seed, "INTEGRITY", -, -, 256), TPM2B_IV(iv) || encrypted || name)
//	encrypted = AES-128-CFB(KDFa(seed, "STORAGE", name, -, 128), iv, TPM2B_SENSITIVE)
//
// with a random 16-byte iv. Only the TPM that holds the seed opens it, and
// only together with the public area whose name it was made for.

// protect wraps a marshaled TPMT_SENSITIVE under seed for the object name.
func protect(r io.Reader, seed, name, sensitive []byte) ([]byte, error) {
	iv := make([]byte, aes.BlockSize)
	if _, err := io.ReadFull(r, iv); err != nil {
		return nil, fmt.Errorf("random IV: %w", err)
	}
	block, err := aes.NewCipher(tpm2.KDFa(crypto256, seed, labelStorage, name, nil, symBits))
	if err != nil {
		return nil, err
	}
	const hdr = 2 + 32 + 2 + aes.BlockSize
	out := make([]byte, hdr+2+len(sensitive))
	binary.BigEndian.PutUint16(out, 32)
	binary.BigEndian.PutUint16(out[34:], aes.BlockSize)
	copy(out[36:], iv)
	enc := out[hdr:]
	binary.BigEndian.PutUint16(enc, uint16(len(sensitive)))
	copy(enc[2:], sensitive)
	//lint:ignore SA1019 TPM 2.0 fixes AES-CFB for this format
	cipher.NewCFBEncrypter(block, iv).XORKeyStream(enc, enc)
	mac := hmac.New(crypto256.New, tpm2.KDFa(crypto256, seed, labelIntegrity, nil, nil, 256))
	mac.Write(out[34:])
	mac.Write(name)
	mac.Sum(out[2:2])
	return out, nil
}

// unprotect checks and opens what protect made for name under seed and
// returns the marshaled TPMT_SENSITIVE. Any failure, including a blob of
// another TPM, is TPM_RC_INTEGRITY for parameter 1 (inPrivate of
// TPM2_Load), as a TPM reports it.
func unprotect(seed, name, private []byte) ([]byte, error) {
	const hdr = 2 + 32 + 2 + aes.BlockSize
	bad := paramErr(tpm2.TPMRCIntegrity, 1)
	if len(private) < hdr+2 || binary.BigEndian.Uint16(private) != 32 || binary.BigEndian.Uint16(private[34:]) != aes.BlockSize {
		return nil, bad
	}
	mac := hmac.New(crypto256.New, tpm2.KDFa(crypto256, seed, labelIntegrity, nil, nil, 256))
	mac.Write(private[34:])
	mac.Write(name)
	if !hmac.Equal(mac.Sum(nil), private[2:34]) {
		return nil, bad
	}
	block, err := aes.NewCipher(tpm2.KDFa(crypto256, seed, labelStorage, name, nil, symBits))
	if err != nil {
		return nil, err
	}
	plain := make([]byte, len(private)-hdr)
	//lint:ignore SA1019 TPM 2.0 fixes AES-CFB for this format
	cipher.NewCFBDecrypter(block, private[36:hdr]).XORKeyStream(plain, private[hdr:])
	if int(binary.BigEndian.Uint16(plain)) != len(plain)-2 {
		return nil, bad
	}
	return plain[2:], nil
}
