package sign

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/crypto/nacl/secretbox"
	"golang.org/x/crypto/scrypt"

	"github.com/sigil-iot/sigil/firmware/verify"
)

// Algorithms GenerateKey can make.
const (
	ECDSAP256 = "ecdsa-p256" // the default; what cosign generate-key-pair makes
	ECDSAP384 = "ecdsa-p384"
	Ed25519   = "ed25519"
)

// ErrPassword is returned when an encrypted key does not decrypt with the
// password given.
var ErrPassword = errors.New("sign: wrong password for the encrypted key")

// PEM block types of cosign's encrypted private keys.
const (
	cosignKeyType       = "ENCRYPTED SIGSTORE PRIVATE KEY"
	cosignLegacyKeyType = "ENCRYPTED COSIGN PRIVATE KEY"
)

// ParsePrivateKey decodes the first PEM block of b as a private key:
// "PRIVATE KEY" (PKCS#8), "EC PRIVATE KEY" (SEC 1), or cosign's encrypted
// format decrypted with password (an empty password is a valid cosign
// password). Only ECDSA P-256, ECDSA P-384 and Ed25519 keys are returned.
func ParsePrivateKey(b, password []byte) (crypto.Signer, error) {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, errors.New("sign: no PEM block in the key")
	}
	var key any
	var err error
	switch blk.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(blk.Bytes)
	case cosignKeyType, cosignLegacyKeyType:
		var der []byte
		der, err = decryptCosign(blk.Bytes, password)
		if err == nil {
			key, err = x509.ParsePKCS8PrivateKey(der)
		}
	default:
		return nil, fmt.Errorf("sign: PEM block %q is not a private key this package reads", blk.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("sign: private key: %w", err)
	}
	s, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("sign: %w: %T", verify.ErrUnsupportedKey, key)
	}
	switch k := s.Public().(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return nil, fmt.Errorf("sign: %w: curve %s", verify.ErrUnsupportedKey, k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
	default:
		return nil, fmt.Errorf("sign: %w: %T", verify.ErrUnsupportedKey, k)
	}
	return s, nil
}

// LoadKeyFile reads a private key file (see ParsePrivateKey). A key stored
// in clear must not be readable by group or others: such a file is refused,
// as ssh refuses it.
func LoadKeyFile(path string, password []byte) (crypto.Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	if blk, _ := pem.Decode(b); blk != nil && blk.Type != cosignKeyType && blk.Type != cosignLegacyKeyType {
		fi, err := os.Stat(path)
		if err != nil {
			return nil, fmt.Errorf("sign: %w", err)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			return nil, fmt.Errorf("sign: unencrypted key file %s has mode %04o; make it readable by its owner only (chmod 600)", path, fi.Mode().Perm())
		}
	}
	return ParsePrivateKey(b, password)
}

// GenerateKey makes a key pair of the algorithm (ECDSAP256, ECDSAP384 or
// Ed25519; "" means ECDSAP256), writes the private key as unencrypted PKCS#8
// PEM to privPath with mode 0600 and the public key as PKIX PEM to pubPath
// with mode 0644, and returns the key ID. Neither file may exist already.
// rand nil means crypto/rand (Go's key generation ignores it since 1.26).
func GenerateKey(alg, privPath, pubPath string, rnd io.Reader) (string, error) {
	if rnd == nil {
		rnd = rand.Reader
	}
	var key crypto.Signer
	var err error
	switch alg {
	case "", ECDSAP256:
		key, err = ecdsa.GenerateKey(elliptic.P256(), rnd)
	case ECDSAP384:
		key, err = ecdsa.GenerateKey(elliptic.P384(), rnd)
	case Ed25519:
		_, key, err = ed25519.GenerateKey(rnd)
	default:
		return "", fmt.Errorf("sign: algorithm %q (want %s, %s or %s)", alg, ECDSAP256, ECDSAP384, Ed25519)
	}
	if err != nil {
		return "", fmt.Errorf("sign: generate key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", fmt.Errorf("sign: encode private key: %w", err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return "", fmt.Errorf("sign: encode public key: %w", err)
	}
	if err := writeNew(privPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return "", err
	}
	if err := writeNew(pubPath, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o644); err != nil {
		os.Remove(privPath)
		return "", err
	}
	return verify.KeyID(key.Public())
}

// writeNew creates path (which must not exist) with mode and data, and
// syncs it.
func writeNew(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("sign: %w", err)
	}
	if err := f.Chmod(mode); err != nil { // OpenFile applies the umask; set the mode exactly
		f.Close()
		os.Remove(path)
		return fmt.Errorf("sign: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("sign: write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("sign: sync %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return fmt.Errorf("sign: close %s: %w", path, err)
	}
	return nil
}

// cosignKey is the JSON inside cosign's encrypted private-key PEM block.
type cosignKey struct {
	KDF struct {
		Name   string `json:"name"`
		Params struct {
			N int `json:"N"`
			R int `json:"r"`
			P int `json:"p"`
		} `json:"params"`
		Salt []byte `json:"salt"`
	} `json:"kdf"`
	Cipher struct {
		Name  string `json:"name"`
		Nonce []byte `json:"nonce"`
	} `json:"cipher"`
	Ciphertext []byte `json:"ciphertext"`
}

// Bounds on the scrypt cost a key file may ask for (cosign uses N=2^15 or
// 2^16, r=8, p=1): at most 128 MiB of memory and a few seconds.
const (
	maxScryptN = 1 << 17
	maxScryptR = 8
	maxScryptP = 4
)

// decryptCosign returns the PKCS#8 DER inside a cosign encrypted key: the
// secretbox key is scrypt(password, salt, N, r, p) of 32 bytes.
func decryptCosign(b, password []byte) ([]byte, error) {
	var k cosignKey
	if err := json.Unmarshal(b, &k); err != nil {
		return nil, fmt.Errorf("cosign encrypted key: %w", err)
	}
	p := k.KDF.Params
	switch {
	case k.KDF.Name != "scrypt":
		return nil, fmt.Errorf("cosign encrypted key: KDF %q, want scrypt", k.KDF.Name)
	case k.Cipher.Name != "nacl/secretbox":
		return nil, fmt.Errorf("cosign encrypted key: cipher %q, want nacl/secretbox", k.Cipher.Name)
	case p.N < 2 || p.N > maxScryptN || p.N&(p.N-1) != 0 || p.R < 1 || p.R > maxScryptR || p.P < 1 || p.P > maxScryptP:
		return nil, fmt.Errorf("cosign encrypted key: scrypt parameters N=%d r=%d p=%d out of bounds", p.N, p.R, p.P)
	case len(k.Cipher.Nonce) != 24:
		return nil, fmt.Errorf("cosign encrypted key: nonce of %d bytes, want 24", len(k.Cipher.Nonce))
	case len(k.KDF.Salt) == 0:
		return nil, errors.New("cosign encrypted key: empty salt")
	}
	dk, err := scrypt.Key(password, k.KDF.Salt, p.N, p.R, p.P, 32)
	if err != nil {
		return nil, fmt.Errorf("cosign encrypted key: %w", err)
	}
	var key [32]byte
	var nonce [24]byte
	copy(key[:], dk)
	copy(nonce[:], k.Cipher.Nonce)
	der, ok := secretbox.Open(nil, k.Ciphertext, &nonce, &key)
	if !ok {
		return nil, ErrPassword
	}
	return der, nil
}
