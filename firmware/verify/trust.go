package verify

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/sigil-iot/sigil/pkg/wire"
)

// TrustType is the value of the "type" field of an encoded trust set.
const TrustType = "sigil.firmware.trust/v1"

// Bounds of a trust set and of the signatures looked at.
const (
	MaxKeys    = 16 // keys in a trust set
	MaxBundles = 16 // bundles considered per message
)

// ErrUnsupportedKey is returned for keys other than ECDSA P-256, ECDSA
// P-384 and Ed25519.
var ErrUnsupportedKey = errors.New("verify: unsupported key (want ECDSA P-256, ECDSA P-384 or Ed25519)")

// ErrWeakKey is returned for an Ed25519 public key that is a point of small
// order (the identity among them) or a non-canonical encoding of a point.
// A key of small order "verifies" signatures nobody made: with the
// identity, R = identity and S = 0 pass for every message.
var ErrWeakKey = errors.New("verify: weak Ed25519 public key (small order or non-canonical encoding)")

// ErrTrustSet is wrapped by the errors of NewTrustSet and ParseTrustSet.
var ErrTrustSet = errors.New("verify: invalid trust set")

// ErrStale is wrapped by Rotate's error when the statement's sequence number
// is not above the current one (an old statement replayed).
var ErrStale = errors.New("verify: trust statement not newer than the current trust set")

// ErrSequenceGap is wrapped by Rotate's error when the statement's sequence
// number is above the current one but not the next (current + 1): each
// rotation moves the sequence by exactly one, so no statement, however
// signed, can jump to a number (2^64-1) that blocks every later rotation.
var ErrSequenceGap = errors.New("verify: trust statement does not follow the current trust set")

// KeyID returns a public key's ID: the standard base64 of the SHA-256 of its
// PKIX (SubjectPublicKeyInfo) DER encoding. cosign writes the same value as
// a bundle's publicKey hint.
func KeyID(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrUnsupportedKey, err)
	}
	sum := sha256.Sum256(der)
	return base64.StdEncoding.EncodeToString(sum[:]), nil
}

// ParsePublicKey decodes a public key from a PEM "PUBLIC KEY" block (as
// cosign writes cosign.pub) or from PKIX DER, and checks that it is a
// supported type.
func ParsePublicKey(b []byte) (crypto.PublicKey, error) {
	der := b
	if blk, _ := pem.Decode(b); blk != nil {
		if blk.Type != "PUBLIC KEY" {
			return nil, fmt.Errorf("verify: PEM block %q, want PUBLIC KEY", blk.Type)
		}
		der = blk.Bytes
	}
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("verify: public key: %w", err)
	}
	if err := supported(pub); err != nil {
		return nil, err
	}
	return pub, nil
}

func supported(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() || k.Curve == elliptic.P384() {
			return nil
		}
	case ed25519.PublicKey:
		if len(k) == ed25519.PublicKeySize {
			return checkEd25519(k)
		}
	}
	return fmt.Errorf("%w: %T", ErrUnsupportedKey, pub)
}

// checkEd25519 refuses, with ErrWeakKey, an Ed25519 public key that is a
// point of small order (its order divides the cofactor 8: the identity and
// seven others) or a non-canonical encoding of a point. crypto/ed25519
// accepts such keys, and a small-order key verifies forged signatures
// (with the identity, R = identity and S = 0 pass for any message), so in
// a trust set it would turn M of N into M-1 of N. A key made by any
// Ed25519 key generation is a multiple of the base point, of large order,
// and canonically encoded.
//
// The check needs no curve arithmetic, which keeps it out of sigild's
// size budget (filippo.io/edwards25519 costs 64 KiB on arm64; the tests
// hold this check to it). An encoding is the y-coordinate, little-endian,
// with the sign of x in the top bit. It is non-canonical exactly when
// y >= p = 2^255 - 19, or when x = 0 (y = 1 or p-1) and the sign bit is set.
// The eight small-order points have five y-coordinates: 1 (the identity),
// p-1 (order 2), 0 (order 4, x and -x) and a pair y8, p-y8 (order 8, x and
// -x each). So a key is refused when its y is at least p or is one of those
// five, whatever its sign bit.
func checkEd25519(k ed25519.PublicKey) error {
	var y [ed25519.PublicKeySize]byte
	copy(y[:], k)
	y[31] &= 0x7f
	if y[0] >= 0xed && y[31] == 0x7f && allBytes(y[1:31], 0xff) {
		return fmt.Errorf("%w: non-canonical encoding (y >= p)", ErrWeakKey)
	}
	switch string(y[:]) {
	case smallOrderY0, smallOrderY1, smallOrderYMinus1, smallOrderY8, smallOrderYMinus8:
		return fmt.Errorf("%w: point of small order", ErrWeakKey)
	}
	return nil
}

