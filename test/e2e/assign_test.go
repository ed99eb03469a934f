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
	"github.com/sigil-iot/sigil/fleet/approval"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/secrets"
	"github.com/sigil-iot/sigil/fleet/server"
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
	secret, _, err := f.Auth.CreateToken(t.Context(), u.Name, "e2e", role, time.Hour)
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

// heldToken is an enrollment token as created under the two-person rule.
type heldToken struct {
	ID       string            `json:"id"`
	Token    string            `json:"token"`
	Group    string            `json:"group"`
	Pending  bool              `json:"pending"`
	Approval *approval.Request `json:"approval"`
}

// TestTwoPersonRuleHoldsSecretSteering: with two_person_rule on, moving a
// device into a secret's group and minting a token that grants one are
// secret-level actions held for a second person, as storing the secret
// is. A security admin alone files the move (202) and it does nothing:
// the device stays out of the group and the group's secret never reaches
// it (a real swtpm device running sigild), and they cannot approve it
// themselves. A token granting the group is created pending: its secret
// is shown once, and a device enrolling with it is refused until a
// second security admin approves. Once the second person approves, the
// move is carried out and the token works: both devices get the secret.
func TestTwoPersonRuleHoldsSecretSteering(t *testing.T) {
	f := startFleet(t, func(c *server.Config) { c.TwoPersonRule = true }) // no manufacturer CA: devices enroll with tokens
	tap := tapDeliveries(t, f)
	admin, _ := f.Client()
	ctx := context.Background()
	// Two security admins whose accounts predate every request.
	person := func(name string) *api.Client {
		if _, err := f.Auth.CreateUser(ctx, name, name+"'s long password", auth.RoleSecurityAdmin); err != nil {
			t.Fatal(err)
		}
		secret, _, err := f.Auth.CreateToken(ctx, name, "e2e", auth.RoleSecurityAdmin, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		c := api.NewClient(f.APIURL(), secret, nil)
		c.HTTP = admin.HTTP
		c.Justification = "e2e: steering secrets needs two people"
		return c
	}
	sam, ada := person("sam"), person("ada")
	approve := func(id string) {
		t.Helper()
		var r approval.Request
		if err := ada.Do(ctx, http.MethodPost, "/api/v1/approvals/"+id+"/approve", api.DecisionRequest{Comment: "checked"}, &r); err != nil || r.State != approval.StateExecuted {
			t.Fatalf("second person approves %s: %+v %v", id, r, err)
		}
	}
	filed := func(what string, err error, kind approval.Kind) string {
		t.Helper()
		var pe *api.PendingError
		if !errors.As(err, &pe) || pe.Pending.Approval.Kind != kind || pe.Pending.Approval.State != approval.StatePending {
			t.Fatalf("%s under two_person_rule: %v, want 202 with a pending %s request", what, err, kind)
		}
		return pe.Pending.Approval.ID
	}
	_, err := sam.PutSecret(ctx, "vault-key", []byte("group secret"), secrets.Target{Group: "vault"}, false)
	approve(filed("storing the group's secret", err, approval.KindSecretChange))

	// A token that grants nothing is not held; a device enrolls with it.
	var plain heldToken
	if err := sam.Do(ctx, http.MethodPost, "/api/v1/enrollment-tokens", map[string]string{"owner": "ops"}, &plain); err != nil || plain.Pending || plain.Approval != nil {
		t.Fatalf("plain token: %+v %v", plain, err)
	}
	d := startDevice(t, f, newTPM(t), harness.DeviceConfig{Token: plain.Token})
	id := waitConnected(t, d).DeviceID

	// Sam alone moves it into the secret's group: filed, not done.
	move := filed("moving a device into a group", sam.Do(ctx, http.MethodPatch, "/api/v1/devices/"+id, map[string]any{"group": "vault", "owner": "vault-team"}, nil), approval.KindDeviceAssign)
	if dev, _ := admin.Device(ctx, id); dev.Group != "" || dev.Owner != "ops" {
		t.Fatalf("the held move changed the device: group %q owner %q", dev.Group, dev.Owner)
	}
	wantStatus(t, "sam approves his own move", sam.Do(ctx, http.MethodPost, "/api/v1/approvals/"+move+"/approve", api.DecisionRequest{}, nil), http.StatusForbidden)
	// A model is held the same way.
	filed("giving a device a model", sam.Do(ctx, http.MethodPatch, "/api/v1/devices/"+id, map[string]any{"model": "gw-1"}, nil), approval.KindDeviceAssign)
	// The device says hello again: what reaches it is its own secret, never the group's.
	_, err = sam.PutSecret(ctx, "own-key", []byte("its own"), secrets.Target{Device: id}, false)
	approve(filed("storing the device's secret", err, approval.KindSecretChange))
	f.Broker.Disconnect(id)
	waitAcked(t, admin, id, "own-key", 1)
	for _, m := range tap.to(id) {
		if m.Name != "own-key" {
			t.Fatalf("secret %q delivered to a device one person moved", m.Name)
		}
	}

	// A token granting the group is created pending: shown once, refused
	// at enrollment until approved.
	var granted heldToken
	if err := sam.Do(ctx, http.MethodPost, "/api/v1/enrollment-tokens", map[string]string{"group": "vault", "owner": "ops"}, &granted); err != nil {
		t.Fatal(err)
	}
	if granted.Token == "" || !granted.Pending || granted.Approval == nil || granted.Approval.Kind != approval.KindGrantingToken ||
		strings.Contains(string(granted.Approval.Params), granted.Token) {
		t.Fatalf("a token granting a group under two_person_rule: %+v", granted)
	}
	d2 := startDevice(t, f, newTPM(t), harness.DeviceConfig{Token: granted.Token})
	waitReason(t, d2, "token_invalid")

	// The second person approves: the move is carried out, the token works.
	approve(move)
	if dev, _ := admin.Device(ctx, id); dev.Group != "vault" || dev.Owner != "vault-team" || dev.Model != "" {
		t.Fatalf("after approval: group %q owner %q model %q", dev.Group, dev.Owner, dev.Model)
	}
	f.Broker.Disconnect(id)
	waitAcked(t, admin, id, "vault-key", 1)
	approve(granted.Approval.ID)
	id2 := waitConnected(t, d2).DeviceID
	if dev, _ := admin.Device(ctx, id2); dev.Group != "vault" {
		t.Fatalf("device enrolled with the approved token: group %q", dev.Group)
	}
	waitAcked(t, admin, id2, "vault-key", 1)
}
