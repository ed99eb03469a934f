package verify_test

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"math/big"
	"slices"
	"testing"

	"filippo.io/edwards25519"

	"github.com/sigil-iot/sigil/firmware/sign/signtest"
	"github.com/sigil-iot/sigil/firmware/verify"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// fieldP is the prime 2^255 - 19 of Ed25519's field.
var fieldP = new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 255), big.NewInt(19))

// groupL is the order of Ed25519's prime-order subgroup.
var groupL, _ = new(big.Int).SetString("7237005577332262213973186563042994240857116359379907606001950938285454250989", 10)

// smallOrderPoints returns the canonical encodings of the eight points of
// Ed25519 whose order divides 8 (the identity among them). They are
// computed, not copied: T = P - [8⁻¹ mod L]([8]P) is the torsion part of
// a point P, and a P whose torsion part has order 8 generates all eight.
func smallOrderPoints(t *testing.T) [][]byte {
	t.Helper()
	inv := new(big.Int).ModInverse(big.NewInt(8), groupL)
	le := make([]byte, 32)
	inv.FillBytes(le)
	slices.Reverse(le)
	s, err := edwards25519.NewScalar().SetCanonicalBytes(le)
	if err != nil {
		t.Fatal(err)
	}
	identity := edwards25519.NewIdentityPoint()
	for i := range 1000 {
		enc := sha256.Sum256([]byte{byte(i), byte(i >> 8)})
		enc[31] &= 0x7f
		p, err := new(edwards25519.Point).SetBytes(enc[:])
		if err != nil {
			continue // not on the curve
		}
		prime := new(edwards25519.Point).ScalarMult(s, new(edwards25519.Point).MultByCofactor(p))
		torsion := new(edwards25519.Point).Subtract(p, prime)
		four := new(edwards25519.Point).Add(torsion, torsion)
		four.Add(four, four)
		if four.Equal(identity) == 1 {
			continue // torsion part of order 1, 2 or 4
		}
		var out [][]byte
		q := edwards25519.NewIdentityPoint()
		for range 8 {
			out = append(out, q.Bytes())
			q = new(edwards25519.Point).Add(q, torsion)
		}
		if q.Equal(identity) != 1 {
			t.Fatal("the torsion part does not have order 8")
		}
		return out
	}
	t.Fatal("no point with a torsion part of order 8 found")
	return nil
}

// nonCanonical returns the other encodings the Ed25519 decoding rules
// accept for the point encoded as enc: y + p when that still fits in 255
// bits (y < 19), and the sign bit flipped when x is 0.
func nonCanonical(enc []byte) [][]byte {
	be := reversed(enc)
	be[0] &= 0x7f // the sign bit of x
	y := new(big.Int).SetBytes(be)
	var out [][]byte
	if y.Cmp(big.NewInt(19)) < 0 {
		for _, sign := range []byte{0, 0x80} {
			b := make([]byte, 32)
			new(big.Int).Add(y, fieldP).FillBytes(b)
			slices.Reverse(b)
			b[31] |= sign
			out = append(out, b)
		}
	}
	p, err := new(edwards25519.Point).SetBytes(enc)
	if err == nil {
		flipped := bytes.Clone(enc)
		flipped[31] ^= 0x80
		if q, err := new(edwards25519.Point).SetBytes(flipped); err == nil && q.Equal(p) == 1 {
			out = append(out, flipped) // x = 0: -x is x
		}
	}
	return out
}

func reversed(b []byte) []byte {
	r := bytes.Clone(b)
	slices.Reverse(r)
	return r
}

