package ca

import (
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestCRL(t *testing.T) {
	c := openCA(t, t.TempDir())
	cert, err := c.IssueDevice("0123456789abcdef0123456789abcdef", &deviceKey(t).PublicKey, 0)
	if err != nil {
		t.Fatal(err)
	}
	serial := hex.EncodeToString(cert.SerialNumber.Bytes())
	der, err := c.CRL([]Revoked{{Serial: serial, Time: time.Now(), Reason: 1}}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// openssl is an independent parser: it must accept the signature and
	// list the serial with its reason.
	if _, err := exec.LookPath("openssl"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("openssl missing")
		}
		t.Skip("openssl missing")
	}
	dir := t.TempDir()
	crlFile, caFile := filepath.Join(dir, "crl.der"), filepath.Join(dir, "ca.pem")
	os.WriteFile(crlFile, der, 0o600)
	os.WriteFile(caFile, c.CertPEM(), 0o600)
	out, err := exec.Command("openssl", "crl", "-inform", "DER", "-in", crlFile, "-CAfile", caFile, "-noout", "-text").CombinedOutput()
	if err != nil {
		t.Fatalf("openssl crl: %v\n%s", err, out)
	}
	for _, want := range []string{"verify OK", strings.ToUpper(serial), "Key Compromise", "Next Update"} {
		if !strings.Contains(string(out), want) {
			t.Fatalf("openssl crl output lacks %q:\n%s", want, out)
		}
	}
}
