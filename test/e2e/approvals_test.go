package e2e

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/approval"
	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/secrets"
	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/sim/harness"
)

// TestTwoPersonRule: with two_person_rule on, a secret change and a CA
// rotation are filed for approval instead of acting; the requester cannot
// approve their own request; a second security admin's approval carries
// the change out exactly once; a rejection leaves everything as it was;
// every step is in the audit log.
func TestTwoPersonRule(t *testing.T) {
	f := startFleet(t, func(c *server.Config) { c.TwoPersonRule = true })
	admin, _ := f.Client()
	ctx := context.Background()
	// Sam existed before the rule was turned on (under it, a new account
	// waits for a second person: TestOnePersonCannotSatisfyTheTwoPersonRule).
	sam := secondAdmin(t, f, admin)

	// Without a justification the change is refused outright.
	_, err := admin.PutSecret(ctx, "wifi-psk", []byte("hunter2 hunter2"), secrets.Target{Model: "gw-1"}, false)
	var se *api.StatusError
	if !errors.As(err, &se) || se.Status != 400 || !strings.Contains(se.Problem.Detail, api.JustificationHeader) {
		t.Fatalf("change without justification: %v", err)
	}
	admin.Justification = "rotate the plant Wi-Fi key after contractor offboarding"
	_, err = admin.PutSecret(ctx, "wifi-psk", []byte("hunter2 hunter2"), secrets.Target{Model: "gw-1"}, false)
	var pe *api.PendingError
	if !errors.As(err, &pe) || pe.Pending.Approval.Kind != approval.KindSecretChange || pe.Pending.Approval.State != approval.StatePending {
		t.Fatalf("secret change with the rule on: %v", err)
	}
	reqID := pe.Pending.Approval.ID
	if l, _ := admin.Secrets(ctx); len(l.Secrets) != 0 {
		t.Fatal("the secret was stored before approval")
	}
	// The requester cannot approve their own request.
	var r approval.Request
	err = admin.Do(ctx, "POST", "/api/v1/approvals/"+reqID+"/approve", api.DecisionRequest{}, &r)
	if !errors.As(err, &se) || se.Status != 403 {
		t.Fatalf("self-approval: %v", err)
	}
	// Sam sees it in the inbox and approves; the change happens once.
	var inbox api.ApprovalList
	if err := sam.Do(ctx, "GET", "/api/v1/approvals", nil, &inbox); err != nil || len(inbox.Approvals) != 1 || inbox.Approvals[0].ID != reqID {
		t.Fatalf("inbox %+v %v", inbox, err)
	}
	if err := sam.Do(ctx, "POST", "/api/v1/approvals/"+reqID+"/approve", api.DecisionRequest{Comment: "checked with OT"}, &r); err != nil {
		t.Fatal(err)
	}
	if r.State != approval.StateExecuted {
		t.Fatalf("after approval: %+v", r)
	}
	l, err := admin.Secrets(ctx)
	if err != nil || len(l.Secrets) != 1 || l.Secrets[0].Name != "wifi-psk" || l.Secrets[0].Version != 1 {
		t.Fatalf("secrets after approval: %+v %v", l, err)
	}
	if err := sam.Do(ctx, "POST", "/api/v1/approvals/"+reqID+"/approve", api.DecisionRequest{}, &r); !errors.As(err, &se) || se.Status != 409 {
		t.Fatalf("approving an executed request again: %v", err)
	}

	// A CA rotation request rejected: nothing changes.
	_, err = admin.PrepareCA(ctx)
	if !errors.As(err, &pe) || pe.Pending.Approval.Kind != approval.KindCARotation {
		t.Fatalf("CA prepare with the rule on: %v", err)
	}
	if err := sam.Do(ctx, "POST", "/api/v1/approvals/"+pe.Pending.Approval.ID+"/reject", api.DecisionRequest{Reason: "not during the audit window"}, &r); err != nil || r.State != approval.StateRejected {
		t.Fatalf("reject: %+v %v", r, err)
	}
	if v, _ := admin.CA(ctx); len(v.Generations) != 1 {
		t.Fatalf("CA generations after a rejected rotation: %+v", v.Generations)
	}

	// The audit log holds the request, the refusals and the decisions.
	var al api.AuditList
	if err := admin.Do(ctx, "GET", "/api/v1/audit?action=approval&limit=100", nil, &al); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, e := range al.Entries {
		seen[e.Action+"/"+e.Actor.String()] = true
	}
	for _, want := range []string{"approval.requested/user:admin", "approval.approved/user:sam", "approval.executed/" + audit.System("approvals").String(), "approval.rejected/user:sam"} {
		if !seen[want] {
			t.Errorf("audit log lacks %s: %v", want, seen)
		}
	}
}

// secondAdmin makes sam, a second security admin (created directly, as if
// before the two-person rule was turned on), and returns an API client
// with a token of sam's that reaches the fleet the way admin does.
func secondAdmin(t *testing.T, f *harness.Fleet, admin *api.Client) *api.Client {
	t.Helper()
	ctx := t.Context()
	if _, err := f.Auth.CreateUser(ctx, "sam", "sam's long password", auth.RoleSecurityAdmin); err != nil {
		t.Fatal(err)
	}
	secret, _, err := f.Auth.CreateToken(ctx, "sam", "approver", auth.RoleSecurityAdmin, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	sam := api.NewClient(f.APIURL(), secret, nil)
	sam.HTTP = admin.HTTP
	return sam
}
