package mqttpool_test

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/fleet/mqttpool"
)

// TestCRLSyncGenerations: the CRL set of a CA rotation (ca.CRLsNumbered)
// brings the new generation's root into the broker's ca.pem (its cross
// certificate chains to the root the broker trusts) with a CRL of each
// generation in crl.pem; after the retirement the old root and its CRL
// leave both. A root the set lists that no trusted root certifies
// (another CA's, with or without a cross certificate of its own) is never
// installed, and a set with none of the broker's roots is refused.
func TestCRLSyncGenerations(t *testing.T) {
	fleetCA := openCA(t, nil)
	otherCA := openCA(t, nil)
	dir := brokerDir(t, fleetCA)
	number := int64(1)
	set := func(c *ca.CA) []byte {
		t.Helper()
		number++
		s, err := c.CRLsNumbered(big.NewInt(number), []ca.Revoked{{Serial: "0a", Time: time.Now()}}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return s.PEM
	}
	var serve []byte
	s := &mqttpool.CRLSync{Dir: dir, Fetch: func(context.Context) ([]byte, error) { return serve, nil }, Reload: func() error { return nil }}
	installed := func() (roots []string, crlIssuers []string) {
		t.Helper()
		for _, f := range []string{mqttpool.CAFile, mqttpool.CRLFile} {
			b, err := os.ReadFile(filepath.Join(dir, f))
			if err != nil {
				t.Fatal(err)
			}
			for blk, rest := pem.Decode(b); blk != nil; blk, rest = pem.Decode(rest) {
				switch blk.Type {
				case "CERTIFICATE":
					c, err := x509.ParseCertificate(blk.Bytes)
					if err != nil {
						t.Fatal(err)
					}
					roots = append(roots, c.Subject.CommonName)
				case "X509 CRL":
					c, err := x509.ParseRevocationList(blk.Bytes)
					if err != nil {
						t.Fatal(err)
					}
					crlIssuers = append(crlIssuers, c.Issuer.CommonName)
				}
			}
		}
		return roots, crlIssuers
	}
	g1 := fleetCA.Certificate().Subject.CommonName
	install := func(what string, b []byte, wantRoots, wantCRLs []string) {
		t.Helper()
		serve = b
		if _, err := s.Once(t.Context()); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		roots, crls := installed()
		if !slices.Equal(roots, wantRoots) || !slices.Equal(crls, wantCRLs) {
			t.Fatalf("%s: ca.pem %q, crl.pem issuers %q; want %q and %q", what, roots, crls, wantRoots, wantCRLs)
		}
	}
	install("before the rotation", set(fleetCA), []string{g1}, []string{g1})
	if _, err := fleetCA.Prepare(); err != nil {
		t.Fatal(err)
	}
	if _, err := fleetCA.Activate(); err != nil {
		t.Fatal(err)
	}
	g2 := fleetCA.Certificate().Subject.CommonName
	install("the overlap", set(fleetCA), []string{g2, g1}, []string{g2, g1})

	// Another CA's root slipped into the set, with a cross certificate
	// of its own generation 2 signed by its generation 1: not installed.
	if _, err := otherCA.Prepare(); err != nil {
		t.Fatal(err)
	}
	if _, err := otherCA.Activate(); err != nil {
		t.Fatal(err)
	}
	foreign := append(set(fleetCA), set(otherCA)...)
	serve = foreign
	if _, err := s.Once(t.Context()); !errors.Is(err, mqttpool.ErrCRL) {
		t.Fatalf("a set with another CA's CRLs: %v, want ErrCRL", err)
	}
	if roots, _ := installed(); !slices.Equal(roots, []string{g2, g1}) {
		t.Fatalf("a refused set changed ca.pem: %q", roots)
	}
	serve = set(otherCA)
	if _, err := s.Once(t.Context()); !errors.Is(err, mqttpool.ErrCRL) {
		t.Fatalf("another fleet's set: %v, want ErrCRL", err)
	}

	if _, err := fleetCA.Retire(); err != nil {
		t.Fatal(err)
	}
	install("after the retirement", set(fleetCA), []string{g2}, []string{g2})
}
