package e2e

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/sim/harness"
)

// TestDeviceCertificateCLI: a device enrolled from its swtpm; `sigil
// devices cert ID --pem` exports its certificate chain, which openssl
// parses (the SPIFFE ID in the SAN) and verifies with the fleet CA for
// either end of a TLS connection, and `sigil devices cert ID -o json`
// shows the SPIFFE ID and the serial the device holds. After a forced
// rotation the export is the renewed certificate.
func TestDeviceCertificateCLI(t *testing.T) {
	requireTools(t)
	sigil, _ := buildBinaries(t)
	const td = "fleet.example.com"
	f := startFleet(t, withEKCA(t, func(c *server.Config) { c.TrustDomain = td }))
	d := startDevice(t, f, newTPM(t), harness.DeviceConfig{Tweak: func(c *agentConfig) { c.EventLog = "-" }})
	st := waitConnected(t, d)
	id := st.DeviceID
	dir := t.TempDir()
	cli := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		args = append(args, "--server", f.APIURL(), "--token", f.AdminToken(), "--ca", f.CACertPath())
		out, err := exec.CommandContext(ctx, sigil, args...).Output()
		if err != nil {
			t.Fatalf("sigil %s: %v\n%s", strings.Join(args[:3], " "), err, out)
		}
		return string(out)
	}
	export := func() api.DeviceCertificate {
		t.Helper()
		var v api.DeviceCertificate
		if err := json.Unmarshal([]byte(cli("devices", "cert", id, "-o", "json")), &v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	check := func(serial string) {
		t.Helper()
		v := export()
		if v.DeviceID != id || v.SPIFFEID != "spiffe://"+td+"/device/"+id || v.Serial != serial || v.Revoked {
			t.Fatalf("export %+v, want serial %s", v, serial)
		}
		chain := filepath.Join(dir, "chain.pem")
		if err := os.WriteFile(chain, []byte(cli("devices", "cert", id, "--pem")), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command("openssl", "x509", "-in", chain, "-noout", "-serial", "-ext", "subjectAltName").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "URI:"+v.SPIFFEID) || !strings.Contains(strings.ToLower(string(out)), "serial="+strings.TrimLeft(serial, "0")) {
			t.Fatalf("openssl x509 of the exported chain: %v\n%s", err, out)
		}
		for _, purpose := range []string{"sslclient", "sslserver"} {
			out, err := exec.Command("openssl", "verify", "-x509_strict", "-purpose", purpose, "-CAfile", f.CACertPath(), chain).CombinedOutput()
			if err != nil || !strings.Contains(string(out), ": OK") {
				t.Fatalf("openssl verify -purpose %s of the exported certificate: %v\n%s", purpose, err, out)
			}
		}
	}
	if st.CertSerial == "" {
		t.Fatal("the device reports no certificate serial")
	}
	check(st.CertSerial)

	// A forced rotation: the device renews, and the export follows.
	cli("devices", "rotate", id)
	st2, err := d.Wait(context.Background(), 30*time.Second, func(s agentStatus) bool {
		return s.Connected && s.CertSerial != "" && s.CertSerial != st.CertSerial
	})
	if err != nil {
		t.Fatal(err)
	}
	check(st2.CertSerial)
	table := cli("devices", "cert", id)
	if !strings.Contains(table, "spiffe://"+td+"/device/"+id) || !strings.Contains(table, st2.CertSerial) {
		t.Fatalf("sigil devices cert:\n%s", table)
	}
}
