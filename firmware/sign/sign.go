// Package sign makes release signatures: sigstore bundles over a manifest
// in the format `cosign sign-blob --new-bundle-format` writes, which
// firmware/verify, cosign verify-blob and sigstore-go accept.
//
// The key is a crypto.Signer, so a KMS, PKCS#11 or TPM key can take the
// place of the software key files this package reads and writes; OpenKMS
// gives one for a key held by a key service through sigstore's KMS
// interfaces ("NAME://REF", as cosign's --key names it), so that a release
// key never touches the signing machine's disk. Software
// keys are PEM files: PKCS#8 "PRIVATE KEY" (ECDSA P-256, ECDSA P-384 or
// Ed25519, as GenerateKey writes them), SEC 1 "EC PRIVATE KEY", and cosign's
// own encrypted format ("ENCRYPTED SIGSTORE PRIVATE KEY" or "ENCRYPTED
// COSIGN PRIVATE KEY": scrypt and NaCl secretbox around PKCS#8), so keys
// made by `cosign generate-key-pair` or `cosign import-key-pair` work as
// they are, with their password.
//
// This package is for the fleet and for tools; devices only verify.
package sign

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"fmt"
	"io"

	"github.com/sigil-iot/sigil/firmware/verify"
)

// Config configures New.
type Config struct {
	// Key makes the signatures: ECDSA P-256 (signs SHA-256 digests), ECDSA
	// P-384 (SHA-384) or Ed25519 (the whole message). Required.
	Key crypto.Signer
	// Rand is passed to Key.Sign. Nil means crypto/rand. (Go's software
	// ECDSA and Ed25519 keys draw their own randomness since Go 1.26 and
	// ignore it; other signers may use it.)
	Rand io.Reader
}

// Signer makes sigstore bundles with one key. It is safe for concurrent use
// when its key is.
type Signer struct {
	key  crypto.Signer
	pub  crypto.PublicKey
	id   string
	hash crypto.Hash // digest the key signs; 0 for Ed25519 (the message itself)
	rand io.Reader
}

// New returns a Signer for cfg.Key, or an error wrapping
// verify.ErrUnsupportedKey for other key types.
func New(cfg Config) (*Signer, error) {
	if cfg.Key == nil {
		return nil, errors.New("sign: no key")
	}
	s := &Signer{key: cfg.Key, pub: cfg.Key.Public(), rand: cfg.Rand}
	if s.rand == nil {
		s.rand = rand.Reader
	}
	switch k := s.pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			s.hash = crypto.SHA256
		case elliptic.P384():
			s.hash = crypto.SHA384
		default:
			return nil, fmt.Errorf("sign: %w", verify.ErrUnsupportedKey)
		}
	case ed25519.PublicKey:
	default:
		return nil, fmt.Errorf("sign: %w: %T", verify.ErrUnsupportedKey, s.pub)
	}
	id, err := verify.KeyID(s.pub)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	s.id = id
	return s, nil
}

// KeyID returns the key's ID (verify.KeyID), the hint in every bundle.
func (s *Signer) KeyID() string { return s.id }

// Public returns the public key.
func (s *Signer) Public() crypto.PublicKey { return s.pub }

// Sign signs message (a manifest or a trust statement, byte for byte) and
// returns the bundle JSON. It verifies the new signature with the public key
// before returning it, so a faulty external signer is caught here rather
// than by every device.
func (s *Signer) Sign(message []byte) ([]byte, error) {
	b := &verify.Bundle{MediaType: verify.MediaTypeV03, KeyHint: s.id}
	var sig []byte
	var err error
	switch s.hash {
	case crypto.SHA256:
		d := sha256.Sum256(message)
		b.DigestAlgorithm, b.Digest = crypto.SHA256, d[:]
		sig, err = s.key.Sign(s.rand, d[:], crypto.SHA256)
	case crypto.SHA384:
		d := sha512.Sum384(message)
		b.DigestAlgorithm, b.Digest = crypto.SHA384, d[:]
		sig, err = s.key.Sign(s.rand, d[:], crypto.SHA384)
	default: // Ed25519: pure, over the message; the bundle carries its SHA-512
		d := sha512.Sum512(message)
		b.DigestAlgorithm, b.Digest = crypto.SHA512, d[:]
		sig, err = s.key.Sign(s.rand, message, crypto.Hash(0))
	}
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	b.Signature = sig
	out, err := b.Marshal()
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	ts, err := verify.NewTrustSet(0, 1, s.pub)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	if _, err := ts.Signers(message, [][]byte{out}); err != nil {
		return nil, fmt.Errorf("sign: the signer produced a signature that does not verify: %w", err)
	}
	return out, nil
}
