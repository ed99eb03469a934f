package verify

import (
	"bytes"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
)

// Media types of the sigstore bundles ParseBundle accepts. cosign v2 (sign-blob
// --new-bundle-format) writes v0.3; v0.2 differs from it only in parts
// ParseBundle does not use (transparency-log proofs, certificate chains).
const (
	MediaTypeV03 = "application/vnd.dev.sigstore.bundle.v0.3+json"
	MediaTypeV02 = "application/vnd.dev.sigstore.bundle+json;version=0.2"
)

// MaxBundleSize bounds an encoded bundle.
const MaxBundleSize = 64 << 10

// ErrBundle is wrapped by every error of ParseBundle.
var ErrBundle = errors.New("verify: malformed or unsupported bundle")

// ErrLegacyBundle is wrapped, besides ErrBundle, by ParseBundle's error for
// a bundle in cosign's old format: the JSON object that `cosign sign-blob
// --bundle` writes without --new-bundle-format ("base64Signature", and
// "cert" and "rekorBundle" when there are). It names neither the key nor
// the digest of the signed message; sign again with --new-bundle-format.
// Manifest and Rotate add LegacyBundleHint to their public message when
// such a bundle is among those that did not count.
var ErrLegacyBundle = errors.New("verify: cosign bundle in the old format (base64Signature)")

// LegacyBundleHint is the public text that says which bundle format is
// expected instead of cosign's old one.
const LegacyBundleHint = "a bundle is in cosign's old format: sign with cosign sign-blob --new-bundle-format (a sigstore bundle, " + MediaTypeV03 + ") or sigil firmware sign"

// Bundle is the part of a sigstore bundle that a key-based signature over a
// blob needs: the signature, the digest it claims to cover, and the hint
// that names the signing key. Nothing in it is trusted until a trusted key
// verifies the signature over the message.
type Bundle struct {
	MediaType string
	// KeyHint is verificationMaterial.publicKey.hint: cosign and
	// firmware/sign put the key ID (see KeyID) there. It only says which
	// key to try first.
	KeyHint string
	// DigestAlgorithm and Digest are messageSignature.messageDigest: the
	// hash of the signed message (SHA-256, SHA-384 or SHA-512).
	DigestAlgorithm crypto.Hash
	Digest          []byte
	// Signature is messageSignature.signature: ASN.1 DER for ECDSA, 64 bytes
	// for Ed25519.
	Signature []byte
}

// jsonBundle is the protobuf-JSON shape of a sigstore bundle
// (dev.sigstore.bundle.v1.Bundle) as cosign and sigstore-go write it:
// lowerCamelCase names, bytes in standard base64.
type jsonBundle struct {
	MediaType            string          `json:"mediaType"`
	VerificationMaterial *jsonMaterial   `json:"verificationMaterial"`
	MessageSignature     *jsonMessageSig `json:"messageSignature,omitempty"`
	DSSEEnvelope         json.RawMessage `json:"dsseEnvelope,omitempty"`
}

type jsonMaterial struct {
	PublicKey                 *jsonKeyID      `json:"publicKey,omitempty"`
	Certificate               json.RawMessage `json:"certificate,omitempty"`
	X509CertificateChain      json.RawMessage `json:"x509CertificateChain,omitempty"`
	TlogEntries               json.RawMessage `json:"tlogEntries,omitempty"`
	TimestampVerificationData json.RawMessage `json:"timestampVerificationData,omitempty"`
}

type jsonKeyID struct {
	Hint string `json:"hint,omitempty"`
}

type jsonMessageSig struct {
	MessageDigest *jsonDigest `json:"messageDigest"`
	Signature     []byte      `json:"signature"`
}

type jsonDigest struct {
	Algorithm string `json:"algorithm"`
	Digest    []byte `json:"digest"`
}

var digestAlgorithms = map[string]crypto.Hash{
	"SHA2_256": crypto.SHA256,
	"SHA2_384": crypto.SHA384,
	"SHA2_512": crypto.SHA512,
}

