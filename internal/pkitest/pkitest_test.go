package pkitest

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/pkg/identity"
)

// TestIssued: what the CA issues chains to its pool for the usage asked,
// and to no other CA's; serial numbers differ; a validity the test sets is
// kept.
func TestIssued(t *testing.T) {
	ca, other := NewCA(t, "test CA"), NewCA(t, "other CA")
	dev := ca.Device(t, "fleet.test", "0123456789abcdef0123456789abcdef")
	srv := ca.Server(t, "fleet.test")
	for name, c := range map[string]struct {
		cert  tls.Certificate
		usage x509.ExtKeyUsage
	}{"device": {dev, x509.ExtKeyUsageClientAuth}, "server": {srv, x509.ExtKeyUsageServerAuth}} {
		opts := x509.VerifyOptions{Roots: ca.Pool, KeyUsages: []x509.ExtKeyUsage{c.usage}}
		if _, err := c.cert.Leaf.Verify(opts); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		opts.Roots = other.Pool
		if _, err := c.cert.Leaf.Verify(opts); err == nil {
			t.Errorf("%s: verifies against another CA", name)
		}
	}
	if id, err := identity.FromCertificate(dev.Leaf, "fleet.test"); err != nil || id != "0123456789abcdef0123456789abcdef" {
		t.Errorf("device identity %q, %v", id, err)
	}
	if err := srv.Leaf.VerifyHostname("127.0.0.1"); err != nil {
		t.Error(err)
	}
	if dev.Leaf.SerialNumber.Cmp(srv.Leaf.SerialNumber) == 0 {
		t.Error("two certificates with one serial number")
	}
	until := time.Now().Add(time.Minute).Truncate(time.Second)
	der := ca.Sign(t, &x509.Certificate{NotAfter: until}, dev.Leaf.PublicKey)
	if c, err := x509.ParseCertificate(der); err != nil || !c.NotAfter.Equal(until) {
		t.Errorf("NotAfter set by the test: %v, %v", c.NotAfter, err)
	}
}

// TestFiles: the PEM files written hold the CA and the issued pair.
func TestFiles(t *testing.T) {
	ca := NewCA(t, "test CA")
	dir := t.TempDir()
	caPath := ca.WriteCA(t, dir, "ca.pem", 0o600)
	c := ca.Client(t, "dev-1")
	certPath, keyPath := WriteFiles(t, dir, c, 0o600)
	if _, err := tls.LoadX509KeyPair(certPath, keyPath); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(caPath)
	if err != nil || filepath.Dir(caPath) != dir {
		t.Fatal(caPath, err)
	}
	if pool := x509.NewCertPool(); !pool.AppendCertsFromPEM(b) {
		t.Fatal("CA file holds no certificate")
	}
}
