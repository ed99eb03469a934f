package verify_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/firmware/manifest"
	"github.com/sigil-iot/sigil/firmware/sign"
	"github.com/sigil-iot/sigil/firmware/sign/signtest"
	"github.com/sigil-iot/sigil/firmware/verify"
	"github.com/sigil-iot/sigil/pkg/wire"
)

func newSigner(t testing.TB, curve elliptic.Curve) *sign.Signer {
	t.Helper()
	var key crypto.Signer
	var err error
	if curve == nil {
		_, key, err = ed25519.GenerateKey(rand.Reader)
	} else {
		key, err = ecdsa.GenerateKey(curve, rand.Reader)
	}
	if err != nil {
		t.Fatal(err)
	}
	s, err := sign.New(sign.Config{Key: key})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func signAll(t testing.TB, msg []byte, ss ...*sign.Signer) [][]byte {
	t.Helper()
	var out [][]byte
	for _, s := range ss {
		b, err := s.Sign(msg)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

func TestTrustSetEncoding(t *testing.T) {
	k := signtest.Signers(t, 3)
	ts := signtest.Trust(t, 7, 2, k...)
	b, err := ts.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := verify.ParseTrustSet(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.Sequence() != 7 || got.Threshold() != 2 || strings.Join(got.KeyIDs(), ",") != strings.Join(ts.KeyIDs(), ",") {
		t.Fatalf("round trip: seq %d threshold %d keys %v", got.Sequence(), got.Threshold(), got.KeyIDs())
	}
	// The order of keys given does not matter: one set, one encoding.
	rev := signtest.Trust(t, 7, 2, k[2], k[0], k[1])
	if b2, _ := rev.Marshal(); !bytes.Equal(b, b2) {
		t.Fatal("the same set encodes differently")
	}
	for name, variant := range map[string]string{
		"whitespace":      strings.Replace(string(b), `,"threshold"`, `, "threshold"`, 1),
		"unknown field":   strings.Replace(string(b), `"sequence"`, `"x":1,"sequence"`, 1),
		"threshold 0":     strings.Replace(string(b), `"threshold":2`, `"threshold":0`, 1),
		"threshold 4":     strings.Replace(string(b), `"threshold":2`, `"threshold":4`, 1),
		"other type":      strings.Replace(string(b), verify.TrustType, manifest.Type, 1),
		"trailing":        string(b) + " ",
		"no keys":         `{"type":"` + verify.TrustType + `","sequence":1,"threshold":1,"keys":[]}`,
		"key not encoded": `{"type":"` + verify.TrustType + `","sequence":1,"threshold":1,"keys":["AAAA"]}`,
	} {
		if _, err := verify.ParseTrustSet([]byte(variant)); !errors.Is(err, verify.ErrTrustSet) {
			t.Errorf("%s: ParseTrustSet = %v, want ErrTrustSet", name, err)
		}
	}
	if _, err := verify.NewTrustSet(1, 1, k[0].Public(), k[0].Public()); !errors.Is(err, verify.ErrTrustSet) {
		t.Errorf("duplicate key: %v", err)
	}
	if ts, err := verify.NewTrustSet(1, 0, k[0].Public()); err != nil || ts.Threshold() != 1 {
		t.Errorf("threshold 0 must mean 1: %v", err)
	}
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if _, err := verify.NewTrustSet(1, 1, p224.Public()); !errors.Is(err, verify.ErrUnsupportedKey) {
		t.Errorf("P-224 key: %v", err)
	}
}

// TestRotate: a statement moves a device to a new set only when the
// current threshold of current keys and the new threshold of new keys
// signed it, with a higher sequence; afterwards only the new keys count.
func TestRotate(t *testing.T) {
	old := signtest.Signers(t, 3)
	cur := signtest.Trust(t, 1, 2, old...)
	fresh := signtest.Signers(t, 2)
	next := signtest.Trust(t, 2, 2, old[0], fresh[0], fresh[1])
	stmt, err := next.Marshal()
	if err != nil {
		t.Fatal(err)
	}

	got, err := verify.Rotate(cur, stmt, signAll(t, stmt, old[1], old[2], fresh[0], fresh[1]))
	if err != nil {
		t.Fatal(err)
	}
	if got.Sequence() != 2 || strings.Join(got.KeyIDs(), ",") != strings.Join(next.KeyIDs(), ",") {
		t.Fatalf("rotated to %v", got.KeyIDs())
	}
	// old[0] stays in both sets, so its signature counts for each.
	if _, err := verify.Rotate(cur, stmt, signAll(t, stmt, old[0], old[1], fresh[0])); err != nil {
		t.Fatalf("a key in both sets counts for both: %v", err)
	}

	for name, bs := range map[string][][]byte{
		"one current key":            signAll(t, stmt, old[1], fresh[0], fresh[1]),
		"only new keys":              signAll(t, stmt, fresh[0], fresh[1]),
		"only current keys":          signAll(t, stmt, old[1], old[2]),
		"current key twice":          signAll(t, stmt, old[1], old[1], fresh[0], fresh[1]),
		"signatures over other text": signAll(t, append(stmt, ' '), old[1], old[2], fresh[0], fresh[1]),
	} {
		t.Run(name, func(t *testing.T) {
			_, err := verify.Rotate(cur, stmt, bs)
			refused(t, err, wire.ReasonFirmwareSignature, verify.ErrSignature)
		})
	}

	// Replaying an older or equal statement fails even when well signed.
	same := signtest.Trust(t, 1, 1, old[0])
	sameStmt, _ := same.Marshal()
	_, err = verify.Rotate(cur, sameStmt, signAll(t, sameStmt, old...))
	refused(t, err, wire.ReasonReplay, verify.ErrStale)

	_, err = verify.Rotate(cur, []byte(`{"type":"nonsense"}`), nil)
	refused(t, err, wire.ReasonBadRequest, verify.ErrTrustSet)

	// After the rotation, a release signed by removed keys is refused.
	m := testManifest(t)
	_, err = verify.Release(m, signAll(t, m, old[1], old[2]), got, now, model)
	refused(t, err, wire.ReasonFirmwareSignature, verify.ErrSignature)
	if _, err := verify.Release(m, signAll(t, m, old[0], fresh[1]), got, now, model); err != nil {
		t.Fatalf("release signed by the new set: %v", err)
	}
}

func testManifest(t testing.TB) []byte {
	t.Helper()
	m := &manifest.Manifest{
		Name: "sim-os", Version: "1.0.0", SecurityVersion: 1, Models: []string{model},
		Size: 4, SHA256: sha256.Sum256([]byte("abcd")), Expires: now.Add(24 * time.Hour),
	}
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestManifestAndStatementDoNotMix: a signature over a trust statement is
// not a signature over a manifest, and each parser refuses the other's
// bytes, so one signed message has one meaning.
func TestManifestAndStatementDoNotMix(t *testing.T) {
	k := signtest.Signers(t, 1)
	ts := signtest.Trust(t, 1, 1, k...)
	stmt, _ := signtest.Trust(t, 2, 1, k...).Marshal()
	_, err := verify.Release(stmt, signAll(t, stmt, k...), ts, now, model)
	refused(t, err, wire.ReasonBadRequest, manifest.ErrInvalid)
	m := testManifest(t)
	_, err = verify.Rotate(ts, m, signAll(t, m, k...))
	refused(t, err, wire.ReasonBadRequest, verify.ErrTrustSet)
}

func TestEd25519AndP384Releases(t *testing.T) {
	m := testManifest(t)
	for name, s := range map[string]*sign.Signer{"ed25519": newSigner(t, nil), "p384": newSigner(t, elliptic.P384())} {
		ts := signtest.Trust(t, 1, 1, s)
		if _, err := verify.Release(m, signAll(t, m, s), ts, now, model); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		other := newSigner(t, elliptic.P256())
		_, err := verify.Release(m, signAll(t, m, other), ts, now, model)
		refused(t, err, wire.ReasonFirmwareSignature, verify.ErrSignature)
	}
}

func TestTooManyBundles(t *testing.T) {
	k := signtest.Signers(t, 1)
	m := testManifest(t)
	bs := signAll(t, m, k...)
	for len(bs) <= verify.MaxBundles {
		bs = append(bs, bs[0])
	}
	_, err := verify.Release(m, bs, signtest.Trust(t, 1, 1, k...), now, model)
	refused(t, err, wire.ReasonFirmwareSignature, verify.ErrSignature)
}

// TestDeviceSafeImports fails when the device-side packages start linking
// what a small device must not carry.
func TestDeviceSafeImports(t *testing.T) {
	for _, pkg := range []string{"github.com/sigil-iot/sigil/firmware/verify", "github.com/sigil-iot/sigil/firmware/manifest",
		"github.com/sigil-iot/sigil/firmware/blockindex"} {
		out, err := exec.Command("go", "list", "-deps", pkg).Output()
		if err != nil {
			t.Fatalf("go list: %v", err)
		}
		deps := strings.Fields(string(out))
		if len(deps) < 10 {
			t.Fatalf("go list returned too little to be real: %v", deps)
		}
		for _, dep := range deps {
			for _, bad := range []string{"net/http", "google.golang.org/protobuf", "github.com/sigstore", "github.com/sigil-iot/sigil/fleet",
				"github.com/sigil-iot/sigil/device", "github.com/sigil-iot/sigil/sim", "github.com/sigil-iot/sigil/firmware/sign", "golang.org/x/crypto"} {
				if dep == bad || strings.HasPrefix(dep, bad+"/") {
					t.Errorf("%s links %s", pkg, dep)
				}
			}
		}
	}
	out, _ := exec.Command("go", "list", "-deps", "github.com/sigil-iot/sigil/firmware/manifest", "github.com/sigil-iot/sigil/firmware/blockindex").Output()
	for _, dep := range strings.Fields(string(out)) {
		// firmware/blockindex (the block index a manifest binds) is
		// standard library only too: checked by the same rule.
		if strings.Contains(dep, ".") && !strings.HasPrefix(dep, "github.com/sigil-iot/sigil/firmware/manifest") &&
			dep != "github.com/sigil-iot/sigil/firmware/blockindex" && !strings.HasPrefix(dep, "vendor/") && !strings.HasPrefix(dep, "crypto/internal/entropy/") {
			t.Errorf("firmware/manifest links a non-standard package: %s", dep)
		}
	}
}

func FuzzParseTrustSet(f *testing.F) {
	k := signtest.Signers(f, 2)
	b, err := signtest.Trust(f, 3, 2, k...).Marshal()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte(`{"type":"sigil.firmware.trust/v1","sequence":1,"threshold":1,"keys":["AAAA"]}`))
	f.Add([]byte(`{"type":"sigil.firmware.trust/v1","sequence":18446744073709551615,"threshold":-1,"keys":null}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		ts, err := verify.ParseTrustSet(data)
		if err != nil {
			if !errors.Is(err, verify.ErrTrustSet) && !errors.Is(err, verify.ErrUnsupportedKey) {
				t.Fatalf("error wraps neither ErrTrustSet nor ErrUnsupportedKey: %v", err)
			}
			return
		}
		if ts.Threshold() < 1 || ts.Threshold() > len(ts.KeyIDs()) || len(ts.KeyIDs()) > verify.MaxKeys {
			t.Fatalf("accepted an impossible set: threshold %d of %d keys", ts.Threshold(), len(ts.KeyIDs()))
		}
		again, err := ts.Marshal()
		if err != nil || !bytes.Equal(again, data) {
			t.Fatalf("accepted non-canonical input (%v):\n%q\n%q", err, data, again)
		}
	})
}