// trustJSON writes a trust set in the canonical form by hand, so that
// keys NewTrustSet refuses can be put in one.
func trustJSON(t *testing.T, seq uint64, threshold int, keys ...crypto.PublicKey) []byte {
	t.Helper()
	slices.SortFunc(keys, func(a, b crypto.PublicKey) int {
		ia, _ := verify.KeyID(a)
		ib, _ := verify.KeyID(b)
		return bytes.Compare([]byte(ia), []byte(ib))
	})
	var ders [][]byte
	for _, k := range keys {
		der, err := x509.MarshalPKIXPublicKey(k)
		if err != nil {
			t.Fatal(err)
		}
		ders = append(ders, der)
	}
	b, err := json.Marshal(struct {
		Type      string   `json:"type"`
		Sequence  uint64   `json:"sequence"`
		Threshold int      `json:"threshold"`
		Keys      [][]byte `json:"keys"`
	}{verify.TrustType, seq, threshold, ders})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestWeakEd25519KeysRefused: every Ed25519 point of small order (the
// identity included), in its canonical encoding and in every non-canonical
// one, is refused as a release key wherever a key is loaded: a PEM/DER
// public key, a new trust set, and a trust set as a device stores it or a
// rotation carries it. A non-canonical encoding of a point of large order
// is refused too (one key, one encoding).
func TestWeakEd25519KeysRefused(t *testing.T) {
	points := smallOrderPoints(t)
	identity := append([]byte{1}, make([]byte, 31)...)
	if !slices.ContainsFunc(points, func(p []byte) bool { return bytes.Equal(p, identity) }) {
		t.Fatal("the identity is not among the small-order points")
	}
	weak := map[string][]byte{}
	for _, p := range points {
		weak["small order "+hex.EncodeToString(p)] = p
		for _, n := range nonCanonical(p) {
			weak["small order, non-canonical "+hex.EncodeToString(n)] = n
		}
	}
	if len(weak) != 8+6 {
		// 8 points; y = 0 and y = 1 again as y + p with either sign (4);
		// x = 0 with the sign bit set, for y = 1 and y = -1 (2).
		t.Fatalf("%d weak encodings, want 14", len(weak))
	}
	for y := int64(2); y < 19; y++ {
		enc := make([]byte, 32)
		new(big.Int).Add(big.NewInt(y), fieldP).FillBytes(enc)
		slices.Reverse(enc)
		if p, err := new(edwards25519.Point).SetBytes(enc); err == nil && new(edwards25519.Point).MultByCofactor(p).Equal(edwards25519.NewIdentityPoint()) != 1 {
			weak["large order, non-canonical "+hex.EncodeToString(enc)] = enc
		}
	}
	good, _, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, enc := range weak {
		t.Run(name, func(t *testing.T) {
			key := ed25519.PublicKey(enc)
			der, err := x509.MarshalPKIXPublicKey(key)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := verify.ParsePublicKey(der); !errors.Is(err, verify.ErrWeakKey) {
				t.Errorf("ParsePublicKey: %v, want ErrWeakKey", err)
			}
			if _, err := verify.NewTrustSet(1, 1, good, key); !errors.Is(err, verify.ErrWeakKey) || !errors.Is(err, verify.ErrTrustSet) {
				t.Errorf("NewTrustSet: %v, want ErrTrustSet and ErrWeakKey", err)
			}
			if _, err := verify.ParseTrustSet(trustJSON(t, 1, 1, good, key)); !errors.Is(err, verify.ErrWeakKey) || !errors.Is(err, verify.ErrTrustSet) {
				t.Errorf("ParseTrustSet: %v, want ErrTrustSet and ErrWeakKey", err)
			}
		})
	}
	// A sound key still loads.
	if _, err := verify.ParseTrustSet(trustJSON(t, 1, 1, good)); err != nil {
		t.Fatalf("a sound Ed25519 key: %v", err)
	}
}

// TestWeakKeyTwoOfTwo: the identity "signs" every message (R = identity,
// S = 0 satisfies the verification equation), so a 2-of-2 set holding it
// would accept a release signed by the other key alone. The set is refused
// when it is loaded, and a rotation to it too.
func TestWeakKeyTwoOfTwo(t *testing.T) {
	identity := ed25519.PublicKey(append([]byte{1}, make([]byte, 31)...))
	m := testManifest(t)
	forged := append(append([]byte{1}, make([]byte, 31)...), make([]byte, 32)...)
	if !ed25519.Verify(identity, m, forged) {
		t.Fatal("premise: the identity key's forged signature does not verify")
	}
	k := newSigner(t, nil)
	raw := trustJSON(t, 2, 2, k.Public(), identity)
	if _, err := verify.ParseTrustSet(raw); !errors.Is(err, verify.ErrWeakKey) {
		t.Fatalf("2-of-2 set with the identity key: %v, want ErrWeakKey", err)
	}
	// Rotating to it is refused as malformed, whoever signed it.
	cur := signtest.Trust(t, 1, 1, k)
	idID, err := verify.KeyID(identity)
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256(raw)
	fb, err := (&verify.Bundle{MediaType: verify.MediaTypeV03, KeyHint: idID, DigestAlgorithm: crypto.SHA256, Digest: d[:],
		Signature: forged}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	_, err = verify.Rotate(cur, raw, append(signAll(t, raw, k), fb))
	refused(t, err, wire.ReasonBadRequest, verify.ErrWeakKey)
}

// weakByArithmetic is the reference checkEd25519 is held to, computed with
// filippo.io/edwards25519: ok is false when enc decodes to no point (such a
// key verifies nothing); weak is whether the point has small order or enc
// is not its canonical encoding.
func weakByArithmetic(enc []byte) (weak, ok bool) {
	p, err := new(edwards25519.Point).SetBytes(enc)
	if err != nil {
		return false, false
	}
	small := new(edwards25519.Point).MultByCofactor(p).Equal(edwards25519.NewIdentityPoint()) == 1
	return small || !bytes.Equal(p.Bytes(), enc), true
}

// checkAgainstArithmetic fails t when ParsePublicKey's verdict on the
// Ed25519 key enc differs from the curve arithmetic's.
func checkAgainstArithmetic(t *testing.T, enc []byte) {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(ed25519.PublicKey(enc))
	if err != nil {
		t.Fatal(err)
	}
	_, err = verify.ParsePublicKey(der)
	if err != nil && !errors.Is(err, verify.ErrWeakKey) {
		t.Fatalf("%x: %v", enc, err)
	}
	weak, ok := weakByArithmetic(enc)
	if ok && weak != (err != nil) {
		t.Fatalf("%x: weak by arithmetic %v, refused %v (%v)", enc, weak, err != nil, err)
	}
}

// TestEd25519KeyCheckMatchesArithmetic holds the byte-level check to the
// curve arithmetic: on every encoding with y >= p (either sign), on the
// small-order points and their neighbours, and on random encodings.
func TestEd25519KeyCheckMatchesArithmetic(t *testing.T) {
	var encs [][]byte
	for y := int64(0); y < 19; y++ {
		for _, sign := range []byte{0, 0x80} {
			b := make([]byte, 32)
			new(big.Int).Add(big.NewInt(y), fieldP).FillBytes(b)
			slices.Reverse(b)
			b[31] |= sign
			encs = append(encs, b)
		}
	}
	for _, p := range smallOrderPoints(t) {
		for _, d := range []int{-1, 0, 1} {
			for _, sign := range []byte{0, 0x80} {
				b := bytes.Clone(p)
				b[0] += byte(d)
				b[31] = b[31]&0x7f | sign
				encs = append(encs, b)
			}
		}
	}
	for i := range 3000 {
		h := sha256.Sum256([]byte{'k', byte(i), byte(i >> 8)})
		encs = append(encs, h[:])
	}
	points := 0
	for _, enc := range encs {
		if _, ok := weakByArithmetic(enc); ok {
			points++
		}
		checkAgainstArithmetic(t, enc)
	}
	if points < 1000 {
		t.Fatalf("only %d of %d encodings were points: the comparison is too thin", points, len(encs))
	}
	for range 200 {
		pub, _, err := ed25519.GenerateKey(nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := verify.NewTrustSet(1, 1, pub); err != nil {
			t.Fatalf("generated key refused: %v", err)
		}
	}
}

// FuzzEd25519KeyCheck holds the byte-level check to the curve arithmetic
// on arbitrary 32-byte keys.
func FuzzEd25519KeyCheck(f *testing.F) {
	f.Add(append([]byte{1}, make([]byte, 31)...))
	f.Add(bytes.Repeat([]byte{0xff}, 32))
	pub, _, err := ed25519.GenerateKey(nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte(pub))
	f.Fuzz(func(t *testing.T, enc []byte) {
		if len(enc) != ed25519.PublicKeySize {
			return
		}
		checkAgainstArithmetic(t, enc)
	})
}
