package verifier

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/pkg/identity"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// vendorTrust trusts the vendor test CA's root only; intermediates come
// from the device or from the cache.
func vendorTrust() *EKTrust {
	roots := x509.NewCertPool()
	roots.AddCert(fx.vendor.root)
	return &EKTrust{Roots: roots}
}

func TestVerifyEKWithoutCertificate(t *testing.T) {
	for _, pub := range [][]byte{fx.rsaEK, fx.eccEK} {
		key := ekKey(t, pub)
		fp, _ := identity.Fingerprint(key)
		id, _ := identity.DeviceID(key)
		trust := &EKTrust{AllowList: map[string]bool{fp: true}}
		ek, err := trust.VerifyEK(pub, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if ek.Fingerprint != fp || ek.DeviceID != id || !equalKeys(ek.Key, key) {
			t.Fatalf("EK %s/%s, want %s/%s", ek.Fingerprint, ek.DeviceID, fp, id)
		}
		if ek.Cert != nil || ek.ChainVerified || ek.ChainErr != nil || !ek.AllowListed {
			t.Fatalf("EK without certificate: %+v", ek)
		}
		if ek, _ := (&EKTrust{}).VerifyEK(pub, nil, nil); ek.AllowListed {
			t.Fatal("allow-listed without an allow-list")
		}
	}
}

func TestVerifyEKChain(t *testing.T) {
	rsaCert := fx.vendor.issueEK(t, ekKey(t, fx.rsaEK), time.Now().Add(24*time.Hour), nil)
	eccCert := fx.vendor.issueEK(t, ekKey(t, fx.eccEK), time.Now().Add(24*time.Hour), nil)
	inter := [][]byte{fx.vendor.inter.Raw}

	t.Run("intermediate presented", func(t *testing.T) {
		ek, err := vendorTrust().VerifyEK(fx.rsaEK, rsaCert, inter)
		if err != nil {
			t.Fatal(err)
		}
		if !ek.ChainVerified || ek.ChainErr != nil || len(ek.Chain) != 3 || !ek.Chain[2].Equal(fx.vendor.root) {
			t.Fatalf("chain verified %v (%v), chain of %d", ek.ChainVerified, ek.ChainErr, len(ek.Chain))
		}
	})
	t.Run("intermediate known", func(t *testing.T) {
		trust := vendorTrust()
		trust.Intermediates = x509.NewCertPool()
		trust.Intermediates.AddCert(fx.vendor.inter)
		ek, err := trust.VerifyEK(fx.eccEK, eccCert, nil)
		if err != nil || !ek.ChainVerified {
			t.Fatalf("%v %v", err, ek.ChainErr)
		}
	})
	t.Run("intermediate unknown", func(t *testing.T) {
		ek, err := vendorTrust().VerifyEK(fx.rsaEK, rsaCert, nil)
		if err != nil {
			t.Fatal(err)
		}
		if ek.ChainVerified || ek.ChainErr == nil || ek.Cert == nil {
			t.Fatalf("chain without its intermediate verified: %+v", ek)
		}
		t.Log(ek.ChainErr)
	})
	t.Run("intermediate cached", func(t *testing.T) {
		trust := vendorTrust()
		if ek, err := trust.VerifyEK(fx.rsaEK, rsaCert, inter); err != nil || !ek.ChainVerified {
			t.Fatalf("%v %v", err, ek.ChainErr)
		}
		// Another EK of the same vendor, no intermediate presented: only
		// the cache can supply it.
		ek, err := trust.VerifyEK(fx.eccEK, eccCert, nil)
		if err != nil || !ek.ChainVerified {
			t.Fatalf("cached intermediate not used: %v %v", err, ek.ChainErr)
		}
		if len(ek.Chain) != 3 || !ek.Chain[1].Equal(fx.vendor.inter) || !ek.Chain[2].Equal(fx.vendor.root) {
			t.Fatalf("chain through the cache has %d certificates", len(ek.Chain))
		}
		// A certificate of another vendor does not go through the cache.
		rogue := fx.rogue.issueEK(t, ekKey(t, fx.eccEK), time.Now().Add(time.Hour), nil)
		if ek, _ := trust.VerifyEK(fx.eccEK, rogue, nil); ek.ChainVerified {
			t.Fatal("rogue certificate verified through the cache")
		}
		// A certificate naming the vendor intermediate as issuer, key
		// identifier included, but signed by another key.
		forgedIssuer := *fx.vendor.inter
		forgedIssuer.PublicKey = fx.rogue.interKey.Public()
		forger := &testCA{root: fx.rogue.root, inter: &forgedIssuer, interKey: fx.rogue.interKey}
		forged := forger.issueEK(t, ekKey(t, fx.eccEK), time.Now().Add(time.Hour), nil)
		fc, _ := x509.ParseCertificate(forged)
		if !bytes.Equal(fc.RawIssuer, fx.vendor.inter.RawSubject) || !bytes.Equal(fc.AuthorityKeyId, fx.vendor.inter.SubjectKeyId) {
			t.Fatal("forged certificate does not claim the vendor intermediate")
		}
		if ek, _ := trust.VerifyEK(fx.eccEK, forged, nil); ek.ChainVerified || ek.ChainErr == nil {
			t.Fatal("forged certificate verified through the cache")
		}
		// Past the intermediate's expiry, the cached entry is not used.
		trust.Now = func() time.Time { return fx.vendor.inter.NotAfter.Add(time.Hour) }
		if ek, _ := trust.VerifyEK(fx.eccEK, eccCert, nil); ek.ChainVerified {
			t.Fatal("expired chain verified")
		}
	})
	t.Run("untrusted CA", func(t *testing.T) {
		cert := fx.rogue.issueEK(t, ekKey(t, fx.rsaEK), time.Now().Add(time.Hour), nil)
		ek, err := vendorTrust().VerifyEK(fx.rsaEK, cert, [][]byte{fx.rogue.inter.Raw, fx.rogue.root.Raw})
		if err != nil {
			t.Fatal(err)
		}
		if ek.ChainVerified || ek.ChainErr == nil {
			t.Fatal("certificate of an untrusted CA verified")
		}
		t.Log(ek.ChainErr)
	})
	t.Run("expired certificate", func(t *testing.T) {
		cert := fx.vendor.issueEK(t, ekKey(t, fx.rsaEK), time.Now().Add(-time.Minute), nil)
		if ek, _ := vendorTrust().VerifyEK(fx.rsaEK, cert, inter); ek.ChainVerified {
			t.Fatal("expired EK certificate verified")
		}
	})
	t.Run("critical SAN with other names", func(t *testing.T) {
		otherName, _ := asn1.Marshal([]asn1.RawValue{{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: []byte{0x06, 0x01, 0x2a, 0xa0, 0x02, 0x05, 0x00}}})
		cert := fx.vendor.issueEK(t, ekKey(t, fx.rsaEK), time.Now().Add(time.Hour), otherName)
		ek, err := vendorTrust().VerifyEK(fx.rsaEK, cert, inter)
		if err != nil {
			t.Fatal(err)
		}
		if ek.ChainVerified || ek.ChainErr == nil || !strings.Contains(ek.ChainErr.Error(), "directoryName") {
			t.Fatalf("SAN with an otherName accepted: %v", ek.ChainErr)
		}
	})
	t.Run("no roots", func(t *testing.T) {
		ek, err := (&EKTrust{}).VerifyEK(fx.rsaEK, rsaCert, inter)
		if err != nil || ek.ChainVerified || ek.ChainErr == nil {
			t.Fatalf("without roots: %v %+v", err, ek)
		}
	})
	t.Run("certificate does not parse", func(t *testing.T) {
		ek, err := vendorTrust().VerifyEK(fx.rsaEK, []byte("junk"), nil)
		if err != nil || ek.Cert != nil || ek.ChainVerified || ek.ChainErr == nil {
			t.Fatalf("unparseable certificate: %v %+v", err, ek)
		}
	})
	t.Run("certificate for another key", func(t *testing.T) {
		ek, err := vendorTrust().VerifyEK(fx.rsaEK, eccCert, inter)
		if ek != nil {
			t.Fatal("mismatching certificate returned an EK")
		}
		wantRefusal(t, err, wire.ReasonEKMismatch)
		otherRSA, _ := rsa.GenerateKey(rand.Reader, 2048)
		_, err = vendorTrust().VerifyEK(fx.rsaEK, fx.vendor.issueEK(t, &otherRSA.PublicKey, time.Now().Add(time.Hour), nil), inter)
		wantRefusal(t, err, wire.ReasonEKMismatch)
	})
}

func TestVerifyEKRefusesOtherKeys(t *testing.T) {
	for name, pub := range map[string][]byte{
		"attestation key": fx.ak.pubBytes,
		"transport key":   fx.tk.pubBytes,
		"trailing byte":   append(append([]byte{}, fx.rsaEK...), 0),
		"garbage":         []byte{0, 1, 0, 11},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := vendorTrust().VerifyEK(pub, nil, nil)
			wantRefusal(t, err, wire.ReasonBadRequest)
		})
	}
}

