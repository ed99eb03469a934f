package ca

import (
	"crypto/x509"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func poolOf(t *testing.T, ders ...[]byte) *x509.CertPool {
	t.Helper()
	p := x509.NewCertPool()
	for _, d := range ders {
		c, err := x509.ParseCertificate(d)
		if err != nil {
			t.Fatal(err)
		}
		p.AddCert(c)
	}
	return p
}

// verifyServer checks a server chain (leaf first) against roots the way a
// device's TLS client does.
func verifyServer(chain [][]byte, roots *x509.CertPool) error {
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return err
	}
	inter := x509.NewCertPool()
	for _, d := range chain[1:] {
		c, err := x509.ParseCertificate(d)
		if err != nil {
			return err
		}
		inter.AddCert(c)
	}
	_, err = leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, DNSName: "broker.example.com"})
	return err
}

// TestRotationLifecycle walks prepare, activate and retire, checking at
// each step what devices trust, who signs, and what the broker would
// accept — across a reopen of the CA directory.
func TestRotationLifecycle(t *testing.T) {
	dir := t.TempDir()
	c := openCA(t, dir)
	oldRoot := c.Certificate().Raw
	oldDev, err := c.IssueDevice("dev-1", deviceKey(t).Public(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if c.Rotating() || len(c.TrustBundle()) != 1 {
		t.Fatal("a fresh CA reports a rotation")
	}
	if _, err := c.Activate(); !errors.Is(err, ErrNothingPrepared) {
		t.Fatalf("activate without prepare: %v", err)
	}

	// Prepare: the new root is trusted, the old key still signs.
	g, err := c.Prepare()
	if err != nil {
		t.Fatal(err)
	}
	if g.N != 2 || g.State != GenPrepared || !strings.HasSuffix(g.Subject, " G2") {
		t.Fatalf("prepared %+v", g)
	}
	if _, err := c.Prepare(); !errors.Is(err, ErrAlreadyPrepared) {
		t.Fatalf("second prepare: %v", err)
	}
	bundle := c.TrustBundle()
	if len(bundle) != 2 || string(bundle[0]) != string(oldRoot) {
		t.Fatalf("bundle during prepare has %d roots", len(bundle))
	}
	mid, _ := c.IssueDevice("dev-2", deviceKey(t).Public(), 0)
	if gen, err := c.Issuer(mid); err != nil || gen.N != 1 {
		t.Fatalf("issued during prepare by generation %d, %v; want 1", gen.N, err)
	}

	// Reopen: the prepared generation survives.
	c = openCA(t, dir)
	if gens := c.Generations(); len(gens) != 2 || gens[1].State != GenPrepared {
		t.Fatalf("after reopen: %+v", gens)
	}

	// Activate: the new key signs; the server chain verifies from either root.
	if g, err = c.Activate(); err != nil || g.N != 2 {
		t.Fatalf("activate: %+v %v", g, err)
	}
	newRoot := c.Certificate().Raw
	if string(newRoot) == string(oldRoot) {
		t.Fatal("active certificate did not change")
	}
	newDev, _ := c.IssueDevice("dev-1", deviceKey(t).Public(), 0)
	if gen, err := c.Issuer(newDev); err != nil || gen.N != 2 {
		t.Fatalf("issued after activate by generation %d, %v; want 2", gen.N, err)
	}
	if gen, err := c.Issuer(oldDev); err != nil || gen.N != 1 || gen.State != GenSuperseded {
		t.Fatalf("old certificate during overlap: %+v %v", gen, err)
	}
	if _, err := newDev.Verify(x509.VerifyOptions{Roots: c.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("new device certificate against the pool: %v", err)
	}
	srv, err := c.ServerTLS([]string{"broker.example.com"})
	if err != nil {
		t.Fatal(err)
	}
	if len(srv.Certificate) != 2 {
		t.Fatalf("server chain has %d certificates, want leaf + cross", len(srv.Certificate))
	}
	if err := verifyServer(srv.Certificate, poolOf(t, oldRoot)); err != nil {
		t.Fatalf("a device that knows only the old root: %v", err)
	}
	if err := verifyServer(srv.Certificate, poolOf(t, newRoot)); err != nil {
		t.Fatalf("a device that knows only the new root: %v", err)
	}
	if err := verifyServer(srv.Certificate[:1], poolOf(t, oldRoot)); err == nil {
		t.Fatal("without the cross certificate the old root verified the new leaf")
	}

	// Retire: the old root leaves the bundle and its certificates are refused.
	retired, err := c.Retire()
	if err != nil || len(retired) != 1 || retired[0].N != 1 {
		t.Fatalf("retire: %+v %v", retired, err)
	}
	if _, err := c.Retire(); !errors.Is(err, ErrNothingToRetire) {
		t.Fatalf("second retire: %v", err)
	}
	c = openCA(t, dir)
	if b := c.TrustBundle(); len(b) != 1 || string(b[0]) != string(newRoot) {
		t.Fatal("bundle after retire is not the new root alone")
	}
	if _, err := c.Issuer(oldDev); !errors.Is(err, ErrRetiredGenerator) {
		t.Fatalf("old certificate after retire: %v", err)
	}
	if _, err := c.Issuer(newDev); err != nil {
		t.Fatalf("new certificate after retire: %v", err)
	}
	foreign, _ := openCA(t, t.TempDir()).IssueDevice("dev-1", deviceKey(t).Public(), 0)
	if _, err := c.Issuer(foreign); !errors.Is(err, ErrUnknownIssuer) {
		t.Fatalf("foreign certificate: %v", err)
	}
	// A third generation cross-signs from the second.
	if _, err := c.Prepare(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Activate(); err != nil {
		t.Fatal(err)
	}
	srv, err = c.ServerTLS([]string{"broker.example.com"})
	if err != nil {
		t.Fatal(err)
	}
	if err := verifyServer(srv.Certificate, poolOf(t, newRoot)); err != nil {
		t.Fatalf("generation 2 root against generation 3 server: %v", err)
	}
}

// TestRotationOpenSSL checks the cross-signed server chain with openssl, an
// independent verifier: a client holding only the old root accepts it.
func TestRotationOpenSSL(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("openssl not found (CI=true requires it)")
		}
		t.Skip("openssl not found")
	}
	dir := t.TempDir()
	c := openCA(t, dir)
	oldRoot := filepath.Join(dir, "old-root.pem")
	os.WriteFile(oldRoot, c.CertPEM(), 0o644)
	if _, err := c.Prepare(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Activate(); err != nil {
		t.Fatal(err)
	}
	srv, err := c.ServerTLS([]string{"broker.example.com"})
	if err != nil {
		t.Fatal(err)
	}
	leaf, untrusted := filepath.Join(dir, "leaf.pem"), filepath.Join(dir, "cross.pem")
	os.WriteFile(leaf, pemCert(srv.Certificate[0]), 0o644)
	os.WriteFile(untrusted, pemCert(srv.Certificate[1]), 0o644)
	out, err := exec.Command(openssl, "verify", "-purpose", "sslserver", "-CAfile", oldRoot, "-untrusted", untrusted, leaf).CombinedOutput()
	if err != nil || !strings.Contains(string(out), ": OK") {
		t.Fatalf("openssl verify via the cross certificate: %v\n%s", err, out)
	}
	if out, err := exec.Command(openssl, "verify", "-CAfile", oldRoot, leaf).CombinedOutput(); err == nil {
		t.Fatalf("openssl accepted the new leaf without the cross certificate:\n%s", out)
	}
}

// TestPrepareRefusesExternalSigner: rotation cannot invent a key for an
// external signer.
func TestPrepareRefusesExternalSigner(t *testing.T) {
	dir := t.TempDir()
	key, err := FileSigner(filepath.Join(t.TempDir(), "k"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := Open(Config{Dir: dir, TrustDomain: td, Signer: key})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Prepare(); !errors.Is(err, ErrExternalSigner) {
		t.Fatalf("prepare with external signer: %v", err)
	}
}

// TestGenerationsFileValidated: a damaged generations.json stops Open
// instead of silently trusting the wrong keys.
func TestGenerationsFileValidated(t *testing.T) {
	for name, body := range map[string]string{
		"two active": `[{"n":1,"state":"active"},{"n":2,"state":"active"}]`,
		"bad state":  `[{"n":1,"state":"trusted"}]`,
		"gap":        `[{"n":2,"state":"active"}]`,
		"not json":   `{`,
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			openCA(t, dir)
			os.WriteFile(filepath.Join(dir, GenerationsFile), []byte(body), 0o644)
			if _, err := Open(Config{Dir: dir, TrustDomain: td}); err == nil {
				t.Fatal("Open accepted a damaged generations file")
			}
		})
	}
}

// TestIssuerCertificate: the root of the generation that issued a
// certificate, retired generations included; a certificate of another CA
// has none.
func TestIssuerCertificate(t *testing.T) {
	c := openCA(t, t.TempDir())
	root1 := c.Certificate()
	old, err := c.IssueDevice("dev-1", deviceKey(t).Public(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Prepare(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Activate(); err != nil {
		t.Fatal(err)
	}
	cur, err := c.IssueDevice("dev-1", deviceKey(t).Public(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Retire(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		cert  *x509.Certificate
		root  *x509.Certificate
		n     int
		state string
	}{{old, root1, 1, GenRetired}, {cur, c.Certificate(), 2, GenActive}} {
		root, g, err := c.IssuerCertificate(tc.cert)
		if err != nil || !root.Equal(tc.root) || g.N != tc.n || g.State != tc.state {
			t.Errorf("IssuerCertificate = generation %d %s, %v; want %d %s", g.N, g.State, err, tc.n, tc.state)
		}
	}
	foreign, _ := openCA(t, t.TempDir()).IssueDevice("dev-1", deviceKey(t).Public(), 0)
	if _, _, err := c.IssuerCertificate(foreign); !errors.Is(err, ErrUnknownIssuer) {
		t.Errorf("certificate of another CA: %v, want ErrUnknownIssuer", err)
	}
}
