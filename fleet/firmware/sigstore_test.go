package firmware_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sigstore/sigstore-go/pkg/bundle"
	"github.com/sigstore/sigstore-go/pkg/root"
	sgverify "github.com/sigstore/sigstore-go/pkg/verify"
	"github.com/sigstore/sigstore/pkg/signature"

	"github.com/sigil-iot/sigil/firmware/sign"
	"github.com/sigil-iot/sigil/firmware/verify"
)

// sigstoreVerify checks a bundle over artifact with sigstore-go v1.3.0,
// offline, trusting one public key under its key ID (the bundle's hint).
// It is the independent implementation: the device's verifier
// (firmware/verify) shares no code with it.
func sigstoreVerify(pub crypto.PublicKey, bundleJSON, artifact []byte) error {
	id, err := verify.KeyID(pub)
	if err != nil {
		return err
	}
	v, err := signature.LoadDefaultVerifier(pub)
	if err != nil {
		return err
	}
	trusted := root.NewTrustedPublicKeyMaterial(func(hint string) (root.TimeConstrainedVerifier, error) {
		if hint != id {
			return nil, fmt.Errorf("unknown key %q", hint)
		}
		return root.NewExpiringKey(v, time.Time{}, time.Time{}), nil
	})
	var b bundle.Bundle
	if err := b.UnmarshalJSON(bundleJSON); err != nil {
		return err
	}
	sv, err := sgverify.NewVerifier(trusted, sgverify.WithNoObserverTimestamps())
	if err != nil {
		return err
	}
	_, err = sv.Verify(&b, sgverify.NewPolicy(sgverify.WithArtifact(bytes.NewReader(artifact)), sgverify.WithKey()))
	return err
}

// TestSigstoreGoAcceptsOurBundles: bundles from firmware/sign verify with
// sigstore-go for every key type, and sigstore-go refuses them for another
// message (so the check has teeth).
func TestSigstoreGoAcceptsOurBundles(t *testing.T) {
	msg := makeRelease(t, "1.0.0", t0.Add(time.Hour), image(1000, "sg")).manifest
	for _, c := range []struct {
		name string
		key  func() (crypto.Signer, error)
	}{
		{"ecdsa-p256", func() (crypto.Signer, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) }},
		{"ecdsa-p384", func() (crypto.Signer, error) { return ecdsa.GenerateKey(elliptic.P384(), rand.Reader) }},
		{"ed25519", func() (crypto.Signer, error) { _, k, err := ed25519.GenerateKey(rand.Reader); return k, err }},
	} {
		t.Run(c.name, func(t *testing.T) {
			key, err := c.key()
			if err != nil {
				t.Fatal(err)
			}
			s, err := sign.New(sign.Config{Key: key})
			if err != nil {
				t.Fatal(err)
			}
			b, err := s.Sign(msg)
			if err != nil {
				t.Fatal(err)
			}
			if err := sigstoreVerify(key.Public(), b, msg); err != nil {
				t.Fatalf("sigstore-go refused our bundle: %v\n%s", err, b)
			}
			if err := sigstoreVerify(key.Public(), b, append(msg, ' ')); err == nil {
				t.Fatal("sigstore-go accepted the bundle for another message")
			}
			other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			if err := sigstoreVerify(other.Public(), b, msg); err == nil {
				t.Fatal("sigstore-go accepted the bundle under another key")
			}
		})
	}
}

// TestSigstoreGoAcceptsCosignVectors: the committed vectors that
// firmware/verify accepts are genuine sigstore bundles to sigstore-go too.
func TestSigstoreGoAcceptsCosignVectors(t *testing.T) {
	dir := "../../firmware/verify/testdata/cosign"
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	msg := read("manifest.json")
	for _, k := range []string{"a", "b", "c", "p384"} {
		pub, err := verify.ParsePublicKey(read("test-" + k + ".pub"))
		if err != nil {
			t.Fatal(err)
		}
		if err := sigstoreVerify(pub, read("manifest."+k+".bundle.json"), msg); err != nil {
			t.Errorf("%s: %v", k, err)
		}
	}
}
