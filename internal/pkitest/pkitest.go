// Package pkitest is a throwaway certificate authority for tests: a
// self-signed P-256 CA that issues server, client and device certificates
// (and writes them as PEM files for tools such as the mosquitto clients),
// each valid from an hour ago to an hour from now unless the test says
// otherwise.
package pkitest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/pkg/identity"
)

// CA is a test certificate authority.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
	// Pool holds Cert alone: the trust of a peer that trusts this CA.
	Pool   *x509.CertPool
	serial atomic.Int64 // the last serial number issued (Cert's is 1)
}

// NewCA makes a CA whose certificate has the common name name.
func NewCA(t testing.TB, name string) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	ca := &CA{Cert: cert, Key: key, Pool: x509.NewCertPool()}
	ca.Pool.AddCert(cert)
	ca.serial.Store(100)
	return ca
}

// Sign issues the certificate tmpl describes for pub and returns it in
// DER. It sets tmpl's serial number (the CA's next), and, where tmpl
// leaves them zero, its validity (an hour either side of now) and key
// usage (digital signature).
func (ca *CA) Sign(t testing.TB, tmpl *x509.Certificate, pub crypto.PublicKey) []byte {
	t.Helper()
	tmpl.SerialNumber = big.NewInt(ca.serial.Add(1))
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore = time.Now().Add(-time.Hour)
	}
	if tmpl.NotAfter.IsZero() {
		tmpl.NotAfter = time.Now().Add(time.Hour)
	}
	if tmpl.KeyUsage == 0 {
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// Issue makes a P-256 key and the certificate tmpl describes for it (see
// Sign). Its PrivateKey is an *ecdsa.PrivateKey, its Leaf is set.
func (ca *CA) Issue(t testing.TB, tmpl *x509.Certificate) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der := ca.Sign(t, tmpl, &key.PublicKey)
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// Server issues a server certificate for 127.0.0.1 and the DNS names
// given; its common name is the first of them ("localhost" without any).
func (ca *CA) Server(t testing.TB, names ...string) tls.Certificate {
	t.Helper()
	if len(names) == 0 {
		names = []string{"localhost"}
	}
	return ca.Issue(t, &x509.Certificate{
		Subject: pkix.Name{CommonName: names[0]}, DNSNames: names, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
}

// Client issues a client certificate with the common name cn.
func (ca *CA) Client(t testing.TB, cn string) tls.Certificate {
	t.Helper()
	return ca.Issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: cn}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
}

// Device issues a device's client certificate as the fleet's CA does: the
// common name is the device ID, the URI its SPIFFE ID in trustDomain.
func (ca *CA) Device(t testing.TB, trustDomain, id string) tls.Certificate {
	t.Helper()
	return ca.Issue(t, &x509.Certificate{
		Subject: pkix.Name{CommonName: id}, URIs: []*url.URL{identity.SPIFFEID(trustDomain, id)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
}

// WriteCA writes the CA's certificate as PEM to dir/name, with
// permissions perm, and returns its path.
func (ca *CA) WriteCA(t testing.TB, dir, name string, perm os.FileMode) string {
	t.Helper()
	p := filepath.Join(dir, name)
	WritePEM(t, p, "CERTIFICATE", ca.Cert.Raw, perm)
	return p
}

// WriteFiles writes c's certificate and its key (PKCS #8; c.PrivateKey
// must be one Issue made) as PEM files named after its serial number in
// dir, with permissions perm, and returns their paths.
func WriteFiles(t testing.TB, dir string, c tls.Certificate, perm os.FileMode) (certPath, keyPath string) {
	t.Helper()
	kder, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(dir, c.Leaf.SerialNumber.String())
	WritePEM(t, base+".crt", "CERTIFICATE", c.Certificate[0], perm)
	WritePEM(t, base+".key", "PRIVATE KEY", kder, perm)
	return base + ".crt", base + ".key"
}

// WritePEM writes der as one PEM block of type typ to path.
func WritePEM(t testing.TB, path, typ string, der []byte, perm os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), perm); err != nil {
		t.Fatal(err)
	}
}
