// Package signtest makes release signing keys for tests: signers, the
// trust sets over their keys, and a trust set written where a fleet's
// configuration reads it.
package signtest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"os"
	"testing"

	"github.com/sigil-iot/sigil/firmware/manifest"
	"github.com/sigil-iot/sigil/firmware/sign"
	"github.com/sigil-iot/sigil/firmware/verify"
)

// Signer makes an ECDSA P-256 release key and returns its signer (whose
// Public is the key a trust set holds).
func Signer(t testing.TB) *sign.Signer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := sign.New(sign.Config{Key: key})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Signers makes n release keys (see Signer).
func Signers(t testing.TB, n int) []*sign.Signer {
	t.Helper()
	out := make([]*sign.Signer, n)
	for i := range out {
		out[i] = Signer(t)
	}
	return out
}

// Trust returns the trust set, of sequence number seq, that holds the
// public keys of signers and needs threshold of them.
func Trust(t testing.TB, seq uint64, threshold int, signers ...*sign.Signer) *verify.TrustSet {
	t.Helper()
	var keys []crypto.PublicKey
	for _, s := range signers {
		keys = append(keys, s.Public())
	}
	ts, err := verify.NewTrustSet(seq, threshold, keys...)
	if err != nil {
		t.Fatal(err)
	}
	return ts
}

// Key makes a release key and returns its signer and the trust set that
// holds only its public key (sequence 1, threshold 1).
func Key(t testing.TB) (*sign.Signer, *verify.TrustSet) {
	t.Helper()
	s := Signer(t)
	return s, Trust(t, 1, 1, s)
}

// TrustFile makes a release key (see Key), writes its trust set to path
// (the JSON a fleet's release_trust setting names) and returns its signer.
func TrustFile(t testing.TB, path string) *sign.Signer {
	t.Helper()
	s, ts := Key(t)
	b, err := ts.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return s
}

// Release marshals m and signs it with each of signers: the manifest and
// the bundles a release upload carries.
func Release(t testing.TB, m *manifest.Manifest, signers ...*sign.Signer) (raw []byte, bundles [][]byte) {
	t.Helper()
	raw, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range signers {
		b, err := s.Sign(raw)
		if err != nil {
			t.Fatal(err)
		}
		bundles = append(bundles, b)
	}
	return raw, bundles
}
