package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/pkg/identity"
)

const td = "fleet.example.com"

func openCA(t testing.TB, dir string) *CA {
	t.Helper()
	c, err := Open(Config{Dir: dir, TrustDomain: td})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func deviceKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestOpenCreatesRoot(t *testing.T) {
	dir := t.TempDir()
	c := openCA(t, dir)
	cert := c.Certificate()
	if cert.Subject.CommonName != "Sigil fleet CA "+td || !cert.IsCA || cert.MaxPathLen != 1 {
		t.Fatalf("root %v IsCA %v MaxPathLen %v (want 1: room for a rotation's cross certificate)", cert.Subject, cert.IsCA, cert.MaxPathLen)
	}
	if cert.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
		t.Fatalf("key usage %v", cert.KeyUsage)
	}
	if life := cert.NotAfter.Sub(cert.NotBefore); life < 9*365*24*time.Hour {
		t.Fatalf("root lifetime %v", life)
	}
	if err := cert.CheckSignatureFrom(cert); err != nil {
		t.Fatalf("root is not self-signed: %v", err)
	}
	if block, _ := pem.Decode(c.CertPEM()); block == nil || string(block.Bytes) != string(cert.Raw) {
		t.Fatal("CertPEM is not the certificate")
	}
	fi, err := os.Stat(filepath.Join(dir, KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %04o, want 0600", fi.Mode().Perm())
	}
}

func TestReopenKeepsCA(t *testing.T) {
	dir := t.TempDir()
	first := openCA(t, dir)
	dev, err := first.IssueDevice("dev-1", deviceKey(t).Public(), 0)
	if err != nil {
		t.Fatal(err)
	}
	second := openCA(t, dir)
	if !second.Certificate().Equal(first.Certificate()) {
		t.Fatal("reopen created another CA")
	}
	// What the first instance issued verifies with the second's pool, and
	// the second signs with the same key.
	if _, err := dev.Verify(x509.VerifyOptions{Roots: second.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatal(err)
	}
	dev2, err := second.IssueDevice("dev-2", deviceKey(t).Public(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := dev2.CheckSignatureFrom(first.Certificate()); err != nil {
		t.Fatal(err)
	}
}

func TestOpenRefusesMismatchedKey(t *testing.T) {
	dir := t.TempDir()
	openCA(t, dir)
	if _, err := Open(Config{Dir: dir, TrustDomain: td, Signer: deviceKey(t)}); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("certificate of another key accepted: %v", err)
	}
}

func TestExternalSigner(t *testing.T) {
	dir := t.TempDir()
	key := deviceKey(t)
	c, err := Open(Config{Dir: dir, TrustDomain: td, Signer: key})
	if err != nil {
		t.Fatal(err)
	}
	if !key.PublicKey.Equal(c.Certificate().PublicKey) {
		t.Fatal("CA certificate is not for the configured signer")
	}
	if _, err := os.Stat(filepath.Join(dir, KeyFile)); !os.IsNotExist(err) {
		t.Fatalf("key file written although a signer was given: %v", err)
	}
}

func TestKeyFileMode(t *testing.T) {
	dir := t.TempDir()
	openCA(t, dir)
	keyPath := filepath.Join(dir, KeyFile)
	for _, mode := range []os.FileMode{0o644, 0o640, 0o602} {
		if err := os.Chmod(keyPath, mode); err != nil {
			t.Fatal(err)
		}
		_, err := Open(Config{Dir: dir, TrustDomain: td})
		if err == nil || !strings.Contains(err.Error(), "chmod 600") {
			t.Fatalf("key file with mode %04o accepted: %v", mode, err)
		}
	}
	if err := os.Chmod(keyPath, 0o600); err != nil {
		t.Fatal(err)
	}
	openCA(t, dir)

	if err := os.WriteFile(keyPath, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(Config{Dir: dir, TrustDomain: td}); err == nil {
		t.Fatal("garbage key file accepted")
	}
}

func TestIssueDevice(t *testing.T) {
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	c, err := Open(Config{Dir: t.TempDir(), TrustDomain: td, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	key := deviceKey(t)
	const id = "0123456789abcdef0123456789abcdef"
	cert, err := c.IssueDevice(id, key.Public(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{
		Roots:       c.Pool(),
		CurrentTime: now,
		KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		t.Fatal(err)
	}
	// An X509-SVID: serverAuth as well (the specification wants both), but
	// for no host name (TestDeviceCertificateIsNoServerForAnyName).
	if _, err := cert.Verify(x509.VerifyOptions{Roots: c.Pool(), CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Fatalf("device certificate refused for server authentication: %v", err)
	}
	got, err := identity.FromCertificate(cert, td)
	if err != nil || got != id {
		t.Fatalf("FromCertificate = %q, %v", got, err)
	}
	if !cert.NotBefore.Equal(now.Add(-time.Minute)) || !cert.NotAfter.Equal(now.Add(DefaultDeviceLifetime)) {
		t.Fatalf("validity %v - %v", cert.NotBefore, cert.NotAfter)
	}
	if cert.KeyUsage != x509.KeyUsageDigitalSignature || cert.IsCA {
		t.Fatalf("key usage %v, IsCA %v", cert.KeyUsage, cert.IsCA)
	}
	if cert.SerialNumber.Sign() <= 0 || cert.SerialNumber.BitLen() < 100 {
		t.Fatalf("serial %v", cert.SerialNumber)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		t.Fatal("certificate for another key")
	}
	if other, _ := c.IssueDevice(id, key.Public(), 0); other.SerialNumber.Cmp(cert.SerialNumber) == 0 {
		t.Fatal("serial reused")
	}
	short, err := c.IssueDevice(id, key.Public(), time.Hour)
	if err != nil || !short.NotAfter.Equal(now.Add(time.Hour)) {
		t.Fatalf("lifetime: %v %v", err, short.NotAfter)
	}
	long, err := c.IssueDevice(id, key.Public(), 100*365*24*time.Hour)
	if err != nil || long.NotAfter.After(c.Certificate().NotAfter) {
		t.Fatalf("certificate outlives the CA: %v %v", err, long.NotAfter)
	}
}

func TestIssueDeviceRefusesInvalidIDs(t *testing.T) {
	c := openCA(t, t.TempDir())
	pub := deviceKey(t).Public()
	for _, id := range []string{"", "Dev", "dev/1", "dev+", "#", "-dev", ".dev", "$SYS", "dev 1", strings.Repeat("a", 65), "dev\x00"} {
		if _, err := c.IssueDevice(id, pub, 0); err == nil {
			t.Errorf("device ID %q accepted", id)
		}
	}
}

func TestOpenConfig(t *testing.T) {
	for _, cfg := range []Config{
		{TrustDomain: td},
		{Dir: t.TempDir()},
		{Dir: t.TempDir(), TrustDomain: "Fleet.Example"},
		{Dir: t.TempDir(), TrustDomain: "a/b"},
		{Dir: t.TempDir(), TrustDomain: td, DeviceLifetime: -time.Hour},
	} {
		if _, err := Open(cfg); err == nil {
			t.Errorf("config %+v accepted", cfg)
		}
	}
}

// TestOpenSSLVerify checks the certificates with an independent
// implementation: a device certificate is an X509-SVID, fit for both ends
// of a TLS connection (sslclient and sslserver), the server certificate
// for the server end.
func TestOpenSSLVerify(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("openssl not found (CI=true requires it)")
		}
		t.Skip("openssl not found; install it to run this test")
	}
	dir := t.TempDir()
	c := openCA(t, dir)
	dev, err := c.IssueDevice("dev-1", deviceKey(t).Public(), 0)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := c.IssueServer([]string{"broker.example.com", "127.0.0.1"}, deviceKey(t).Public(), 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, purpose string
		der           []byte
	}{
		{"dev.pem", "sslclient", dev.Raw},
		{"dev.pem", "sslserver", dev.Raw},
		{"srv.pem", "sslserver", srv.Raw},
	} {
		p := filepath.Join(dir, tc.name)
		if err := os.WriteFile(p, pemCert(tc.der), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(openssl, "verify", "-x509_strict", "-purpose", tc.purpose, "-CAfile", filepath.Join(dir, CertFile), p).CombinedOutput()
		if err != nil || !strings.Contains(string(out), ": OK") {
			t.Errorf("openssl verify -purpose %s %s: %v\n%s", tc.purpose, tc.name, err, out)
		}
	}
	// And it refuses a certificate from another CA, so the check can fail.
	other := openCA(t, t.TempDir())
	foreign, _ := other.IssueDevice("dev-1", deviceKey(t).Public(), 0)
	p := filepath.Join(dir, "foreign.pem")
	os.WriteFile(p, pemCert(foreign.Raw), 0o644)
	if out, err := exec.Command(openssl, "verify", "-CAfile", filepath.Join(dir, CertFile), p).CombinedOutput(); err == nil {
		t.Fatalf("openssl accepted a certificate of another CA:\n%s", out)
	}
}

func TestServerTLS(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	c, err := Open(Config{Dir: dir, TrustDomain: td, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	names := []string{"localhost", "127.0.0.1"}
	first, err := c.ServerTLS(names)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(dir, ServerKeyFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("server key file: %v %v", err, fi.Mode())
	}
	again, err := c.ServerTLS([]string{"127.0.0.1", "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	if !again.Leaf.Equal(first.Leaf) {
		t.Fatal("unchanged names issued a new certificate")
	}
	renamed, err := c.ServerTLS([]string{"localhost", "127.0.0.1", "broker.local"})
	if err != nil {
		t.Fatal(err)
	}
	if renamed.Leaf.Equal(first.Leaf) || !slices.Contains(renamed.Leaf.DNSNames, "broker.local") {
		t.Fatal("changed names kept the old certificate")
	}
	now = now.Add(DefaultServerLifetime * 3 / 4) // less than a third left
	renewed, err := c.ServerTLS([]string{"localhost", "127.0.0.1", "broker.local"})
	if err != nil {
		t.Fatal(err)
	}
	if renewed.Leaf.Equal(renamed.Leaf) || !renewed.Leaf.NotAfter.After(renamed.Leaf.NotAfter) {
		t.Fatal("expiring certificate kept")
	}
	now = time.Now()

	// A real handshake: a client trusting the CA connects to the server.
	a, b := net.Pipe()
	errc := make(chan error, 1)
	go func() {
		defer a.Close()
		errc <- tls.Server(a, &tls.Config{Certificates: []tls.Certificate{renamed}}).Handshake()
	}()
	cerr := tls.Client(b, &tls.Config{RootCAs: c.Pool(), ServerName: "127.0.0.1"}).Handshake()
	b.Close()
	if serr := <-errc; cerr != nil || serr != nil {
		t.Fatalf("handshake: client %v, server %v", cerr, serr)
	}
}

func BenchmarkIssueDevice(b *testing.B) {
	c := openCA(b, b.TempDir())
	pub := deviceKey(b).Public()
	for b.Loop() {
		if _, err := c.IssueDevice("0123456789abcdef0123456789abcdef", pub, 0); err != nil {
			b.Fatal(err)
		}
	}
}

func TestFileSignerRace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k.key")
	const n = 8
	keys := make(chan any, n)
	for range n {
		go func() {
			s, err := FileSigner(path)
			if err != nil {
				keys <- err
				return
			}
			keys <- s.Public()
		}()
	}
	var first *ecdsa.PublicKey
	for range n {
		switch k := (<-keys).(type) {
		case error:
			t.Fatal(k)
		case *ecdsa.PublicKey:
			if first == nil {
				first = k
			} else if !first.Equal(k) {
				t.Fatal("racing creators got different keys")
			}
		}
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Fatalf("temporary files left: %v", entries)
	}
}

func TestOpenRefusesBadCertFile(t *testing.T) {
	dir := t.TempDir()
	openCA(t, dir)
	if err := os.WriteFile(filepath.Join(dir, CertFile), []byte("junk"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(Config{Dir: dir, TrustDomain: td}); err == nil {
		t.Fatal("garbage certificate file accepted")
	}
}
