package verify_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/sigil-iot/sigil/firmware/sign/signtest"
	"github.com/sigil-iot/sigil/firmware/verify"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// TestRotateStatementEndingInNewline: a statement file often ends in a
// newline (an editor, `sigil firmware trust > FILE`), and cosign sign-blob
// signs the file as it is. Rotate checks the signatures over exactly the
// bytes it is given and reads the set from them with that one newline
// allowed; a signature over other bytes (the statement without its
// newline) does not count, and anything else after the set is refused.
func TestRotateStatementEndingInNewline(t *testing.T) {
	old := signtest.Signers(t, 1)
	cur := signtest.Trust(t, 1, 1, old...)
	fresh := signtest.Signers(t, 1)
	next := signtest.Trust(t, 2, 1, fresh...)
	canon, err := next.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	for _, end := range []string{"\n", "\r\n"} {
		stmt := append(append([]byte(nil), canon...), end...)
		got, err := verify.Rotate(cur, stmt, signAll(t, stmt, old[0], fresh[0]))
		if err != nil {
			t.Fatalf("statement ending in %q, signed as it is: %v", end, err)
		}
		if b, _ := got.Marshal(); string(b) != string(canon) {
			t.Fatalf("rotated to %s, want %s", b, canon)
		}
		// Signed without the newline (what a tool that trims it signs):
		// the signatures are over other bytes.
		_, err = verify.Rotate(cur, stmt, signAll(t, canon, old[0], fresh[0]))
		refused(t, err, wire.ReasonFirmwareSignature, verify.ErrSignature)
	}
	for _, tail := range []string{"\n\n", " ", " \n", "\n ", "\r", "\t\n"} {
		stmt := append(append([]byte(nil), canon...), tail...)
		_, err := verify.Rotate(cur, stmt, signAll(t, stmt, old[0], fresh[0]))
		refused(t, err, wire.ReasonBadRequest, verify.ErrTrustSet)
	}
}

