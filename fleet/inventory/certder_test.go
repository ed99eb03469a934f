package inventory_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"math/big"
	"path/filepath"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/inventory/inventorytest"
)

func testCert(t *testing.T, serial int64, now time.Time) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "d"}, NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestIssuedCertificateKeepsDER: the inventory keeps the DER of a device's
// current certificate, so that the fleet can export it; recording a serial
// without its certificate forgets the DER of the one before rather than
// pair it with the wrong serial.
func TestIssuedCertificateKeepsDER(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "inv.db"), inventory.WithNoSync())
	defer s.Close()
	now := time.Now()
	d := inventorytest.NewDevice(1)
	d.State = inventory.StateActive
	first, second := testCert(t, 0x1a2b, now), testCert(t, 0x3c4d, now)
	d.IssuedCertificate(first)
	d.IssuedCertificate(second)
	if err := s.PutDevice(d); err != nil {
		t.Fatal(err)
	}
	got, err := s.Device(d.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.CertDER, second.Raw) || got.CertSerial != hex.EncodeToString(second.SerialNumber.Bytes()) ||
		!got.CertIssued.Equal(second.NotBefore) || !got.CertExpiry.Equal(second.NotAfter) {
		t.Fatalf("stored: serial %s, issued %v, expiry %v, %d bytes of DER", got.CertSerial, got.CertIssued, got.CertExpiry, len(got.CertDER))
	}
	if !got.Admits("1a2b", now) || !got.Admits("3c4d", now) {
		t.Fatalf("certificates %+v", got.Certs)
	}
	got.Issued("5e6f", now, now.Add(time.Hour))
	if got.CertDER != nil || got.CertSerial != "5e6f" {
		t.Fatalf("after Issued without a certificate: serial %s with %d bytes of DER", got.CertSerial, len(got.CertDER))
	}
}
