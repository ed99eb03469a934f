package enroll_test

import (
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// TestModelIsTheFleets: the model a request names is recorded as the
// device's claim and nothing more. A device trusted by its EK certificate
// gets no model and no group; one enrolled with a token gets the token's
// grant; a known device keeps what the inventory holds, whatever it claims
// on re-enrolling.
func TestModelIsTheFleets(t *testing.T) {
	rec := record(t)
	h := sessionHarness(t, rec, 0)

	res := enrollAs(t, h, rec, "e-ekca", &rec.req) // claims "bench-gw"
	if res.Status != wire.StatusActive {
		t.Fatalf("enrollment: %+v", res)
	}
	d, err := h.inv.Device(t.Context(), res.DeviceID)
	if err != nil {
		t.Fatal(err)
	}
	if d.Model != "" || d.Group != "" || d.ClaimedModel != "bench-gw" {
		t.Fatalf("enrolled by EK certificate: model %q, group %q, claimed %q", d.Model, d.Group, d.ClaimedModel)
	}

	// An operator allowed to assign it does; re-enrolling with another
	// claim changes the claim only.
	if err := h.inv.Update(t.Context(), d.ID, func(d *inventory.Device) error { d.Model, d.Group = "gw-real", "lab"; return nil }); err != nil {
		t.Fatal(err)
	}
	other := rec.req
	other.Model = "vault-reader"
	if res := enrollAs(t, h, rec, "e-again", &other); res.Status != wire.StatusActive {
		t.Fatalf("re-enrollment: %+v", res)
	}
	if d, _ = h.inv.Device(t.Context(), d.ID); d.Model != "gw-real" || d.Group != "lab" || d.ClaimedModel != "vault-reader" {
		t.Fatalf("re-enrolled claiming another model: model %q, group %q, claimed %q", d.Model, d.Group, d.ClaimedModel)
	}
}

// TestTokenGrantsModelAndGroup: a new device enrolled with a token gets the
// model and group the token grants (the fleet minted them), and its own
// claim is kept as such.
func TestTokenGrantsModelAndGroup(t *testing.T) {
	rec := record(t)
	h := sessionHarness(t, rec, 0)
	secret, _, err := h.inv.CreateToken(t.Context(), inventory.Grant{Model: "bench-gw", Group: "vault"}, "ops", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	req := rec.req
	req.Token = secret
	res := enrollAs(t, h, rec, "e-token", &req)
	if res.Status != wire.StatusActive {
		t.Fatalf("enrollment: %+v", res)
	}
	d, err := h.inv.Device(t.Context(), res.DeviceID)
	if err != nil {
		t.Fatal(err)
	}
	if d.Model != "bench-gw" || d.Group != "vault" || d.ClaimedModel != "bench-gw" || d.Owner != "ops" || d.TrustPath != "token" {
		t.Fatalf("enrolled with a granting token: %+v", d)
	}
}

// TestPendingTokenRefusedUntilActivated: a token created pending (it
// grants a group under the two-person rule) enrolls nothing, not even a
// TPM another path would trust, and says why; once activated it grants
// what it was created with.
func TestPendingTokenRefusedUntilActivated(t *testing.T) {
	rec := record(t)
	h := sessionHarness(t, rec, 0)
	g := inventory.Grant{Model: "bench-gw", Group: "vault"}
	secret, tok, err := h.inv.CreatePendingToken(t.Context(), g, "ops", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	req := rec.req
	req.Token = secret
	res := enrollAs(t, h, rec, "e-pending", &req)
	if res.Status != wire.StatusRefused || res.Reason != wire.ReasonTokenInvalid || !strings.Contains(res.Message, "approval") {
		t.Fatalf("enrollment with a pending token: %+v", res)
	}
	if n, _ := h.inv.Counts(t.Context()); n[inventory.StateActive]+n[inventory.StatePending] != 0 {
		t.Fatalf("a pending token enrolled a device: %v", n)
	}
	if _, err := h.inv.ActivateToken(t.Context(), tok.ID, g); err != nil {
		t.Fatal(err)
	}
	res = enrollAs(t, h, rec, "e-approved", &req)
	if res.Status != wire.StatusActive {
		t.Fatalf("enrollment with the activated token: %+v", res)
	}
	if d, _ := h.inv.Device(t.Context(), res.DeviceID); d.Model != "bench-gw" || d.Group != "vault" {
		t.Fatalf("enrolled with the activated token: model %q, group %q", d.Model, d.Group)
	}
}