// The y-coordinates of Ed25519's points of small order, encoded as keys
// with the sign bit clear (see checkEd25519).
const (
	smallOrderY0      = "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
	smallOrderY1      = "\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
	smallOrderYMinus1 = "\xec\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f"
	smallOrderY8      = "\x26\xe8\x95\x8f\xc2\xb2\x27\xb0\x45\xc3\xf4\x89\xf2\xef\x98\xf0\xd5\xdf\xac\x05\xd3\xc6\x33\x39\xb1\x38\x02\x88\x6d\x53\xfc\x05"
	smallOrderYMinus8 = "\xc7\x17\x6a\x70\x3d\x4d\xd8\x4f\xba\x3c\x0b\x76\x0d\x10\x67\x0f\x2a\x20\x53\xfa\x2c\x39\xcc\xc6\x4e\xc7\xfd\x77\x92\xac\x03\x7a"
)

// allBytes reports whether every byte of b is c.
func allBytes(b []byte, c byte) bool {
	for _, x := range b {
		if x != c {
			return false
		}
	}
	return true
}

// TrustSet is the set of release keys a device or the fleet trusts, the
// number of distinct keys (the threshold) whose signatures a release needs,
// and a sequence number that orders successive sets. It is immutable.
type TrustSet struct {
	sequence  uint64
	threshold int
	keys      []*trustedKey // sorted by ID (pointers: their sort shares the code of every other pointer sort in sigild)
}

type trustedKey struct {
	id  string
	der []byte
	pub crypto.PublicKey
}

// NewTrustSet returns a trust set of 1 to MaxKeys distinct supported keys.
// threshold 0 means 1; it may not exceed the number of keys.
func NewTrustSet(sequence uint64, threshold int, keys ...crypto.PublicKey) (*TrustSet, error) {
	if threshold == 0 {
		threshold = 1
	}
	t := &TrustSet{sequence: sequence, threshold: threshold}
	var errs []error
	if len(keys) == 0 || len(keys) > MaxKeys {
		errs = append(errs, fmt.Errorf("%d keys, want 1 to %d", len(keys), MaxKeys))
	}
	if threshold < 1 || threshold > len(keys) {
		errs = append(errs, fmt.Errorf("threshold %d is not between 1 and the number of keys (%d)", threshold, len(keys)))
	}
	for i, pub := range keys {
		if err := supported(pub); err != nil {
			errs = append(errs, fmt.Errorf("key %d: %w", i, err))
			continue
		}
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			errs = append(errs, fmt.Errorf("key %d: %w", i, err))
			continue
		}
		sum := sha256.Sum256(der)
		id := base64.StdEncoding.EncodeToString(sum[:])
		if t.key(id) != nil {
			errs = append(errs, fmt.Errorf("key %d (%s) is listed twice", i, id))
			continue
		}
		t.keys = append(t.keys, &trustedKey{id: id, der: der, pub: pub})
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrTrustSet, err)
	}
	slices.SortFunc(t.keys, func(a, b *trustedKey) int { return strings.Compare(a.id, b.id) })
	return t, nil
}

// Sequence returns the set's sequence number.
func (t *TrustSet) Sequence() uint64 { return t.sequence }

// Threshold returns how many distinct keys of the set must sign.
func (t *TrustSet) Threshold() int { return t.threshold }

// KeyIDs returns the IDs of the set's keys (see KeyID), sorted.
func (t *TrustSet) KeyIDs() []string {
	ids := make([]string, len(t.keys))
	for i, k := range t.keys {
		ids[i] = k.id
	}
	return ids
}

// Keys returns the set's public keys in KeyIDs order.
func (t *TrustSet) Keys() []crypto.PublicKey {
	out := make([]crypto.PublicKey, len(t.keys))
	for i, k := range t.keys {
		out[i] = k.pub
	}
	return out
}

func (t *TrustSet) key(id string) *trustedKey {
	for _, k := range t.keys {
		if k.id == id {
			return k
		}
	}
	return nil
}

// jsonTrust is the encoding of a trust set; its field order is canonical.
type jsonTrust struct {
	Type      string   `json:"type"`
	Sequence  uint64   `json:"sequence"`
	Threshold int      `json:"threshold"`
	Keys      [][]byte `json:"keys"` // PKIX DER, standard base64, in key ID order
}

