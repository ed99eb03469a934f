package verify_test

import (
	"bytes"
	"crypto"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/firmware/manifest"
	"github.com/sigil-iot/sigil/firmware/verify"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// The vectors under testdata/cosign were made by the real cosign CLI with
// scripts/cosign-vectors.sh; see that script for the exact commands.
const vectors = "testdata/cosign"

// Inside the manifests' validity (they expire 2036-01-01T00:00:00Z).
var now = time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)

const model = "sigil-sim"

func read(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(vectors, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func pub(t testing.TB, name string) crypto.PublicKey {
	t.Helper()
	k, err := verify.ParsePublicKey(read(t, "test-"+name+".pub"))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func keyID(t testing.TB, name string) string {
	t.Helper()
	id, err := verify.KeyID(pub(t, name))
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func trust(t testing.TB, threshold int, names ...string) *verify.TrustSet {
	t.Helper()
	var keys []crypto.PublicKey
	for _, n := range names {
		keys = append(keys, pub(t, n))
	}
	ts, err := verify.NewTrustSet(1, threshold, keys...)
	if err != nil {
		t.Fatal(err)
	}
	return ts
}

func bundles(t testing.TB, names ...string) [][]byte {
	t.Helper()
	var out [][]byte
	for _, n := range names {
		out = append(out, read(t, n))
	}
	return out
}

// refused checks that err is a *wire.Error with reason r that wraps want.
func refused(t *testing.T, err error, r wire.Reason, want error) {
	t.Helper()
	var we *wire.Error
	if !errors.As(err, &we) {
		t.Fatalf("error %v is not a *wire.Error", err)
	}
	if we.Reason != r {
		t.Errorf("reason %v, want %v (%v)", we.Reason, r, err)
	}
	if !errors.Is(err, want) {
		t.Errorf("error %v does not wrap %v", err, want)
	}
}

// TestCosignBundleAccepted: bundles exactly as cosign wrote them verify, the
// result is the manifest cosign signed, and the image matches it.
func TestCosignBundleAccepted(t *testing.T) {
	raw := read(t, "manifest.json")
	for _, k := range []string{"a", "b", "c", "p384"} {
		t.Run(k, func(t *testing.T) {
			v, err := verify.Release(raw, bundles(t, "manifest."+k+".bundle.json"), trust(t, 1, k), now, model)
			if err != nil {
				t.Fatal(err)
			}
			if len(v.Signers) != 1 || v.Signers[0] != keyID(t, k) {
				t.Errorf("signers %q, want the key ID of test-%s.pub", v.Signers, k)
			}
			if !bytes.Equal(v.Raw, raw) || v.Manifest.Name != "sim-os" || v.Manifest.Version != "1.4.0" || v.Manifest.SecurityVersion != 3 {
				t.Errorf("verified manifest is not the signed one: %+v", v.Manifest)
			}
			if err := verify.Image(bytes.NewReader(read(t, "image.bin")), v.Manifest); err != nil {
				t.Errorf("image of the vectors refused: %v", err)
			}
		})
	}
}

func TestCosignTwoOfThree(t *testing.T) {
	ts := trust(t, 2, "a", "b", "c")
	v, err := verify.Release(read(t, "manifest.json"), bundles(t, "manifest.c.bundle.json", "manifest.untrusted.bundle.json", "manifest.a.bundle.json"), ts, now, model)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{keyID(t, "a"), keyID(t, "c")}; strings.Join(v.Signers, ",") != strings.Join(sorted(want), ",") {
		t.Errorf("signers %q, want %q", v.Signers, want)
	}
}

func sorted(s []string) []string {
	out := append([]string(nil), s...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

func TestRejectTamperedImage(t *testing.T) {
	v, err := verify.Release(read(t, "manifest.json"), bundles(t, "manifest.a.bundle.json"), trust(t, 1, "a"), now, model)
	if err != nil {
		t.Fatal(err)
	}
	img := read(t, "image.bin")
	img[len(img)/2] ^= 0x01
	refused(t, verify.Image(bytes.NewReader(img), v.Manifest), wire.ReasonFirmwareDigest, verify.ErrImage)
}

func TestRejectTamperedManifest(t *testing.T) {
	raw := read(t, "manifest.json")
	// Still a valid canonical manifest: only the signature can tell.
	tampered := bytes.Replace(raw, []byte(`"security_version":3`), []byte(`"security_version":4`), 1)
	if bytes.Equal(tampered, raw) {
		t.Fatal("tampering changed nothing")
	}
	if _, err := manifest.Parse(tampered); err != nil {
		t.Fatalf("tampered manifest should still parse: %v", err)
	}
	_, err := verify.Release(tampered, bundles(t, "manifest.a.bundle.json"), trust(t, 1, "a"), now, model)
	refused(t, err, wire.ReasonFirmwareSignature, verify.ErrSignature)
}

func TestRejectUntrustedKey(t *testing.T) {
	_, err := verify.Release(read(t, "manifest.json"), bundles(t, "manifest.untrusted.bundle.json"), trust(t, 1, "a", "b"), now, model)
	refused(t, err, wire.ReasonFirmwareSignature, verify.ErrSignature)
	if !strings.Contains(err.(*wire.Error).Err.Error(), "outside the trust set") {
		t.Errorf("cause does not say the key is untrusted: %v", err.(*wire.Error).Err)
	}
}

func TestRejectFewerThanThreshold(t *testing.T) {
	ts := trust(t, 2, "a", "b", "c")
	raw := read(t, "manifest.json")
	for name, bs := range map[string][][]byte{
		"one signature":           bundles(t, "manifest.a.bundle.json"),
		"same key twice":          bundles(t, "manifest.a.bundle.json", "manifest.a.bundle.json"),
		"one trusted, one not":    bundles(t, "manifest.b.bundle.json", "manifest.untrusted.bundle.json"),
		"none":                    nil,
		"one valid, one garbage":  {read(t, "manifest.c.bundle.json"), []byte("{")},
		"one valid, other's blob": bundles(t, "manifest.c.bundle.json", "other-manifest.a.bundle.json"),
	} {
		t.Run(name, func(t *testing.T) {
			_, err := verify.Release(raw, bs, ts, now, model)
			refused(t, err, wire.ReasonFirmwareSignature, verify.ErrSignature)
		})
	}
}

func TestRejectExpired(t *testing.T) {
	raw, bs, ts := read(t, "manifest.json"), bundles(t, "manifest.a.bundle.json"), trust(t, 1, "a")
	expires := time.Date(2036, 1, 1, 0, 0, 0, 0, time.UTC)
	if _, err := verify.Release(raw, bs, ts, expires.Add(-time.Second), model); err != nil {
		t.Fatalf("a second before expiry: %v", err)
	}
	for _, at := range []time.Time{expires, expires.Add(365 * 24 * time.Hour)} {
		_, err := verify.Release(raw, bs, ts, at, model)
		refused(t, err, wire.ReasonFirmwareExpired, verify.ErrExpired)
	}
}

func TestRejectOtherModel(t *testing.T) {
	raw, bs, ts := read(t, "manifest.json"), bundles(t, "manifest.a.bundle.json"), trust(t, 1, "a")
	if _, err := verify.Release(raw, bs, ts, now, "sigil-sim-b"); err != nil {
		t.Fatalf("second listed model refused: %v", err)
	}
	for _, m := range []string{"other-board", "SIGIL-SIM", "sigil-si", ""} {
		_, err := verify.Release(raw, bs, ts, now, m)
		refused(t, err, wire.ReasonFirmwareModel, verify.ErrModel)
	}
}

// TestRejectMixAndMatch: a genuine signature over another release's
// manifest does not validate this manifest, and a genuine manifest does not
// validate another image.
func TestRejectMixAndMatch(t *testing.T) {
	ts := trust(t, 1, "a")
	_, err := verify.Release(read(t, "manifest.json"), bundles(t, "other-manifest.a.bundle.json"), ts, now, model)
	refused(t, err, wire.ReasonFirmwareSignature, verify.ErrSignature)

	other, err := verify.Release(read(t, "other-manifest.json"), bundles(t, "other-manifest.a.bundle.json"), ts, now, model)
	if err != nil {
		t.Fatalf("the other release is genuine: %v", err)
	}
	refused(t, verify.Image(bytes.NewReader(read(t, "image.bin")), other.Manifest), wire.ReasonFirmwareDigest, verify.ErrImage)
}

func TestRejectTruncatedDownload(t *testing.T) {
	v, err := verify.Release(read(t, "manifest.json"), bundles(t, "manifest.a.bundle.json"), trust(t, 1, "a"), now, model)
	if err != nil {
		t.Fatal(err)
	}
	img := read(t, "image.bin")
	for _, n := range []int{0, 1, len(img) / 2, len(img) - 1} {
		err := verify.Image(bytes.NewReader(img[:n]), v.Manifest)
		refused(t, err, wire.ReasonFirmwareDigest, verify.ErrImage)
		if !strings.Contains(err.Error(), "shorter") {
			t.Errorf("%d bytes: error does not say the image is short: %v", n, err)
		}
	}
	longer := append(img, 0)
	refused(t, verify.Image(bytes.NewReader(longer), v.Manifest), wire.ReasonFirmwareDigest, verify.ErrImage)

	// The streaming check, as a device tees the download into its slot.
	c := verify.NewImageCheck(v.Manifest)
	c.Write(img[:100])
	refused(t, c.Verify(), wire.ReasonFirmwareDigest, verify.ErrImage)
	c.Write(img[100:])
	if err := c.Verify(); err != nil {
		t.Fatalf("complete image refused by ImageCheck: %v", err)
	}
}

// TestImageReadError: a failing download is not reported as a digest
// mismatch.
func TestImageReadError(t *testing.T) {
	m, err := manifest.Parse(read(t, "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	boom := errors.New("connection reset")
	err = verify.Image(&failingReader{data: read(t, "image.bin")[:10], err: boom}, m)
	if !errors.Is(err, boom) || errors.Is(err, verify.ErrImage) {
		t.Fatalf("Image = %v, want the read error", err)
	}
}

type failingReader struct {
	data []byte
	err  error
}

func (r *failingReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, r.err
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

func TestRollbackFloor(t *testing.T) {
	v, err := verify.Release(read(t, "manifest.json"), bundles(t, "manifest.a.bundle.json"), trust(t, 1, "a"), now, model)
	if err != nil {
		t.Fatal(err)
	}
	for _, floor := range []uint64{0, 2, 3} {
		if err := v.CheckRollback(floor); err != nil {
			t.Errorf("security version 3 refused at floor %d: %v", floor, err)
		}
	}
	refused(t, v.CheckRollback(4), wire.ReasonFirmwareRollback, verify.ErrRollback)
}

// TestRejectDigestMismatch: a bundle whose signature is genuine but whose
// messageDigest names another message is refused (sigstore-go does not
// compare the digest when it has the artifact; this package does).
func TestRejectDigestMismatch(t *testing.T) {
	good, other := mustParse(t, read(t, "manifest.a.bundle.json")), mustParse(t, read(t, "other-manifest.a.bundle.json"))
	good.Digest = other.Digest
	b, err := good.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	_, err = verify.Release(read(t, "manifest.json"), [][]byte{b}, trust(t, 1, "a"), now, model)
	refused(t, err, wire.ReasonFirmwareSignature, verify.ErrSignature)
	if !strings.Contains(err.(*wire.Error).Err.Error(), "digest") {
		t.Errorf("cause does not name the digest: %v", err)
	}
}

// TestBundleV02Accepted: the v0.2 media type carries the same message
// signature.
func TestBundleV02Accepted(t *testing.T) {
	b := bytes.Replace(read(t, "manifest.a.bundle.json"), []byte(verify.MediaTypeV03), []byte(verify.MediaTypeV02), 1)
	if !bytes.Contains(b, []byte(verify.MediaTypeV02)) {
		t.Fatal("no media type replaced")
	}
	if _, err := verify.Release(read(t, "manifest.json"), [][]byte{b}, trust(t, 1, "a"), now, model); err != nil {
		t.Fatal(err)
	}
}

// TestUnsignedGarbage: bytes no trusted key signed are refused for their
// signature before anything interprets them; a nil trust set refuses all.
func TestUnsignedGarbage(t *testing.T) {
	_, err := verify.Release([]byte(`{"type":"nonsense"}`), bundles(t, "manifest.a.bundle.json"), trust(t, 1, "a"), now, model)
	refused(t, err, wire.ReasonFirmwareSignature, verify.ErrSignature)
	_, err = verify.Release(read(t, "manifest.json"), nil, nil, now, model)
	if err == nil {
		t.Fatal("nil trust set accepted")
	}
}

func TestParseBundleRefusals(t *testing.T) {
	good := string(read(t, "manifest.a.bundle.json"))
	if _, err := verify.ParseBundle([]byte(good)); err != nil {
		t.Fatalf("cosign bundle: %v", err)
	}
	for name, b := range map[string]string{
		"certificate":     strings.Replace(good, `"publicKey":`, `"certificate":{"rawBytes":"AAAA"}, "publicKey":`, 1),
		"dsse envelope":   strings.Replace(good, `"messageSignature":`, `"dsseEnvelope":{}, "messageSignature":`, 1),
		"unknown field":   strings.Replace(good, `"mediaType":`, `"extra":1, "mediaType":`, 1),
		"media type v0.1": strings.Replace(good, verify.MediaTypeV03, "application/vnd.dev.sigstore.bundle+json;version=0.1", 1),
		"no public key":   strings.Replace(good, `"publicKey":`, `"tlogEntries":[], "x":`, 1),
		"sha1 digest":     strings.Replace(good, `"SHA2_256"`, `"SHA1"`, 1),
		"short digest":    strings.Replace(good, `"SHA2_256"`, `"SHA2_384"`, 1),
		"not base64":      strings.Replace(good, `"signature":"`, `"signature":"*`, 1),
		"trailing data":   good + "{}",
		"oversized":       good + strings.Repeat(" ", verify.MaxBundleSize),
		"not json":        "cosign",
		"empty object":    "{}",
	} {
		if _, err := verify.ParseBundle([]byte(b)); !errors.Is(err, verify.ErrBundle) {
			t.Errorf("%s: ParseBundle = %v, want ErrBundle", name, err)
		}
	}
	// Transparency-log material is ignored, not refused.
	withLog := strings.Replace(good, `"publicKey":`, `"tlogEntries":[{"logIndex":"1"}], "timestampVerificationData":{}, "publicKey":`, 1)
	if _, err := verify.ParseBundle([]byte(withLog)); err != nil {
		t.Errorf("bundle with log entries: %v", err)
	}
}

func FuzzParseBundle(f *testing.F) {
	for _, n := range []string{"manifest.a.bundle.json", "manifest.p384.bundle.json", "other-manifest.a.bundle.json", "manifest.a.legacy-bundle.json"} {
		f.Add(read(f, n))
	}
	f.Add([]byte(`{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","verificationMaterial":{"publicKey":{}},"messageSignature":{"messageDigest":{"algorithm":"SHA2_256","digest":""},"signature":"AA=="}}`))
	f.Add([]byte(`{"verificationMaterial":{"certificate":{}}}`))
	ts := trust(f, 1, "a")
	raw := read(f, "manifest.json")
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := verify.ParseBundle(data)
		if err != nil {
			if !errors.Is(err, verify.ErrBundle) {
				t.Fatalf("error does not wrap ErrBundle: %v", err)
			}
			return
		}
		if len(b.Signature) == 0 || len(b.Digest) != b.DigestAlgorithm.Size() {
			t.Fatalf("accepted an incomplete bundle: %+v", b)
		}
		// Whatever parses re-encodes and parses to the same signature.
		enc, err := b.Marshal()
		if err != nil {
			t.Fatalf("Marshal of a parsed bundle: %v", err)
		}
		again, err := verify.ParseBundle(enc)
		if err != nil || !bytes.Equal(again.Signature, b.Signature) || !bytes.Equal(again.Digest, b.Digest) || again.KeyHint != b.KeyHint {
			t.Fatalf("re-encoding changed the bundle: %v", err)
		}
		// And never makes an untrusted manifest verify unless it is the
		// genuine signature.
		if _, err := ts.Signers(raw, [][]byte{data}); err == nil && !bytes.Equal(b.Signature, mustParse(t, read(t, "manifest.a.bundle.json")).Signature) {
			t.Fatalf("a fuzzed bundle verified: %q", data)
		}
	})
}

func mustParse(t testing.TB, b []byte) *verify.Bundle {
	t.Helper()
	p, err := verify.ParseBundle(b)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
