package api

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/approval"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/inventory"
)

// steerFixture is an API under the two-person rule with one device, the
// security admin "sec" (a token of theirs) and root (the admin) to
// approve.
type steerFixture struct {
	*opsFixture
	inv  *inventory.Store
	sec  string // sec's security-admin token
	root string // root's admin token
}

const steerDevice = "0123456789abcdef0123456789abcdef"

func newSteerFixture(t *testing.T) *steerFixture {
	t.Helper()
	f := newOpsFixture(t, true)
	inv := f.inv
	if err := inv.PutDevice(t.Context(), &inventory.Device{ID: steerDevice, State: inventory.StateActive}); err != nil {
		t.Fatal(err)
	}
	return &steerFixture{opsFixture: f, inv: inv, sec: f.scopedOf(t, "sec", auth.RoleSecurityAdmin), root: f.scoped[auth.RoleAdmin]}
}

// decide approves (or rejects, with a reason) request id with tok.
func (f *steerFixture) decide(t *testing.T, tok, id, verb string) (int, approval.Request) {
	t.Helper()
	body := DecisionRequest{}
	if verb == "reject" {
		body.Reason = "no"
	}
	resp, b := f.do(t, "POST", "/api/v1/approvals/"+id+"/"+verb, tok, body)
	var r approval.Request
	_ = json.Unmarshal([]byte(b), &r)
	return resp.StatusCode, r
}