// Marshal returns the canonical encoding of the set: compact JSON
//
//	{"type":"sigil.firmware.trust/v1","sequence":2,"threshold":2,"keys":["MFkw…","MHYw…"]}
//
// with each key's PKIX DER in standard base64, keys in key ID order. It is
// what a device stores, what enrollment delivers, and the statement that
// release keys sign to rotate to this set.
func (t *TrustSet) Marshal() ([]byte, error) {
	j := jsonTrust{Type: TrustType, Sequence: t.sequence, Threshold: t.threshold}
	for _, k := range t.keys {
		j.Keys = append(j.Keys, k.der)
	}
	b, err := json.Marshal(j)
	if err != nil {
		return nil, fmt.Errorf("verify: encode trust set: %w", err)
	}
	return b, nil
}

// ParseTrustSet decodes a trust set in the canonical form Marshal writes
// (anything else is refused, so signed statements have one meaning). Errors
// wrap ErrTrustSet.
func ParseTrustSet(b []byte) (*TrustSet, error) {
	if len(b) > MaxBundleSize {
		return nil, fmt.Errorf("%w: %d bytes", ErrTrustSet, len(b))
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var j jsonTrust
	if err := dec.Decode(&j); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrTrustSet, err)
	}
	if j.Type != TrustType {
		return nil, fmt.Errorf("%w: type %q is not %q", ErrTrustSet, j.Type, TrustType)
	}
	if len(j.Keys) > MaxKeys {
		return nil, fmt.Errorf("%w: %d keys, at most %d", ErrTrustSet, len(j.Keys), MaxKeys)
	}
	keys := make([]crypto.PublicKey, 0, len(j.Keys))
	for i, der := range j.Keys {
		pub, err := x509.ParsePKIXPublicKey(der)
		if err != nil {
			return nil, fmt.Errorf("%w: key %d: %w", ErrTrustSet, i, err)
		}
		keys = append(keys, pub)
	}
	if j.Threshold == 0 {
		return nil, fmt.Errorf("%w: threshold 0", ErrTrustSet)
	}
	t, err := NewTrustSet(j.Sequence, j.Threshold, keys...)
	if err != nil {
		return nil, err
	}
	canon, err := t.Marshal()
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(canon, b) {
		return nil, fmt.Errorf("%w: not in canonical form", ErrTrustSet)
	}
	return t, nil
}

// Rotate verifies a rotation statement, the canonical encoding of a new
// trust set (TrustSet.Marshal), and returns the new set. The statement may
// end in one newline ("\n" or "\r\n", nothing else), as a statement file
// does that an editor or `sigil firmware trust > FILE` wrote; the
// signatures are checked over exactly the bytes given, newline included,
// the way cosign sign-blob signs a file. It accepts the statement only
// when all of these hold:
//
//   - its sequence number is above current's (an old statement cannot be
//     replayed; error wraps ErrStale), and is the next one, current's + 1
//     (a jump could reach 2^64-1 and block every later rotation; error
//     wraps ErrSequenceGap);
//   - distinct keys of current, at least current's threshold, signed it;
//   - distinct keys of the new set, at least the new threshold, signed it,
//     so that nobody rotates to keys they cannot use or to a mistyped set.
//
// Signature failures wrap ErrSignature. Errors are *wire.Error values:
// ReasonFirmwareSignature, ReasonReplay for a stale statement,
// ReasonBadRequest for a malformed one or a sequence gap.
func Rotate(current *TrustSet, statement []byte, bundles [][]byte) (*TrustSet, error) {
	if current == nil {
		return nil, wire.Refuse(wire.ReasonInternal, "no current trust set", errors.New("verify: Rotate with a nil trust set"))
	}
	next, err := parseStatement(statement)
	if err != nil {
		return nil, wire.Refuse(wire.ReasonBadRequest, "malformed trust statement", err)
	}
	if next.sequence <= current.sequence {
		return nil, wire.Refuse(wire.ReasonReplay, "trust statement is not newer than the current trust set",
			fmt.Errorf("%w: sequence %d, current %d", ErrStale, next.sequence, current.sequence))
	}
	if next.sequence-1 != current.sequence {
		return nil, wire.Refuse(wire.ReasonBadRequest, "trust statement does not follow the current trust set",
			fmt.Errorf("%w: sequence %d, current %d, want %d", ErrSequenceGap, next.sequence, current.sequence, current.sequence+1))
	}
	if _, err := current.Signers(statement, bundles); err != nil {
		return nil, signatureRefusal("trust statement lacks the current threshold of signatures", fmt.Errorf("verify: current set: %w", err))
	}
	if _, err := next.Signers(statement, bundles); err != nil {
		return nil, signatureRefusal("trust statement lacks the new set's threshold of signatures", fmt.Errorf("verify: new set: %w", err))
	}
	return next, nil
}

