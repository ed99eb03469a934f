package identity

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"net/url"
	"testing"
)

func TestDeviceIDStableAndDistinct(t *testing.T) {
	k1, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	k2, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	a, err := DeviceID(&k1.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := DeviceID(&k1.PublicKey)
	c, _ := DeviceID(&k2.PublicKey)
	if a != b || a == c || len(a) != 32 {
		t.Fatalf("ids %q %q %q", a, b, c)
	}
	fp, _ := Fingerprint(&k1.PublicKey)
	if fp[:32] != a || len(fp) != 64 {
		t.Fatalf("fingerprint %q", fp)
	}
}

func TestSPIFFE(t *testing.T) {
	u := SPIFFEID("fleet.example", "abc123")
	if u.String() != "spiffe://fleet.example/device/abc123" {
		t.Fatal(u)
	}
	c := &x509.Certificate{Subject: pkix.Name{CommonName: "abc123"}, URIs: []*url.URL{u}}
	if id, err := FromCertificate(c, "fleet.example"); err != nil || id != "abc123" {
		t.Fatalf("FromCertificate = %q, %v", id, err)
	}
	for _, bad := range []*x509.Certificate{
		{Subject: pkix.Name{CommonName: "other"}, URIs: []*url.URL{u}},
		{Subject: pkix.Name{CommonName: "abc123"}, URIs: []*url.URL{SPIFFEID("evil.example", "abc123")}},
		{Subject: pkix.Name{CommonName: "abc123"}},
		{Subject: pkix.Name{CommonName: "abc123"}, URIs: []*url.URL{u, u}},
		{Subject: pkix.Name{CommonName: "a/b"}, URIs: []*url.URL{{Scheme: "spiffe", Host: "fleet.example", Path: "/device/a/b"}}},
	} {
		if _, err := FromCertificate(bad, "fleet.example"); err == nil {
			t.Errorf("accepted %v %v", bad.Subject.CommonName, bad.URIs)
		}
	}
}
