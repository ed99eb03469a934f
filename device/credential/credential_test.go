package credential

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"testing"
	"time"
)

type ca struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newCA(t *testing.T, name string) *ca {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &ca{cert: c, key: key}
}

func (c *ca) issue(t *testing.T, pub any, eku x509.ExtKeyUsage, notAfter time.Time) []byte {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "dev"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: notAfter, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{eku}}, c.cert, pub, c.key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// TestVerify: only a client certificate for the transport key, chaining
// to the trust bundle it came with and valid now, is accepted.
func TestVerify(t *testing.T) {
	fleet, rogue := newCA(t, "fleet"), newCA(t, "rogue")
	tk, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	trust := [][]byte{fleet.cert.Raw}
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
