package api

import (
	"crypto/sha256"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"testing"

	"github.com/sigil-iot/sigil/fleet/inventory"
)

// TestDecommissionShutsEverySessionAndSerial: decommissioning closes the
// device's sessions even when its current serial was revoked already, and
// revokes every serial it still holds (a renewed-away one too).
func TestDecommissionShutsEverySessionAndSerial(t *testing.T) {
	inv, err := inventory.Open(filepath.Join(t.TempDir(), "inv.db"), inventory.WithNoSync())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inv.Close() })
	var disconnected []string
	sum := sha256.Sum256([]byte(token))
	srv := httptest.NewServer(New(Config{Inventory: inv, Approver: approver{inv}, AdminTokenHash: sum[:],
		Disconnect: func(id string) { disconnected = append(disconnected, id) }}))
	t.Cleanup(srv.Close)
	if err := inv.PutDevice(&inventory.Device{ID: "dev-a", State: inventory.StateActive, CertSerial: "0b", Superseded: []string{"0a"}}); err != nil {
		t.Fatal(err)
	}
	if err := inv.Revoke(inventory.Revocation{Serial: "0b", DeviceID: "dev-a", Reason: inventory.ReasonCertificateHold}); err != nil {
		t.Fatal(err)
	}
	resp, body := call(t, srv, "POST", "/api/v1/devices/dev-a/decommission", token, `{"comment":"retired"}`)
	if resp.StatusCode != 200 {
		t.Fatalf("decommission: %d %s", resp.StatusCode, body)
	}
	d, _ := inv.Device("dev-a")
	if d.State != inventory.StateDecommissioned || !d.IsRevoked("0a") || !d.IsRevoked("0b") {
		t.Fatalf("after decommission: state %s, 0a revoked %v, 0b revoked %v", d.State, d.IsRevoked("0a"), d.IsRevoked("0b"))
	}
	if !slices.Contains(disconnected, "dev-a") {
		t.Fatal("decommission left the device's sessions open")
	}
}
