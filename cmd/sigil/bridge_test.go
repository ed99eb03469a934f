package main

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/bridge"
	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/fleet/inventory/inventorytest"
	"github.com/sigil-iot/sigil/pkg/identity"
)

// TestBridgeCreate: `sigil bridge create` against the real API makes the
// key here (written 0600, never sent), and writes the certificate the
// fleet issued for it, the fleet's CA and the Mosquitto bridge section
// pointing at them; a second create for the site is refused and leaves
// the first files alone.
func TestBridgeCreate(t *testing.T) {
	c, err := ca.Open(ca.Config{Dir: t.TempDir(), TrustDomain: "fleet.test"})
	if err != nil {
		t.Fatal(err)
	}
	svc, err := bridge.Open(bridge.Config{Path: filepath.Join(t.TempDir(), bridge.File), CA: c, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Close() })
	sum := sha256.Sum256([]byte(fakeToken))
	srv := httptest.NewUnstartedServer(api.New(api.Config{Inventory: inventorytest.Open(t), CA: c, Bridges: svc, AdminTokenHash: sum[:]}))
	srv.TLS = &tls.Config{}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	caFile := filepath.Join(t.TempDir(), "api.crt")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SIGIL_SERVER", srv.URL)
	t.Setenv("SIGIL_TOKEN", fakeToken)
	t.Setenv("SIGIL_CA", caFile)

	out := filepath.Join(t.TempDir(), "plant1")
	stdout, stderr, code := runCLI(t, "", "bridge", "create", "plant1", "--out", out, "--fleet-addr", "fleet.example:8883", "--plant-dir", "/etc/mosquitto/sigil")
	if code != 0 {
		t.Fatalf("exit %d: %s %s", code, stdout, stderr)
	}
	if !strings.Contains(stdout, "sigil/site/plant1/") {
		t.Errorf("stdout %q", stdout)
	}
	st, err := os.Stat(filepath.Join(out, bridgeKeyFile))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file %v %v", st, err)
	}
	pair, err := tls.LoadX509KeyPair(filepath.Join(out, bridgeCertFile), filepath.Join(out, bridgeKeyFile))
	if err != nil {
		t.Fatalf("the certificate is not the key's: %v", err)
	}
	cert, _ := x509.ParseCertificate(pair.Certificate[0])
	if site, err := identity.BridgeFromCertificate(cert, "fleet.test"); err != nil || site != "plant1" {
		t.Fatalf("site %q %v", site, err)
	}
	caPEM, _ := os.ReadFile(filepath.Join(out, bridgeCAFile))
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatal("ca.crt holds no certificate")
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatal(err)
	}
	conf, _ := os.ReadFile(filepath.Join(out, bridgeConfFile))
	for _, line := range []string{"address fleet.example:8883", "remote_clientid bridge-plant1", "bridge_keyfile /etc/mosquitto/sigil/bridge.key",
		"topic v1/dev/+/up/# out 1 sigil/ sigil/site/plant1/"} {
		if !strings.Contains(string(conf), line+"\n") {
			t.Errorf("sigil-bridge.conf lacks %q:\n%s", line, conf)
		}
	}

	out2 := filepath.Join(t.TempDir(), "again")
	if _, stderr, code := runCLI(t, "", "bridge", "create", "plant1", "--out", out2); code == 0 || !strings.Contains(stderr, "revoke it first") {
		t.Fatalf("second create: exit %d %s", code, stderr)
	}
	if _, stderr, code := runCLI(t, "", "bridge", "create", "plant1", "--out", out); code == 0 || !strings.Contains(stderr, "exists already") {
		t.Fatalf("create over existing files: exit %d %s", code, stderr)
	}
}
