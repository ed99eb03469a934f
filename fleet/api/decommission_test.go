package api

import (
	"crypto/x509"
	"encoding/hex"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/inventory/inventorytest"
)

// TestDecommissionShutsEverySessionAndSerial: decommissioning closes the
// device's sessions even when its current serial was revoked already, and
// revokes every serial it still holds (a renewed-away one too).
func TestDecommissionShutsEverySessionAndSerial(t *testing.T) {
	inv := inventorytest.Open(t)
	var disconnected []string
	srv := serve(t, Config{Inventory: inv, Approver: approver{inv}, Disconnect: func(id string) { disconnected = append(disconnected, id) }})
	if err := inv.PutDevice(t.Context(), &inventory.Device{ID: "dev-a", State: inventory.StateActive, CertSerial: "0b", Superseded: []string{"0a"}}); err != nil {
		t.Fatal(err)
	}
	if err := inv.Update(t.Context(), "dev-a", func(d *inventory.Device) error {
		d.RevokeSerial("0b", inventory.ReasonCertificateHold, time.Now())
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	resp, body := call(t, srv, "POST", "/api/v1/devices/dev-a/decommission", token, `{"comment":"retired"}`)
	if resp.StatusCode != 200 {
		t.Fatalf("decommission: %d %s", resp.StatusCode, body)
	}
	d, _ := inv.Device(t.Context(), "dev-a")
	if d.State != inventory.StateDecommissioned || !d.IsRevoked("0a") || !d.IsRevoked("0b") {
		t.Fatalf("after decommission: state %s, 0a revoked %v, 0b revoked %v", d.State, d.IsRevoked("0a"), d.IsRevoked("0b"))
	}
	if !slices.Contains(disconnected, "dev-a") {
		t.Fatal("decommission left the device's sessions open")
	}
}

// TestRevokeRevokesEverySerial: an operator's revocation of a device
// revokes every certificate it holds that has not expired (a renewed-away
// one too, which used to stay admitted), lists each in the CRL and closes
// the device's sessions; an expired certificate is left as it is.
func TestRevokeRevokesEverySerial(t *testing.T) {
	dir := t.TempDir()
	inv := inventorytest.Open(t)
	fleetCA, err := ca.Open(ca.Config{Dir: filepath.Join(dir, "ca"), TrustDomain: "test.local"})
	if err != nil {
		t.Fatal(err)
	}
	var disconnected []string
	srv := serve(t, Config{Inventory: inv, Approver: approver{inv}, CA: fleetCA,
		Disconnect: func(id string) { disconnected = append(disconnected, id) }})
	now := time.Now()
	if err := inv.PutDevice(t.Context(), &inventory.Device{ID: "dev-a", State: inventory.StateActive, CertSerial: "0c", CertExpiry: now.Add(time.Hour),
		Certs: []inventory.Cert{{Serial: "0a", NotAfter: now.Add(-time.Minute)}, {Serial: "0b", NotAfter: now.Add(30 * time.Minute)}, {Serial: "0c", NotAfter: now.Add(time.Hour)}}}); err != nil {
		t.Fatal(err)
	}
	resp, body := call(t, srv, "POST", "/api/v1/devices/dev-a/revoke", token, `{"reason":"keyCompromise","comment":"stolen"}`)
	if resp.StatusCode != 200 {
		t.Fatalf("revoke: %d %s", resp.StatusCode, body)
	}
	d, _ := inv.Device(t.Context(), "dev-a")
	if !d.IsRevoked("0b") || !d.IsRevoked("0c") {
		t.Fatalf("after the revocation: renewed-away 0b revoked %v, current 0c revoked %v", d.IsRevoked("0b"), d.IsRevoked("0c"))
	}
	if d.Admits("0b", now) || d.Admits("0c", now) {
		t.Fatal("a revoked certificate is still admitted")
	}
	if d.State != inventory.StateActive {
		t.Fatalf("a revocation changed the state to %s", d.State)
	}
	if !slices.Contains(disconnected, "dev-a") {
		t.Fatal("the revocation left the device's sessions open")
	}
	resp, body = call(t, srv, "GET", "/api/v1/crl", "", "")
	if resp.StatusCode != 200 {
		t.Fatalf("crl: %d", resp.StatusCode)
	}
	crl, err := x509.ParseRevocationList([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]int{}
	for _, e := range crl.RevokedCertificateEntries {
		listed[hex.EncodeToString(e.SerialNumber.Bytes())] = e.ReasonCode
	}
	for _, s := range []string{"0b", "0c"} {
		if code, ok := listed[s]; !ok || code != inventory.ReasonKeyCompromise {
			t.Errorf("serial %s in the CRL: %v (reason %d)", s, ok, code)
		}
	}
	if _, ok := listed["0a"]; ok {
		t.Error("the expired certificate 0a was revoked")
	}

	// Again: nothing is left to revoke, and the sessions are closed anyway.
	disconnected = nil
	if resp, body = call(t, srv, "POST", "/api/v1/devices/dev-a/revoke", token, `{}`); resp.StatusCode != 200 {
		t.Fatalf("revoke again: %d %s", resp.StatusCode, body)
	}
	if !slices.Contains(disconnected, "dev-a") {
		t.Fatal("revoking again left the device's sessions open")
	}
}
