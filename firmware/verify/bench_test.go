package verify_test

import (
	"bytes"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"testing"

	"github.com/sigil-iot/sigil/firmware/manifest"
	"github.com/sigil-iot/sigil/firmware/sign/signtest"
	"github.com/sigil-iot/sigil/firmware/verify"
)

// BenchmarkRelease measures what a device spends verifying a release's
// signatures and metadata (bundle parsing, digest, signature checks,
// manifest parsing), the figure for docs/BENCHMARKS.md.
func BenchmarkRelease(b *testing.B) {
	m := testManifest(b)
	p256 := signtest.Signers(b, 3)
	p384, ed := newSigner(b, elliptic.P384()), newSigner(b, nil)
	for _, c := range []struct {
		name    string
		trust   *verify.TrustSet
		bundles [][]byte
		raw     []byte
	}{
		{"cosign-p256-1of1", trust(b, 1, "a"), bundles(b, "manifest.a.bundle.json"), read(b, "manifest.json")},
		{"p256-2of3", signtest.Trust(b, 1, 2, p256...), signAll(b, m, p256[2], p256[0]), m},
		{"p384-1of1", signtest.Trust(b, 1, 1, p384), signAll(b, m, p384), m},
		{"ed25519-1of1", signtest.Trust(b, 1, 1, ed), signAll(b, m, ed), m},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := verify.Release(c.raw, c.bundles, c.trust, now, model); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkImage measures hashing a downloaded image against its manifest.
func BenchmarkImage(b *testing.B) {
	img := make([]byte, 1<<20)
	rand.Read(img)
	m := &manifest.Manifest{Size: int64(len(img)), SHA256: sha256.Sum256(img)}
	b.SetBytes(int64(len(img)))
	for b.Loop() {
		if err := verify.Image(bytes.NewReader(img), m); err != nil {
			b.Fatal(err)
		}
	}
}
