package e2e

import (
	"context"
	"errors"
	"maps"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/secrets"
	"github.com/sigil-iot/sigil/sim/harness"
)

// wantStatus fails unless err is an API answer with status want.
func wantStatus(t testing.TB, what string, err error, want int) {
	t.Helper()
	var se *api.StatusError
	if !errors.As(err, &se) || se.Status != want {
		t.Fatalf("%s: %v, want %d", what, err, want)
	}
}

// roleClient is an API client for a new user of role, through an API token.
func roleClient(t testing.TB, f *harness.Fleet, admin *api.Client, name string, role auth.Role) *api.Client {
	t.Helper()
	u, err := admin.CreateUser(context.Background(), api.UserRequest{Name: name, Role: role})
	if err != nil {
		t.Fatal(err)
	}
	secret, _, err := f.Auth.CreateToken(u.Name, "e2e", role, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c := api.NewClient(f.APIURL(), secret, nil)
	c.HTTP = admin.HTTP
	return c
}

// assign has the fleet's administrator assign a device's model (and the
// group, when not ""): a device enrolled by its EK certificate has none,
// whatever it claims.
func assign(t testing.TB, c *api.Client, id, model, group string) {
	t.Helper()
	body := map[string]string{"model": model}
	if group != "" {
		body["group"] = group
	}
	if err := c.Do(context.Background(), http.MethodPatch, "/api/v1/devices/"+id, body, nil); err != nil {
		t.Fatalf("assigning device %s model %q: %v", id, model, err)
	}
}

// TestOperatorCannotSteerSecrets is the path by which an operator read
// secrets (issue 11, item 3): mint an enrollment token for a model or
// group, enroll any TPM (a real swtpm running sigild), move it into a
// secret's group, and unseal what the fleet delivers. Each secret-level
// step is refused to the operator: minting a token that grants a model or
// group, and changing a device's model or group. The model a device claims
// is recorded as its claim and targets nothing. A security admin's token
// with a group does place the device in it, and the group's secret
// arrives.
func TestOperatorCannotSteerSecrets(t *testing.T) {
	f := startFleet(t, nil) // no manufacturer CA: devices enroll with tokens
	tap := tapDeliveries(t, f)
	admin, _ := f.Client()
	ctx := context.Background()
	op := roleClient(t, f, admin, "olga", auth.RoleOperator)
	sec := roleClient(t, f, admin, "sam", auth.RoleSecurityAdmin)

	if _, err := sec.PutSecret(ctx, "vault-key", []byte("group secret"), secrets.Target{Group: "vault"}, false); err != nil {
		t.Fatal(err)
	}
	if _, err := sec.PutSecret(ctx, "gw-key", []byte("model secret"), secrets.Target{Model: "gw-1"}, false); err != nil {
		t.Fatal(err)
	}

	// The first secret-level step of the old path: refused.
	for _, body := range []map[string]string{{"model": "gw-1"}, {"group": "vault"}, {"model": "gw-1", "group": "vault", "owner": "ops"}} {
		var out api.TokenResponse
		wantStatus(t, "operator mints a token granting "+mapKeys(body), op.Do(ctx, http.MethodPost, "/api/v1/enrollment-tokens", body, &out), http.StatusForbidden)
		if out.Token != "" {
			t.Fatal("a refused mint returned a token")
		}
	}

	// A plain token still enrolls any TPM, as an operator's job needs ...
	var plain api.TokenResponse
	if err := op.Do(ctx, http.MethodPost, "/api/v1/enrollment-tokens", map[string]string{"owner": "ops"}, &plain); err != nil {
		t.Fatal(err)
	}
	d := startDevice(t, f, newTPM(t), harness.DeviceConfig{Token: plain.Token}) // claims model gw-1
	id := waitConnected(t, d).DeviceID
	dev, err := admin.Device(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	// ... but the model it claims is only a claim.
	if dev.Model != "" || dev.ClaimedModel != "gw-1" || dev.Group != "" {
		t.Fatalf("device enrolled with a plain token: model %q (claimed %q), group %q", dev.Model, dev.ClaimedModel, dev.Group)
	}
	// Moving it into the secret's group, or giving it the secret's model,
	// is refused; its owner and tags stay the operator's to change.
	for _, body := range []map[string]any{{"group": "vault"}, {"model": "gw-1"}, {"owner": "ops", "group": "vault"}} {
		wantStatus(t, "operator assigns "+mapKeys(body), op.Do(ctx, http.MethodPatch, "/api/v1/devices/"+id, body, nil), http.StatusForbidden)
	}
	if err := op.Do(ctx, http.MethodPatch, "/api/v1/devices/"+id, map[string]any{"owner": "ops", "group": "", "tags": []string{"site:lab"}}, nil); err != nil {
		t.Fatalf("operator edits owner and tags (group unchanged): %v", err)
	}
	if dev, _ = admin.Device(ctx, id); dev.Group != "" || dev.Owner != "ops" {
		t.Fatalf("after the refused moves: %+v", dev.Device)
	}

	// The delivery pipeline works for this device (a secret for it by ID
	// arrives), and nothing else was ever sent to it.
	if _, err := sec.PutSecret(ctx, "own-key", []byte("its own"), secrets.Target{Device: id}, false); err != nil {
		t.Fatal(err)
	}
	waitAcked(t, admin, id, "own-key", 1)
	for _, m := range tap.to(id) {
		if m.Name != "own-key" {
			t.Fatalf("secret %q delivered to a device an operator enrolled", m.Name)
		}
	}

	// The security admin's token grants the group: that device gets the
	// group's secret (and the granted model's).
	var granted api.TokenResponse
	if err := sec.Do(ctx, http.MethodPost, "/api/v1/enrollment-tokens", map[string]string{"model": "gw-1", "group": "vault"}, &granted); err != nil {
		t.Fatalf("security admin mints a token with a group: %v", err)
	}
	d2 := startDevice(t, f, newTPM(t), harness.DeviceConfig{Token: granted.Token})
	id2 := waitConnected(t, d2).DeviceID
	if dev, _ := admin.Device(ctx, id2); dev.Model != "gw-1" || dev.Group != "vault" {
		t.Fatalf("device enrolled with a granting token: %+v", dev.Device)
	}
	waitAcked(t, admin, id2, "vault-key", 1)
	waitAcked(t, admin, id2, "gw-key", 1)
	// And the security admin may move a device: the group's secret reaches
	// it once it says hello again.
	if err := sec.Do(ctx, http.MethodPatch, "/api/v1/devices/"+id, map[string]any{"group": "vault"}, nil); err != nil {
		t.Fatalf("security admin moves a device: %v", err)
	}
	f.Broker.Disconnect(id)
	waitAcked(t, admin, id, "vault-key", 1)
}

func mapKeys[V any](m map[string]V) string {
	ks := slices.Sorted(maps.Keys(m))
	return "{" + strings.Join(ks, ",") + "}"
}