func (f *steerFixture) device(t *testing.T) *inventory.Device {
	t.Helper()
	d, err := f.inv.Device(t.Context(), steerDevice)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestDeviceMoveNeedsASecondPerson: under the two-person rule a PATCH that
// moves a device into another model or group is filed (202) and changes
// nothing until someone other than the requester approves; then the whole
// PATCH is carried out, as the requester. A change that moves nothing
// acts at once. A rejected move, or one whose requester lost the
// permission before the approval, leaves the device as it was.
func TestDeviceMoveNeedsASecondPerson(t *testing.T) {
	f := newSteerFixture(t)
	path := "/api/v1/devices/" + steerDevice
	file := func(body any) approval.Request {
		t.Helper()
		resp, b := f.do(t, "PATCH", path, f.sec, body, JustificationHeader, "the vault pilot")
		var p Pending
		if err := json.Unmarshal([]byte(b), &p); resp.StatusCode != http.StatusAccepted || err != nil ||
			p.Approval.Kind != approval.KindDeviceAssign || p.Approval.State != approval.StatePending || p.Approval.Justification != "the vault pilot" {
			t.Fatalf("a move under two_person_rule: %d %s", resp.StatusCode, b)
		}
		return p.Approval
	}

	req := file(map[string]any{"group": "vault", "model": "gw-1", "owner": "vault-team", "tags": []string{"pilot"}})
	if d := f.device(t); d.Group != "" || d.Model != "" || d.Owner != "" || len(d.Tags) != 0 {
		t.Fatalf("a held move changed the device: %+v", d)
	}
	if !strings.Contains(req.Target, steerDevice) || !strings.Contains(req.Target, `group "vault"`) || !strings.Contains(req.Target, `model "gw-1"`) {
		t.Fatalf("target %q does not say what moves where", req.Target)
	}
	if code, _ := f.decide(t, f.sec, req.ID, "approve"); code != http.StatusForbidden {
		t.Fatalf("the requester approves their own move: %d", code)
	}
	if code, r := f.decide(t, f.root, req.ID, "approve"); code != http.StatusOK || r.State != approval.StateExecuted {
		t.Fatalf("a second person approves: %d %+v", code, r)
	}
	if d := f.device(t); d.Group != "vault" || d.Model != "gw-1" || d.Owner != "vault-team" || len(d.Tags) != 1 {
		t.Fatalf("after approval: %+v", d)
	}

	// What moves nothing needs no one else.
	for _, body := range []map[string]any{{"owner": "ops"}, {"group": "vault", "tags": []string{"a", "b"}}} {
		if resp, b := f.do(t, "PATCH", path, f.sec, body); resp.StatusCode != http.StatusOK {
			t.Fatalf("PATCH %v moving nothing: %d %s", body, resp.StatusCode, b)
		}
	}

	// Rejected: nothing changes.
	req = file(map[string]any{"group": "elsewhere"})
	if code, r := f.decide(t, f.root, req.ID, "reject"); code != http.StatusOK || r.State != approval.StateRejected {
		t.Fatalf("reject: %d %+v", code, r)
	}
	// The requester loses secrets.write before the approval: it fails.
	req = file(map[string]any{"model": "gw-2"})
	operator := auth.RoleOperator
	if _, err := f.auth.ChangeUserAs(t.Context(), authenticate(t, f.auth, f.root), "sec", auth.UserChange{Role: &operator}); err != nil {
		t.Fatal(err)
	}
	if code, r := f.decide(t, f.root, req.ID, "approve"); code != http.StatusOK || r.State != approval.StateFailed {
		t.Fatalf("approving the move of a requester who lost the permission: %d %+v", code, r)
	}
	if d := f.device(t); d.Group != "vault" || d.Model != "gw-1" {
		t.Fatalf("a rejected or failed move changed the device: %+v", d)
	}
}

// TestGrantingTokenNeedsASecondPerson: under the two-person rule an
// enrollment token that grants a model or group is created pending: its
// secret is shown once (never kept in the request) and no device enrolls
// with it until someone other than the requester approves. A token that
// grants nothing is not held.
func TestGrantingTokenNeedsASecondPerson(t *testing.T) {
	f := newSteerFixture(t)
	resp, b := f.do(t, "POST", "/api/v1/enrollment-tokens", f.sec, EnrollmentTokenRequest{Group: "vault", Model: "gw-1", Owner: "ops"})
	var tok TokenResponse
	if err := json.Unmarshal([]byte(b), &tok); resp.StatusCode != http.StatusCreated || err != nil || !tok.Pending || tok.Approval == nil ||
		tok.Approval.Kind != approval.KindGrantingToken || !strings.HasPrefix(tok.Token, inventory.TokenPrefix) {
		t.Fatalf("a granting token under two_person_rule: %d %s", resp.StatusCode, b)
	}
	if strings.Contains(string(tok.Approval.Params), tok.Token) || strings.Contains(tok.Approval.Target, tok.Token) {
		t.Fatal("the token's secret is kept in the approval request")
	}
	if _, err := f.inv.CheckToken(t.Context(), tok.Token, "gw-1", time.Now()); !errors.Is(err, inventory.ErrTokenPending) {
		t.Fatalf("the pending token before approval: %v", err)
	}
	if code, _ := f.decide(t, f.sec, tok.Approval.ID, "approve"); code != http.StatusForbidden {
		t.Fatalf("the requester approves their own token: %d", code)
	}
	if code, r := f.decide(t, f.root, tok.Approval.ID, "approve"); code != http.StatusOK || r.State != approval.StateExecuted {
		t.Fatalf("a second person approves: %d %+v", code, r)
	}
	got, err := f.inv.CheckToken(t.Context(), tok.Token, "gw-1", time.Now())
	if err != nil || got.Group != "vault" || got.Model != "gw-1" {
		t.Fatalf("the approved token: %+v %v", got, err)
	}

	// Nothing granted: usable at once.
	resp, b = f.do(t, "POST", "/api/v1/enrollment-tokens", f.sec, EnrollmentTokenRequest{Owner: "ops"})
	var plain TokenResponse
	if err := json.Unmarshal([]byte(b), &plain); resp.StatusCode != http.StatusCreated || err != nil || plain.Pending || plain.Approval != nil {
		t.Fatalf("a plain token under two_person_rule: %d %s", resp.StatusCode, b)
	}
	if _, err := f.inv.CheckToken(t.Context(), plain.Token, "", time.Now()); err != nil {
		t.Fatalf("the plain token: %v", err)
	}
}