func TestLoadCADir(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// A PEM bundle with the root and the rogue intermediate, and the
	// vendor intermediate in DER.
	bundle := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: fx.vendor.root.Raw}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: fx.rogue.inter.Raw})...)
	write("bundle.pem", bundle)
	write("vendor-intermediate.cer", fx.vendor.inter.Raw)
	write(".hidden", []byte("ignored"))
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	roots, inters, err := LoadCADir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !roots.Equal(poolOf(fx.vendor.root)) || !inters.Equal(poolOf(fx.rogue.inter, fx.vendor.inter)) {
		t.Fatal("certificates sorted into the wrong pools")
	}
	trust := &EKTrust{Roots: roots, Intermediates: inters}
	cert := fx.vendor.issueEK(t, ekKey(t, fx.rsaEK), time.Now().Add(time.Hour), nil)
	if ek, err := trust.VerifyEK(fx.rsaEK, cert, nil); err != nil || !ek.ChainVerified {
		t.Fatalf("chain with the loaded CA directory: %v %v", err, ek.ChainErr)
	}

	write("README.txt", []byte("these are our vendors' CAs"))
	if _, _, err := LoadCADir(dir); err == nil || !strings.Contains(err.Error(), "README.txt") {
		t.Fatalf("a file that is no certificate: %v", err)
	}
	os.Remove(filepath.Join(dir, "README.txt"))
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalECPrivateKey(key)
	write("key.pem", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}))
	if _, _, err := LoadCADir(dir); err == nil || !strings.Contains(err.Error(), "key.pem") {
		t.Fatalf("a PEM file without certificates: %v", err)
	}
	if _, _, err := LoadCADir(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("missing directory accepted")
	}
}

func poolOf(certs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

func TestVerifyEKConcurrent(t *testing.T) {
	certs := [][]byte{
		fx.vendor.issueEK(t, ekKey(t, fx.rsaEK), time.Now().Add(time.Hour), nil),
		fx.vendor.issueEK(t, ekKey(t, fx.eccEK), time.Now().Add(time.Hour), nil),
	}
	pubs := [][]byte{fx.rsaEK, fx.eccEK}
	trust := vendorTrust()
	errc := make(chan error, 8)
	for i := range 8 {
		go func() {
			ek, err := trust.VerifyEK(pubs[i%2], certs[i%2], [][]byte{fx.vendor.inter.Raw})
			if err == nil && !ek.ChainVerified {
				err = ek.ChainErr
			}
			errc <- err
		}()
	}
	for range 8 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	var nilTrust *EKTrust
	if ek, err := nilTrust.VerifyEK(fx.rsaEK, certs[0], nil); err != nil || ek.ChainVerified || ek.AllowListed {
		t.Fatalf("nil trust: %v %+v", err, ek)
	}
}
