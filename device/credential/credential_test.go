package credential

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/internal/pkitest"
)

// ca issues the certificates of these tests.
type ca struct{ *pkitest.CA }

func newCA(t *testing.T, name string) *ca { return &ca{pkitest.NewCA(t, name)} }

// issue certifies pub as the device "dev" for eku, valid until notAfter.
func (c *ca) issue(t *testing.T, pub any, eku x509.ExtKeyUsage, notAfter time.Time) []byte {
	t.Helper()
	return c.Sign(t, &x509.Certificate{Subject: pkix.Name{CommonName: "dev"}, NotAfter: notAfter, ExtKeyUsage: []x509.ExtKeyUsage{eku}}, pub)
}

// TestVerify: only a client certificate for the transport key, chaining
// to the trust bundle it came with and valid now, is accepted.
func TestVerify(t *testing.T) {
	fleet, rogue := newCA(t, "fleet"), newCA(t, "rogue")
	tk, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	trust := [][]byte{fleet.Cert.Raw}
	later := time.Now().Add(time.Hour)
	good := fleet.issue(t, tk.Public(), x509.ExtKeyUsageClientAuth, later)
	if c, err := Verify(good, nil, trust, tk.Public(), time.Now()); err != nil || c.Subject.CommonName != "dev" {
		t.Fatalf("Verify(good) = %v, %v", c, err)
	}
	if _, err := Verify(fleet.issue(t, other.Public(), x509.ExtKeyUsageClientAuth, later), nil, trust, tk.Public(), time.Now()); !errors.Is(err, ErrWrongKey) {
		t.Errorf("another key: %v", err)
	}
	for name, c := range map[string]struct {
		der   []byte
		trust [][]byte
		now   time.Time
	}{
		"not DER":              {der: []byte("junk"), trust: trust, now: time.Now()},
		"another CA":           {der: rogue.issue(t, tk.Public(), x509.ExtKeyUsageClientAuth, later), trust: trust, now: time.Now()},
		"server certificate":   {der: fleet.issue(t, tk.Public(), x509.ExtKeyUsageServerAuth, later), trust: trust, now: time.Now()},
		"expired":              {der: good, trust: trust, now: later.Add(time.Minute)},
		"trust bundle garbage": {der: good, trust: [][]byte{[]byte("junk")}, now: time.Now()},
		"no trust bundle":      {der: good, now: time.Now()},
	} {
		if _, err := Verify(c.der, nil, c.trust, tk.Public(), c.now); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