// legacyBundle is what `cosign sign-blob --key K --bundle B` (without
// --new-bundle-format, the default of cosign v2) writes for a key-based
// signature and no transparency-log upload: the signature in base64, and
// no message digest or key hint.
func legacyBundle(t testing.TB, key *ecdsa.PrivateKey, msg []byte) []byte {
	t.Helper()
	d := sha256.Sum256(msg)
	sig, err := ecdsa.SignASN1(nil, key, d[:])
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(map[string]any{"base64Signature": base64.StdEncoding.EncodeToString(sig)})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestLegacyCosignBundle: a bundle in cosign's old format is refused with
// ErrLegacyBundle, and a release or rotation that lacks signatures because
// of it says, in its public message, which format is expected.
func TestLegacyCosignBundle(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ts, err := verify.NewTrustSet(1, 1, key.Public())
	if err != nil {
		t.Fatal(err)
	}
	m := testManifest(t)
	for name, b := range map[string][]byte{
		"signature only":      legacyBundle(t, key, m),
		"with a certificate":  []byte(`{"base64Signature":"MEUCIQ==","cert":"LS0tLS1CRUdJTg=="}`),
		"with a rekor bundle": []byte(`{"base64Signature":"MEUCIQ==","rekorBundle":{"SignedEntryTimestamp":"AA==","Payload":{"body":"","integratedTime":1,"logIndex":1,"logID":"x"}}}`),
	} {
		t.Run(name, func(t *testing.T) {
			_, err := verify.ParseBundle(b)
			if !errors.Is(err, verify.ErrLegacyBundle) || !errors.Is(err, verify.ErrBundle) {
				t.Fatalf("ParseBundle = %v, want ErrLegacyBundle (and ErrBundle)", err)
			}
			_, err = verify.Manifest(m, [][]byte{b}, ts)
			refused(t, err, wire.ReasonFirmwareSignature, verify.ErrLegacyBundle)
			if msg := err.(*wire.Error).Message; !strings.Contains(msg, "--new-bundle-format") || !strings.Contains(msg, verify.MediaTypeV03) {
				t.Errorf("public message %q does not say which format is expected", msg)
			}
			stmt, _ := signtest.Trust(t, 2, 1, signtest.Signers(t, 1)...).Marshal()
			_, err = verify.Rotate(ts, stmt, [][]byte{b})
			refused(t, err, wire.ReasonFirmwareSignature, verify.ErrLegacyBundle)
			if msg := err.(*wire.Error).Message; !strings.Contains(msg, "--new-bundle-format") {
				t.Errorf("public message %q does not say which format is expected", msg)
			}
		})
	}
	// Enough signatures in the expected format win over an old-format
	// bundle beside them, and a refusal for other reasons does not blame
	// the format.
	good := signtest.Signers(t, 1)[0]
	ts2, _ := verify.NewTrustSet(1, 1, good.Public())
	if _, err := verify.Manifest(m, [][]byte{legacyBundle(t, key, m), signAll(t, m, good)[0]}, ts2); err != nil {
		t.Fatalf("a good bundle beside an old-format one: %v", err)
	}
	_, err = verify.Manifest(m, signAll(t, m, signtest.Signers(t, 1)...), ts2)
	refused(t, err, wire.ReasonFirmwareSignature, verify.ErrSignature)
	if errors.Is(err, verify.ErrLegacyBundle) || strings.Contains(err.(*wire.Error).Message, "new-bundle-format") {
		t.Errorf("a refusal without an old-format bundle mentions the format: %v", err)
	}
}

// TestCosignRotationStatementWithNewline: the rotation statement of the
// vectors ends in a newline, as `sigil firmware trust > FILE` writes it,
// and the real cosign signed the file as it is with the current key (a)
// and the new one (b). Rotate accepts it, and the rotated set verifies a
// release that key b signed with cosign.
func TestCosignRotationStatementWithNewline(t *testing.T) {
	stmt := read(t, "rotation.json")
	if !strings.HasSuffix(string(stmt), "}\n") {
		t.Fatalf("rotation.json does not end in a newline: %q", stmt)
	}
	next, err := verify.Rotate(trust(t, 1, "a"), stmt, bundles(t, "rotation.a.bundle.json", "rotation.b.bundle.json"))
	if err != nil {
		t.Fatal(err)
	}
	if next.Sequence() != 2 || len(next.KeyIDs()) != 1 || next.KeyIDs()[0] != keyID(t, "b") {
		t.Fatalf("rotated to sequence %d, keys %v; want 2, test-b", next.Sequence(), next.KeyIDs())
	}
	if _, err := verify.Release(read(t, "manifest.json"), bundles(t, "manifest.b.bundle.json"), next, now, model); err != nil {
		t.Fatalf("release signed by the new key: %v", err)
	}
	// One signature alone is not enough: each set's threshold counts.
	_, err = verify.Rotate(trust(t, 1, "a"), stmt, bundles(t, "rotation.a.bundle.json"))
	refused(t, err, wire.ReasonFirmwareSignature, verify.ErrSignature)
}

// TestCosignLegacyBundleVector: the real cosign's old-format bundle (sign-blob
// --bundle without --new-bundle-format) is refused, and the refusal names
// the expected format.
func TestCosignLegacyBundleVector(t *testing.T) {
	b := read(t, "manifest.a.legacy-bundle.json")
	if _, err := verify.ParseBundle(b); !errors.Is(err, verify.ErrLegacyBundle) {
		t.Fatalf("ParseBundle = %v, want ErrLegacyBundle", err)
	}
	_, err := verify.Release(read(t, "manifest.json"), [][]byte{b}, trust(t, 1, "a"), now, model)
	refused(t, err, wire.ReasonFirmwareSignature, verify.ErrLegacyBundle)
	if msg := err.(*wire.Error).Message; !strings.Contains(msg, "--new-bundle-format") {
		t.Errorf("public message %q does not name the expected format", msg)
	}
}

// FuzzRotateStatement: whatever the statement bytes, Rotate never panics,
// and a statement it accepts is the new set's canonical encoding followed
// by at most one newline.
func FuzzRotateStatement(f *testing.F) {
	k := signtest.Signers(f, 1)
	cur := signtest.Trust(f, 1, 1, k...)
	canon, err := signtest.Trust(f, 2, 1, k...).Marshal()
	if err != nil {
		f.Fatal(err)
	}
	for _, tail := range []string{"", "\n", "\r\n", "\n\n", "\r", " "} {
		f.Add(append(append([]byte(nil), canon...), tail...))
	}
	f.Fuzz(func(t *testing.T, stmt []byte) {
		next, err := verify.Rotate(cur, stmt, signAll(t, stmt, k...))
		if err != nil {
			if _, ok := err.(*wire.Error); !ok {
				t.Fatalf("error is not a *wire.Error: %v", err)
			}
			return
		}
		b, err := next.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if rest, ok := strings.CutPrefix(string(stmt), string(b)); !ok || (rest != "" && rest != "\n" && rest != "\r\n") {
			t.Fatalf("accepted %q for the set %s", stmt, b)
		}
	})
}