// parseStatement reads the trust set of a rotation statement: its
// canonical encoding, optionally followed by one newline ("\n" or "\r\n"),
// which a statement file keeps when it is signed as it is (cosign sign-blob
// signs the file's bytes).
func parseStatement(statement []byte) (*TrustSet, error) {
	b := statement
	if n := len(b); n > 0 && b[n-1] == '\n' {
		b = b[:n-1]
		if n := len(b); n > 0 && b[n-1] == '\r' {
			b = b[:n-1]
		}
	}
	return ParseTrustSet(b)
}

// signatureRefusal is the ReasonFirmwareSignature refusal of a message
// that lacks signatures: public, the message, with LegacyBundleHint when a
// bundle in cosign's old format is among the causes.
func signatureRefusal(public string, cause error) *wire.Error {
	if errors.Is(cause, ErrLegacyBundle) {
		public += "; " + LegacyBundleHint
	}
	return wire.Refuse(wire.ReasonFirmwareSignature, public, cause)
}

// Signers returns the sorted IDs of the set's keys that signed msg in one of
// the bundles, or an error wrapping ErrSignature when they are fewer than
// the threshold. Manifest, Release and Rotate use it; it serves other signed
// statements too. Each key counts once however many bundles it made; bundles
// that do not verify (malformed, another key, another message) count for
// nothing and their reasons are joined into the error. At most MaxBundles
// bundles are looked at, each checked against at most every key once.
func (t *TrustSet) Signers(msg []byte, bundles [][]byte) ([]string, error) {
	if len(bundles) > MaxBundles {
		return nil, fmt.Errorf("%w: %d bundles, at most %d", ErrSignature, len(bundles), MaxBundles)
	}
	signed := make(map[string]bool, len(t.keys))
	var why []error
	for i, raw := range bundles {
		id, err := t.verifyBundle(msg, raw, signed)
		if err != nil {
			why = append(why, fmt.Errorf("bundle %d: %w", i, err))
			continue
		}
		signed[id] = true
		if len(signed) >= t.threshold {
			break
		}
	}
	if len(signed) < t.threshold {
		return nil, fmt.Errorf("%w: %d of %d required trusted keys signed: %w", ErrSignature, len(signed), t.threshold, errors.Join(why...))
	}
	ids := make([]string, 0, len(signed))
	for id := range signed {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids, nil
}

// verifyBundle returns the ID of the trusted key, not yet in done, whose
// signature in raw covers msg. It checks that the bundle's message digest is
// the digest of msg, then tries the key the hint names first and the others
// after it (the hint is not trusted; a wrong one costs time, never
// acceptance).
func (t *TrustSet) verifyBundle(msg, raw []byte, done map[string]bool) (string, error) {
	b, err := ParseBundle(raw)
	if err != nil {
		return "", err
	}
	h := b.DigestAlgorithm.New()
	h.Write(msg)
	if subtle.ConstantTimeCompare(h.Sum(nil), b.Digest) != 1 {
		return "", errors.New("message digest in the bundle is not the digest of this message")
	}
	hinted := t.key(b.KeyHint)
	order := make([]*trustedKey, 0, len(t.keys))
	if hinted != nil && !done[hinted.id] {
		order = append(order, hinted)
	}
	for _, k := range t.keys {
		if k != hinted && !done[k.id] {
			order = append(order, k)
		}
	}
	for _, k := range order {
		if verifySignature(k.pub, msg, b.Signature) {
			return k.id, nil
		}
	}
	switch {
	case hinted != nil && done[hinted.id]:
		return "", fmt.Errorf("key %s already counted", hinted.id)
	case b.KeyHint != "" && hinted == nil:
		return "", fmt.Errorf("signed by a key outside the trust set (hint %s)", b.KeyHint)
	}
	return "", errors.New("signature does not verify with any trusted key")
}

// verifySignature checks sig over msg the way sigstore's default verifiers
// do: ECDSA P-256 over SHA-256, ECDSA P-384 over SHA-384 (ASN.1 DER
// signatures), pure Ed25519 over the message.
func verifySignature(pub crypto.PublicKey, msg, sig []byte) bool {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			d := sha256.Sum256(msg)
			return ecdsa.VerifyASN1(k, d[:], sig)
		case elliptic.P384():
			d := sha512.Sum384(msg)
			return ecdsa.VerifyASN1(k, d[:], sig)
		}
	case ed25519.PublicKey:
		return ed25519.Verify(k, msg, sig)
	}
	return false
}
