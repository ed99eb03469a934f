package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/device/agent"
	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/sim/harness"
)

// claimBatch makes a device maker's claim CA and one batch certificate.
func claimBatch(t testing.TB) (caDir, certFile, keyFile string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Acme claim CA"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "batch 2026-11"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caDir, dir := t.TempDir(), t.TempDir()
	writePEM(t, filepath.Join(caDir, "claim-ca.pem"), "CERTIFICATE", caDER)
	certFile, keyFile = filepath.Join(dir, "claim.pem"), filepath.Join(dir, "claim.key")
	writePEM(t, certFile, "CERTIFICATE", der)
	kb, _ := x509.MarshalPKCS8PrivateKey(key)
	writePEM(t, keyFile, "PRIVATE KEY", kb)
	return caDir, certFile, keyFile
}

// TestBootstrapCredential: with bootstrap_credential set, the broker admits
// a bootstrap client only with a claim certificate or an enrollment token;
// a device re-enrolls with the token it already used.
func TestBootstrapCredential(t *testing.T) {
	claimCA, claimCert, claimKey := claimBatch(t)
	f := startFleet(t, func(c *server.Config) {
		c.EKCADir = ekCADir(t, vendorCA(t))
		c.BootstrapCredential = true
		c.ClaimCADir = claimCA
	})
	noLog := func(c *agentConfig) { c.EventLog = "-" }
	ctx := context.Background()

	bare := startDevice(t, f, newTPM(t), harness.DeviceConfig{Tweak: noLog})
	if _, err := bare.Wait(ctx, 10*time.Second, func(s agent.Status) bool {
		return strings.Contains(s.LastError, "bad user name or password") || strings.Contains(s.LastError, "not authori")
	}); err != nil {
		t.Fatalf("a device without credential got further: %v", err)
	}
	if st := bare.Status(); st.Enrollment == "enrolled" {
		t.Fatal("enrolled without a bootstrap credential")
	}

	claimed := startDevice(t, f, newTPM(t), harness.DeviceConfig{Tweak: func(c *agentConfig) { noLog(c); c.ClaimCert, c.ClaimKey = claimCert, claimKey }})
	cst := waitConnected(t, claimed)
	if cst.DeviceID == "" {
		t.Fatal("claimed device not enrolled")
	}
	// The claim certificate only let it connect: a batch key, not bound to
	// its TPM, chooses no model or group (an administrator assigns them).
	c, _ := f.Client()
	if dev, err := c.Device(ctx, cst.DeviceID); err != nil || dev.Model != "" || dev.Group != "" || dev.ClaimedModel == "" {
		t.Fatalf("device enrolled with a claim certificate: %+v %v", dev, err)
	}

	tok, err := c.CreateToken(ctx, "gw-1", "ops", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	withToken := startDevice(t, f, newTPM(t), harness.DeviceConfig{Token: tok.Token, Tweak: noLog})
	st := waitConnected(t, withToken)
	// Its certificate revoked, it re-enrolls with the token it already used.
	if _, err := c.Revoke(ctx, st.DeviceID, "superseded", "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := withToken.Wait(ctx, 30*time.Second, func(s agent.Status) bool { return s.Connected && s.CertSerial != st.CertSerial }); err != nil {
		t.Fatal(err)
	}
}
