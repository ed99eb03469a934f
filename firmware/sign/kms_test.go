package sign_test

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/sigil-iot/sigil/firmware/sign"
	"github.com/sigil-iot/sigil/firmware/sign/signtest"
	"github.com/sigil-iot/sigil/firmware/verify"
)

// TestKMS signs through a key service: the test KMS plugin (a
// sigstore-kms-* program speaking sigstore's plugin protocol, holding its key
// in a file it made) creates a key of each algorithm; OpenKMS signs a
// manifest through it; the bundle verifies with the public key in
// firmware/verify and in the real cosign, the plugin logged the signature,
// and cosign's own sign-blob through the same plugin makes a bundle that
// firmware/verify accepts.
func TestKMS(t *testing.T) {
	cosign := signtest.Cosign(t)
	scheme := signtest.KMSPlugin(t, "sigiltest")
	ctx := context.Background()
	root := signtest.TrustedRoot(t, t.TempDir())
	for _, c := range []struct{ alg, digest string }{{sign.ECDSAP256, "sha256"}, {sign.ECDSAP384, "sha384"}, {sign.Ed25519, "sha512"}} {
		t.Run(c.alg, func(t *testing.T) {
			dir := t.TempDir()
			keyFile := filepath.Join(dir, "release.key")
			uri := scheme + "://" + keyFile
			pub, err := sign.CreateKMSKey(ctx, uri, c.alg)
			if err != nil {
				t.Fatal(err)
			}
			key, err := sign.OpenKMS(ctx, uri)
			if err != nil {
				t.Fatal(err)
			}
			wantID, _ := verify.KeyID(pub)
			if id, _ := verify.KeyID(key.Public()); id != wantID {
				t.Fatalf("OpenKMS public key %s, the service created %s", id, wantID)
			}
			s, err := sign.New(sign.Config{Key: key})
			if err != nil {
				t.Fatal(err)
			}
			msg := []byte(`{"type":"sigil.firmware.manifest/v1","name":"kms"}`)
			bundle, err := s.Sign(msg)
			if err != nil {
				t.Fatal(err)
			}
			if n := signtest.KMSSignatures(t, keyFile); n != 1 {
				t.Fatalf("the key service made %d signatures, want 1", n)
			}
			ts, err := verify.NewTrustSet(0, 1, pub)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := ts.Signers(msg, [][]byte{bundle}); err != nil {
				t.Fatalf("firmware/verify refused the KMS bundle: %v", err)
			}

			// The real cosign verifies it with the public key.
			pubFile, msgFile, bundleFile := filepath.Join(dir, "release.pub"), filepath.Join(dir, "manifest.json"), filepath.Join(dir, "manifest.bundle")
			der, err := x509.MarshalPKIXPublicKey(pub)
			if err != nil {
				t.Fatal(err)
			}
			for f, b := range map[string][]byte{pubFile: pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), msgFile: msg, bundleFile: bundle} {
				if err := os.WriteFile(f, b, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if out, err := exec.Command(cosign, "verify-blob", "--key", pubFile, "--bundle", bundleFile, "--new-bundle-format",
				"--insecure-ignore-tlog=true", "--trusted-root", root, "--signature-digest-algorithm", c.digest, msgFile).CombinedOutput(); err != nil {
				t.Fatalf("cosign verify-blob refused the KMS bundle: %v\n%s", err, out)
			}

			// cosign signs the same manifest through the same key service:
			// any signer can sign a manifest, and ours verifies the result.
			if c.alg != sign.ECDSAP256 {
				return // cosign's sign-blob through a KMS signs SHA-256 digests only
			}
			cosignBundle := filepath.Join(dir, "cosign.bundle")
			signtest.CosignSignBlob(t, cosign, uri, msgFile, cosignBundle)
			b, err := os.ReadFile(cosignBundle)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := ts.Signers(msg, [][]byte{b}); err != nil {
				t.Fatalf("firmware/verify refused cosign's bundle made through the key service: %v", err)
			}
			if n := signtest.KMSSignatures(t, keyFile); n != 2 {
				t.Fatalf("the key service made %d signatures, want 2", n)
			}
		})
	}
}

// TestKMSErrors: a scheme without a plugin is ErrNoKMS; a plugin that
// fails (no such key) is another error; a path is not a key URI.
func TestKMSErrors(t *testing.T) {
	scheme := signtest.KMSPlugin(t, "sigiltest")
	ctx := context.Background()
	if _, err := sign.OpenKMS(ctx, "sigilnosuchkms://key"); !errors.Is(err, sign.ErrNoKMS) {
		t.Errorf("OpenKMS with no plugin: %v, want ErrNoKMS", err)
	}
	_, err := sign.OpenKMS(ctx, scheme+"://"+filepath.Join(t.TempDir(), "missing.key"))
	if err == nil || errors.Is(err, sign.ErrNoKMS) {
		t.Errorf("OpenKMS of a missing key: %v, want the plugin's error", err)
	}
	if _, err := sign.OpenKMS(ctx, "release.key"); err == nil {
		t.Error("OpenKMS accepted a file name")
	}
	for ref, want := range map[string]bool{
		"awskms://alias/x": true, "hashivault://transit-key": true, "sigiltest:///tmp/k": true,
		"release.key": false, "./dir://x": false, "://x": false, "a://": false, "/abs/path.key": false,
	} {
		if got := sign.IsKMS(ref); got != want {
			t.Errorf("IsKMS(%q) = %v, want %v", ref, got, want)
		}
	}
}
