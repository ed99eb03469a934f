package e2e

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/device/agent"

	"github.com/sigil-iot/sigil/device/state"
	"github.com/sigil-iot/sigil/device/tpm"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/pkg/identity"
	"github.com/sigil-iot/sigil/sim/harness"
	"github.com/sigil-iot/sigil/sim/swtpm/swtpmtest"
)

// TestEnrollByEKChain is the main path: the fleet trusts the TPM vendor's CA,
// the device enrolls from its EK certificate, receives a certificate for its
// TPM-resident key and reconnects with mTLS. Independent tools then check
// what the fleet and device claim.
func TestEnrollByEKChain(t *testing.T) {
	f := startFleet(t, func(c *server.Config) { c.EKCADir = ekCADir(t, vendorCA(t)) })
	inst := newTPM(t)
	dir := t.TempDir()
	d := startDevice(t, f, inst, harness.DeviceConfig{Dir: dir, Serial: "SN-CHAIN"})
	st := waitConnected(t, d)

	client, err := f.Client()
	if err != nil {
		t.Fatal(err)
	}
	dev, err := client.Device(context.Background(), st.DeviceID)
	if err != nil {
		t.Fatal(err)
	}
	// The model it claims is recorded as a claim: the fleet assigns models.
	if dev.State != "active" || dev.TrustPath != "ek-ca" || dev.Serial != "SN-CHAIN" || dev.Model != "" || dev.ClaimedModel != "gw-1" || !dev.Connected {
		t.Fatalf("device via API = %+v", dev)
	}
	if dev.CertSerial != st.CertSerial || time.Until(dev.CertExpiry) < 23*time.Hour {
		t.Fatalf("certificate: api %s %v, device %s", dev.CertSerial, dev.CertExpiry, st.CertSerial)
	}

	// The device ID is derived from the EK the TPM reports.
	d.Stop()
	tp, err := tpm.Open(inst.URI())
	if err != nil {
		t.Fatal(err)
	}
	ek, err := tp.EK()
	tp.Close()
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := identity.DeviceID(ek.Key); want != st.DeviceID {
		t.Fatalf("device ID %s, derived from EK %s", st.DeviceID, want)
	}

	// The certificate verifies with openssl against the fleet CA and carries
	// the SPIFFE ID.
	s, err := state.Open(filepath.Join(dir, "state.db"), state.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	id, err := s.Identity()
	s.Close()
	if err != nil {
		t.Fatal(err)
	}
	certFile := filepath.Join(t.TempDir(), "device.pem")
	writePEM(t, certFile, "CERTIFICATE", id.Cert)
	out := mustRun(t, "openssl", "verify", "-CAfile", f.CACertPath(), "-purpose", "sslclient", certFile)
	if !strings.Contains(out, ": OK") {
		t.Fatalf("openssl verify: %s", out)
	}
	text := mustRun(t, "openssl", "x509", "-in", certFile, "-noout", "-text")
	if !strings.Contains(text, "URI:spiffe://sigil.local/device/"+st.DeviceID) {
		t.Fatalf("certificate lacks the SPIFFE URI SAN:\n%s", text)
	}

	// Its public key is the TPM transport key, read back by tpm2-tools from
	// the same swtpm.
	pubPEM := swtpmtest.ReadPublicPEM(t, inst, id.TK.Public, id.TK.Private)
	blk, _ := pem.Decode(pubPEM)
	if blk == nil {
		t.Fatalf("tpm2_readpublic output is not PEM: %q", pubPEM)
	}
	tpmKey, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(id.Cert)
	if !cert.PublicKey.(*ecdsa.PublicKey).Equal(tpmKey) {
		t.Fatal("certificate key differs from the TPM transport key")
	}
	// Nothing exportable was stored: the state holds only TPM-wrapped blobs.
	raw, _ := os.ReadFile(filepath.Join(dir, "state.db"))
	if bytes.Contains(raw, []byte("PRIVATE KEY")) {
		t.Fatal("state store holds a PEM private key")
	}
}

func TestEnrollByAllowList(t *testing.T) {
	inst := newTPM(t)
	tp, err := tpm.Open(inst.URI())
	if err != nil {
		t.Fatal(err)
	}
	ek, err := tp.EK()
	tp.Close()
	if err != nil {
		t.Fatal(err)
	}
	fp, _ := identity.Fingerprint(ek.Key)
	list := filepath.Join(t.TempDir(), "allow.txt")
	os.WriteFile(list, []byte("# vendor shipment 42\n"+strings.ToUpper(fp)+"\n"), 0o644)
	// No EK CA: only the allow-list can admit this EK.
	f := startFleet(t, func(c *server.Config) { c.EKAllowList = list })
	st := waitConnected(t, startDevice(t, f, inst, harness.DeviceConfig{}))
	dev, err := f.Inv.Device(t.Context(), st.DeviceID)
	if err != nil || dev.TrustPath != "allowlist" || dev.State != inventory.StateActive || dev.EKFingerprint != fp {
		t.Fatalf("device = %+v, %v", dev, err)
	}
}

func TestEnrollByToken(t *testing.T) {
	f := startFleet(t, nil)
	client, _ := f.Client()
	tok, err := client.CreateToken(context.Background(), "gw-1", "plant-a", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokenFile, []byte(tok.Token+"\n"), 0o600)
	d := startDevice(t, f, newTPM(t), harness.DeviceConfig{Tweak: func(c *agentConfig) { c.TokenFile = tokenFile }})
	st := waitConnected(t, d)
	dev, err := f.Inv.Device(t.Context(), st.DeviceID)
	if err != nil || dev.TrustPath != "token" || dev.Owner != "plant-a" || dev.State != inventory.StateActive {
		t.Fatalf("device = %+v, %v", dev, err)
	}
	// The token's secret is not stored by the fleet, only its hash.
	raw, _ := os.ReadFile(filepath.Join(f.Config.DataDir, server.InventoryFile))
	if bytes.Contains(raw, []byte(tok.Token)) {
		t.Fatal("inventory stores the token secret")
	}
}

func TestEnrollByApproval(t *testing.T) {
	f := startFleet(t, func(c *server.Config) { c.ManualApproval = true })
	d := startDevice(t, f, newTPM(t), harness.DeviceConfig{Tweak: func(c *agentConfig) { c.PendingRetry = agent.Duration(time.Minute) }})
	st, err := d.Wait(context.Background(), 30*time.Second, func(s agentStatus) bool { return s.Enrollment == "pending" })
	if err != nil {
		t.Fatal(err)
	}
	client, _ := f.Client()
	list, err := client.Devices(context.Background(), "pending")
	if err != nil || len(list.Devices) != 1 {
		t.Fatalf("pending devices = %+v, %v", list, err)
	}
	id := list.Devices[0].ID
	if st.DeviceID != "" && st.DeviceID != id {
		t.Fatalf("device reports %s, fleet %s", st.DeviceID, id)
	}
	// The device is not connected with a certificate while pending.
	if f.Broker.Connected(id) {
		t.Fatal("pending device holds a device session")
	}
	if _, err := client.Approve(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	// PendingRetry is a minute: enrolling now proves the fleet's retry nudge works.
	st = waitConnected(t, d)
	dev, _ := f.Inv.Device(t.Context(), st.DeviceID)
	if st.DeviceID != id || dev.State != inventory.StateActive || dev.TrustPath != "approval" {
		t.Fatalf("after approval: status %+v, device %+v", st, dev)
	}
	if _, err := client.Approve(context.Background(), id); err == nil {
		t.Fatal("approving an active device succeeded")
	}
	_ = hex.EncodeToString
}
