package api

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/fleet/inventory"
)

// TestDeviceCertificateExport: GET /api/v1/devices/{id}/certificate
// returns the device's current certificate with its SPIFFE ID, serial,
// validity and issuing CA generation as JSON, and its chain as PEM (with
// ?format=pem or an Accept header), which openssl verifies against the
// fleet CA; a device without a kept certificate, or none, gets a 404 that
// says why.
func TestDeviceCertificateExport(t *testing.T) {
	dir := t.TempDir()
	inv, err := inventory.Open(filepath.Join(dir, "inv.db"), inventory.WithNoSync())
	if err != nil {
		t.Fatal(err)
	}
	defer inv.Close()
	c, err := ca.Open(ca.Config{Dir: filepath.Join(dir, "ca"), TrustDomain: "fleet.example.com"})
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte(token))
	srv := httptest.NewServer(New(Config{Inventory: inv, CA: c, AdminTokenHash: sum[:]}))
	defer srv.Close()

	const id = "0123456789abcdef0123456789abcdef"
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	cert, err := c.IssueDevice(id, key.Public(), 0)
	if err != nil {
		t.Fatal(err)
	}
	d := &inventory.Device{ID: id, State: inventory.StateActive}
	d.IssuedCertificate(cert)
	if err := inv.PutDevice(t.Context(), d); err != nil {
		t.Fatal(err)
	}

	resp, body := call(t, srv, "GET", "/api/v1/devices/"+id+"/certificate", token, "")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("JSON: %d %s %s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	var v DeviceCertificate
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatal(err)
	}
	if v.DeviceID != id || v.SPIFFEID != "spiffe://fleet.example.com/device/"+id || v.Serial != d.CertSerial ||
		!v.NotBefore.Equal(cert.NotBefore) || !v.NotAfter.Equal(cert.NotAfter) || v.Revoked || v.Issuer.N != 1 || v.Issuer.State != ca.GenActive {
		t.Fatalf("view %+v", v)
	}
	if blocks := pemBlocks(t, v.ChainPEM); len(blocks) != 2 || !blocks[0].Equal(cert) || !blocks[1].Equal(c.Certificate()) {
		t.Fatalf("chain_pem holds %d certificates, want the device's and its issuer's", len(blocks))
	}
	if blocks := pemBlocks(t, v.CertificatePEM); len(blocks) != 1 || !blocks[0].Equal(cert) {
		t.Fatal("certificate_pem is not the device's certificate")
	}

	// PEM by query or by Accept; the same chain as the JSON form's.
	for name, req := range map[string]func(r *http.Request){
		"?format=pem": func(r *http.Request) { r.URL.RawQuery = "format=pem" },
		"Accept: application/pem-certificate-chain": func(r *http.Request) { r.Header.Set("Accept", "application/pem-certificate-chain") },
		"Accept: application/x-pem-file":            func(r *http.Request) { r.Header.Set("Accept", "text/html;q=0.5, application/x-pem-file") },
	} {
		r, _ := http.NewRequest("GET", srv.URL+"/api/v1/devices/"+id+"/certificate", nil)
		r.Header.Set("Authorization", "Bearer "+token)
		req(r)
		resp, err := srv.Client().Do(r)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/") || string(b) != v.ChainPEM {
			t.Errorf("%s: %d %s\n%s", name, resp.StatusCode, resp.Header.Get("Content-Type"), b)
		}
	}

	// openssl parses the export and verifies the device certificate with
	// the fleet CA, for either end of a TLS connection.
	if openssl, err := exec.LookPath("openssl"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("openssl not found (CI=true requires it)")
		}
		t.Log("openssl not found: not checked with it")
	} else {
		chain := filepath.Join(dir, "chain.pem")
		os.WriteFile(chain, []byte(v.ChainPEM), 0o644)
		caFile := filepath.Join(dir, "ca", ca.CertFile)
		for _, purpose := range []string{"sslclient", "sslserver"} {
			out, err := exec.Command(openssl, "verify", "-x509_strict", "-purpose", purpose, "-CAfile", caFile, chain).CombinedOutput()
			if err != nil || !strings.Contains(string(out), ": OK") {
				t.Errorf("openssl verify -purpose %s: %v\n%s", purpose, err, out)
			}
		}
		out, err := exec.Command(openssl, "x509", "-in", chain, "-noout", "-ext", "subjectAltName").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "URI:"+v.SPIFFEID) {
			t.Errorf("openssl x509 -ext subjectAltName: %v\n%s", err, out)
		}
	}

	// No kept certificate (issued before the fleet kept them), none at
	// all, no such device, a format that does not exist.
	old := &inventory.Device{ID: "00000000000000000000000000000001", State: inventory.StateActive}
	old.Issued("0a1b", time.Now(), time.Now().Add(time.Hour))
	pending := &inventory.Device{ID: "00000000000000000000000000000002", State: inventory.StatePending}
	for _, x := range []*inventory.Device{old, pending} {
		if err := inv.PutDevice(t.Context(), x); err != nil {
			t.Fatal(err)
		}
	}
	resp, body = call(t, srv, "GET", "/api/v1/devices/"+old.ID+"/certificate", token, "")
	wantProblem(t, resp, body, 404, "next renewal")
	resp, body = call(t, srv, "GET", "/api/v1/devices/"+pending.ID+"/certificate", token, "")
	wantProblem(t, resp, body, 404, "no certificate")
	resp, body = call(t, srv, "GET", "/api/v1/devices/ffffffffffffffffffffffffffffffff/certificate", token, "")
	wantProblem(t, resp, body, 404, "no device")
	resp, body = call(t, srv, "GET", "/api/v1/devices/"+id+"/certificate?format=der", token, "")
	wantProblem(t, resp, body, 400, "format")

	// Revoked shows.
	if err := inv.Update(t.Context(), id, func(x *inventory.Device) error { x.Revoke(x.CertSerial); return nil }); err != nil {
		t.Fatal(err)
	}
	_, body = call(t, srv, "GET", "/api/v1/devices/"+id+"/certificate", token, "")
	if err := json.Unmarshal([]byte(body), &v); err != nil || !v.Revoked {
		t.Fatalf("revoked certificate shown as %+v (%v)", v, err)
	}
}

func pemBlocks(t *testing.T, s string) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	rest := []byte(s)
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil || b.Type != "CERTIFICATE" {
			t.Fatalf("PEM block %s: %v", b.Type, err)
		}
		out = append(out, c)
	}
	if strings.TrimSpace(string(rest)) != "" {
		t.Fatalf("trailing bytes after the PEM blocks: %q", rest)
	}
	return out
}
