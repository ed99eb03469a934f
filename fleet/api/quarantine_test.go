package api

import (
	"strings"
	"testing"

	"github.com/sigil-iot/sigil/fleet/governance"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/inventory/inventorytest"
)

// TestQuarantineOnRequest: POST /api/v1/devices/{id}/quarantine needs a
// justification and an active device; it quarantines through the
// Quarantiner (governance's, over the real inventory: state, revoked
// certificate, event with who and why); without one it answers 501.
func TestQuarantineOnRequest(t *testing.T) {
	inv := inventorytest.Open(t)
	var disconnected []string
	srv := serve(t, Config{Inventory: inv, Approver: approver{inv}, Quarantiner: governance.InventoryQuarantiner{Inventory: inv, Disconnect: func(id string) { disconnected = append(disconnected, id) }}})
	for _, d := range []*inventory.Device{
		{ID: "dev-a", State: inventory.StateActive, CertSerial: "0a"},
		{ID: "dev-p", State: inventory.StatePending},
	} {
		if err := inv.PutDevice(t.Context(), d); err != nil {
			t.Fatal(err)
		}
	}
	resp, body := call(t, srv, "POST", "/api/v1/devices/dev-a/quarantine", token, `{"justification":"  "}`)
	wantProblem(t, resp, body, 400, "justification")
	resp, body = call(t, srv, "POST", "/api/v1/devices/dev-a/quarantine", token, `{"justification":"`+strings.Repeat("x", 501)+`"}`)
	wantProblem(t, resp, body, 400, "justification")
	resp, body = call(t, srv, "POST", "/api/v1/devices/dev-p/quarantine", token, `{"justification":"odd traffic"}`)
	wantProblem(t, resp, body, 409, "only an active device")
	resp, body = call(t, srv, "POST", "/api/v1/devices/nope/quarantine", token, `{"justification":"odd traffic"}`)
	wantProblem(t, resp, body, 404, "no device")
	if d, _ := inv.Device(t.Context(), "dev-a"); d.State != inventory.StateActive || len(disconnected) != 0 {
		t.Fatalf("refused requests changed the device: %s, disconnected %v", d.State, disconnected)
	}

	resp, body = call(t, srv, "POST", "/api/v1/devices/dev-a/quarantine", token, `{"justification":"odd   traffic\nto 203.0.113.9"}`)
	if resp.StatusCode != 200 || !strings.Contains(body, `"state":"quarantined"`) {
		t.Fatalf("quarantine: %d %s", resp.StatusCode, body)
	}
	d, _ := inv.Device(t.Context(), "dev-a")
	if d.State != inventory.StateQuarantined || !d.IsRevoked("0a") || len(disconnected) != 1 {
		t.Fatalf("after quarantine: %+v, disconnected %v", d, disconnected)
	}
	evs, _ := inv.Events(t.Context(), "dev-a", 10)
	if len(evs) == 0 || !strings.Contains(evs[0].Detail, "quarantined by admin: odd traffic to 203.0.113.9") {
		t.Fatalf("events %+v", evs)
	}
	resp, body = call(t, srv, "POST", "/api/v1/devices/dev-a/quarantine", token, `{"justification":"again"}`)
	wantProblem(t, resp, body, 409, "quarantined")

	srv2 := serve(t, Config{Inventory: inv, Approver: approver{inv}})
	resp, body = call(t, srv2, "POST", "/api/v1/devices/dev-a/quarantine", token, `{"justification":"odd traffic"}`)
	wantProblem(t, resp, body, 501, "not available")
}