// ParseBundle decodes a sigstore bundle (v0.2 or v0.3, JSON) that carries a
// message signature made with a public key: verificationMaterial.publicKey
// and messageSignature. It refuses, with errors wrapping ErrBundle:
// certificate-based (keyless) bundles, DSSE envelopes (attestations),
// unknown fields, a missing signature or digest, and a digest whose size
// does not match its algorithm. Transparency-log entries and timestamps are
// allowed and ignored: release trust comes from the trust set's keys, which
// need no log (see the package documentation).
func ParseBundle(b []byte) (*Bundle, error) {
	if len(b) > MaxBundleSize {
		return nil, fmt.Errorf("%w: %d bytes exceeds %d", ErrBundle, len(b), MaxBundleSize)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var j jsonBundle
	if err := dec.Decode(&j); err != nil {
		if legacyBundle(b) {
			return nil, fmt.Errorf("%w: %w; sign with cosign sign-blob --new-bundle-format", ErrBundle, ErrLegacyBundle)
		}
		return nil, fmt.Errorf("%w: %w", ErrBundle, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: data after the bundle", ErrBundle)
	}
	switch {
	case j.MediaType != MediaTypeV03 && j.MediaType != MediaTypeV02:
		return nil, fmt.Errorf("%w: media type %q (want %s or %s)", ErrBundle, j.MediaType, MediaTypeV03, MediaTypeV02)
	case j.DSSEEnvelope != nil:
		return nil, fmt.Errorf("%w: DSSE envelope (an attestation); sign the manifest as a blob", ErrBundle)
	case j.VerificationMaterial == nil:
		return nil, fmt.Errorf("%w: no verificationMaterial", ErrBundle)
	case j.VerificationMaterial.Certificate != nil || j.VerificationMaterial.X509CertificateChain != nil:
		return nil, fmt.Errorf("%w: certificate-based (keyless) signature; release keys are public keys", ErrBundle)
	case j.VerificationMaterial.PublicKey == nil:
		return nil, fmt.Errorf("%w: no verificationMaterial.publicKey", ErrBundle)
	case j.MessageSignature == nil:
		return nil, fmt.Errorf("%w: no messageSignature", ErrBundle)
	case len(j.MessageSignature.Signature) == 0:
		return nil, fmt.Errorf("%w: empty signature", ErrBundle)
	case j.MessageSignature.MessageDigest == nil:
		return nil, fmt.Errorf("%w: no messageDigest", ErrBundle)
	}
	d := j.MessageSignature.MessageDigest
	alg, ok := digestAlgorithms[d.Algorithm]
	if !ok {
		return nil, fmt.Errorf("%w: digest algorithm %q (want SHA2_256, SHA2_384 or SHA2_512)", ErrBundle, d.Algorithm)
	}
	if len(d.Digest) != alg.Size() {
		return nil, fmt.Errorf("%w: %s digest of %d bytes", ErrBundle, d.Algorithm, len(d.Digest))
	}
	return &Bundle{
		MediaType:       j.MediaType,
		KeyHint:         j.VerificationMaterial.PublicKey.Hint,
		DigestAlgorithm: alg,
		Digest:          d.Digest,
		Signature:       j.MessageSignature.Signature,
	}, nil
}

// legacyBundle reports whether b is a JSON object in cosign's old bundle
// format: it has "base64Signature" and no "mediaType".
func legacyBundle(b []byte) bool {
	var j struct {
		MediaType       *string          `json:"mediaType"`
		Base64Signature *json.RawMessage `json:"base64Signature"`
	}
	return json.Unmarshal(b, &j) == nil && j.Base64Signature != nil && j.MediaType == nil
}

// Marshal encodes the bundle as sigstore bundle JSON of its media type
// (MediaTypeV03 when empty), as cosign writes it: a publicKey hint and a
// messageSignature, no transparency-log entry.
func (b *Bundle) Marshal() ([]byte, error) {
	mt := b.MediaType
	if mt == "" {
		mt = MediaTypeV03
	}
	var alg string
	for name, h := range digestAlgorithms {
		if h == b.DigestAlgorithm {
			alg = name
		}
	}
	switch {
	case mt != MediaTypeV03 && mt != MediaTypeV02:
		return nil, fmt.Errorf("verify: bundle media type %q unsupported", mt)
	case alg == "" || len(b.Digest) != b.DigestAlgorithm.Size():
		return nil, fmt.Errorf("verify: bundle digest algorithm %v with %d bytes unsupported", b.DigestAlgorithm, len(b.Digest))
	case len(b.Signature) == 0:
		return nil, errors.New("verify: bundle without signature")
	}
	return json.Marshal(jsonBundle{
		MediaType:            mt,
		VerificationMaterial: &jsonMaterial{PublicKey: &jsonKeyID{Hint: b.KeyHint}},
		MessageSignature: &jsonMessageSig{
			MessageDigest: &jsonDigest{Algorithm: alg, Digest: b.Digest},
			Signature:     b.Signature,
		},
	})
}
