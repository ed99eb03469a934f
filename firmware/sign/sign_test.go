package sign_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/sigil-iot/sigil/firmware/sign"
	"github.com/sigil-iot/sigil/firmware/sign/signtest"
	"github.com/sigil-iot/sigil/firmware/verify"
)

// Vectors made by the real cosign CLI (scripts/cosign-vectors.sh).
const vectors = "../verify/testdata/cosign"

func genKey(t *testing.T, alg string) (crypto.Signer, string, string) {
	t.Helper()
	dir := t.TempDir()
	priv, pubPath := filepath.Join(dir, "release.key"), filepath.Join(dir, "release.pub")
	id, err := sign.GenerateKey(alg, priv, pubPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	key, err := sign.LoadKeyFile(priv, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := verify.KeyID(key.Public()); got != id {
		t.Fatalf("GenerateKey returned ID %s, the key's is %s", id, got)
	}
	return key, priv, pubPath
}

func TestSignAndVerifyEachAlgorithm(t *testing.T) {
	msg := []byte(`{"type":"sigil.firmware.manifest/v1"}`)
	for _, alg := range []string{sign.ECDSAP256, sign.ECDSAP384, sign.Ed25519} {
		t.Run(alg, func(t *testing.T) {
			key, _, pubPath := genKey(t, alg)
			s, err := sign.New(sign.Config{Key: key})
			if err != nil {
				t.Fatal(err)
			}
			b, err := s.Sign(msg)
			if err != nil {
				t.Fatal(err)
			}
			pemPub, err := os.ReadFile(pubPath)
			if err != nil {
				t.Fatal(err)
			}
			pub, err := verify.ParsePublicKey(pemPub)
			if err != nil {
				t.Fatal(err)
			}
			ts, err := verify.NewTrustSet(1, 1, pub)
			if err != nil {
				t.Fatal(err)
			}
			ids, err := ts.Signers(msg, [][]byte{b})
			if err != nil || len(ids) != 1 || ids[0] != s.KeyID() {
				t.Fatalf("Signers = %v, %v", ids, err)
			}
			if _, err := ts.Signers(append(msg, ' '), [][]byte{b}); !errors.Is(err, verify.ErrSignature) {
				t.Fatalf("signature accepted for another message: %v", err)
			}
		})
	}
}

// TestBundleShape: what Sign writes has the fields cosign writes, with the
// key ID as hint and the digest of the message.
func TestBundleShape(t *testing.T) {
	key, _, _ := genKey(t, sign.ECDSAP256)
	s, err := sign.New(sign.Config{Key: key})
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("manifest bytes")
	b, err := s.Sign(msg)
	if err != nil {
		t.Fatal(err)
	}
	var j struct {
		MediaType            string
		VerificationMaterial struct{ PublicKey struct{ Hint string } }
		MessageSignature     struct {
			MessageDigest struct {
				Algorithm string
				Digest    []byte
			}
			Signature []byte
		}
	}
	if err := json.Unmarshal(b, &j); err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256(msg)
	if j.MediaType != "application/vnd.dev.sigstore.bundle.v0.3+json" || j.VerificationMaterial.PublicKey.Hint != s.KeyID() ||
		j.MessageSignature.MessageDigest.Algorithm != "SHA2_256" || !bytes.Equal(j.MessageSignature.MessageDigest.Digest, d[:]) ||
		!ecdsa.VerifyASN1(key.Public().(*ecdsa.PublicKey), d[:], j.MessageSignature.Signature) {
		t.Fatalf("bundle is not shaped like cosign's: %s", b)
	}
}

func TestGenerateKeyFiles(t *testing.T) {
	dir := t.TempDir()
	priv, pub := filepath.Join(dir, "k"), filepath.Join(dir, "k.pub")
	if _, err := sign.GenerateKey("", priv, pub, nil); err != nil {
		t.Fatal(err)
	}
	for path, mode := range map[string]os.FileMode{priv: 0o600, pub: 0o644} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s has mode %04o, want %04o", filepath.Base(path), fi.Mode().Perm(), mode)
		}
	}
	before, _ := os.ReadFile(priv)
	if _, err := sign.GenerateKey("", priv, filepath.Join(dir, "other.pub"), nil); err == nil {
		t.Fatal("GenerateKey overwrote an existing key")
	}
	if after, _ := os.ReadFile(priv); !bytes.Equal(before, after) {
		t.Fatal("existing key file changed")
	}
	if _, err := sign.GenerateKey("rsa", filepath.Join(dir, "r"), filepath.Join(dir, "r.pub"), nil); err == nil {
		t.Fatal("unsupported algorithm accepted")
	}
	if err := os.Chmod(priv, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := sign.LoadKeyFile(priv, nil); err == nil {
		t.Fatal("world-readable unencrypted key loaded")
	}
}

// TestCosignEncryptedKey: keys made by cosign generate-key-pair and
// import-key-pair (empty password) load, match their cosign.pub, and sign
// bundles that verify like cosign's own.
func TestCosignEncryptedKey(t *testing.T) {
	for _, k := range []string{"a", "p384"} {
		t.Run(k, func(t *testing.T) {
			t.Parallel() // scrypt with cosign's cost is slow under -race
			key, err := sign.LoadKeyFile(filepath.Join(vectors, "test-"+k+".key"), []byte(""))
			if err != nil {
				t.Fatal(err)
			}
			pemPub, err := os.ReadFile(filepath.Join(vectors, "test-"+k+".pub"))
			if err != nil {
				t.Fatal(err)
			}
			pub, err := verify.ParsePublicKey(pemPub)
			if err != nil {
				t.Fatal(err)
			}
			if !pub.(*ecdsa.PublicKey).Equal(key.Public()) {
				t.Fatal("decrypted key does not match cosign's public key")
			}
			s, err := sign.New(sign.Config{Key: key})
			if err != nil {
				t.Fatal(err)
			}
			msg, err := os.ReadFile(filepath.Join(vectors, "manifest.json"))
			if err != nil {
				t.Fatal(err)
			}
			ours, err := s.Sign(msg)
			if err != nil {
				t.Fatal(err)
			}
			theirs, err := os.ReadFile(filepath.Join(vectors, "manifest."+k+".bundle.json"))
			if err != nil {
				t.Fatal(err)
			}
			a, b := mustParse(t, ours), mustParse(t, theirs)
			if a.KeyHint != b.KeyHint || a.DigestAlgorithm != b.DigestAlgorithm || !bytes.Equal(a.Digest, b.Digest) {
				t.Fatalf("our bundle differs from cosign's in hint or digest:\n%s\n%s", ours, theirs)
			}
		})
	}
	t.Run("wrong password", func(t *testing.T) {
		t.Parallel()
		b, err := os.ReadFile(filepath.Join(vectors, "test-a.key"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sign.ParsePrivateKey(b, []byte("wrong")); !errors.Is(err, sign.ErrPassword) {
			t.Fatalf("wrong password: %v", err)
		}
	})
}

func mustParse(t *testing.T, b []byte) *verify.Bundle {
	t.Helper()
	p, err := verify.ParseBundle(b)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// badSigner is a real key whose signatures come out corrupted, as from a
// faulty HSM or a wrong key handle.
type badSigner struct{ crypto.Signer }

func (b badSigner) Sign(r io.Reader, d []byte, o crypto.SignerOpts) ([]byte, error) {
	sig, err := b.Signer.Sign(r, d, o)
	if err == nil {
		sig[len(sig)-1] ^= 1
	}
	return sig, err
}

func TestSignCatchesFaultySigner(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), nil)
	if err != nil {
		t.Fatal(err)
	}
	s, err := sign.New(sign.Config{Key: badSigner{key}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Sign([]byte("m")); err == nil {
		t.Fatal("a signature that does not verify was returned")
	}
}

func TestUnsupportedKey(t *testing.T) {
	k, err := ecdsa.GenerateKey(elliptic.P224(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sign.New(sign.Config{Key: k}); !errors.Is(err, verify.ErrUnsupportedKey) {
		t.Fatalf("P-224 key: %v", err)
	}
	if _, err := sign.New(sign.Config{}); err == nil {
		t.Fatal("no key accepted")
	}
}

// TestCosignVerifiesOurBundles: the real cosign (`cosign verify-blob`)
// accepts bundles made by this package for each algorithm, and refuses them
// for another blob. cosign comes from `make test-deps` (scripts/cosign.sh);
// without it the test skips, and fails under CI=true.
func TestCosignVerifiesOurBundles(t *testing.T) {
	cosign := signtest.Cosign(t)
	dir := t.TempDir()
	root := signtest.TrustedRoot(t, dir)
	msg := filepath.Join(dir, "manifest.json")
	if err := os.WriteFile(msg, []byte(`{"type":"sigil.firmware.manifest/v1","name":"x"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ alg, digest string }{{sign.ECDSAP256, "sha256"}, {sign.ECDSAP384, "sha384"}, {sign.Ed25519, "sha512"}} {
		t.Run(c.alg, func(t *testing.T) {
			key, _, pubPath := genKey(t, c.alg)
			s, err := sign.New(sign.Config{Key: key})
			if err != nil {
				t.Fatal(err)
			}
			data, _ := os.ReadFile(msg)
			b, err := s.Sign(data)
			if err != nil {
				t.Fatal(err)
			}
			bundle := filepath.Join(t.TempDir(), "bundle.json")
			if err := os.WriteFile(bundle, b, 0o644); err != nil {
				t.Fatal(err)
			}
			run := func(blob string) error {
				out, err := exec.Command(cosign, "verify-blob", "--key", pubPath, "--bundle", bundle, "--new-bundle-format",
					"--insecure-ignore-tlog=true", "--trusted-root", root, "--signature-digest-algorithm", c.digest, blob).CombinedOutput()
				if err != nil {
					return errors.New(string(out))
				}
				return nil
			}
			if err := run(msg); err != nil {
				t.Fatalf("cosign verify-blob refused our bundle: %v", err)
			}
			other := filepath.Join(t.TempDir(), "other.json")
			os.WriteFile(other, append(data, ' '), 0o644)
			if err := run(other); err == nil {
				t.Fatal("cosign accepted our bundle for another blob: the cross-check proves nothing")
			}
		})
	}
}
