package console_test

import (
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/approval"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/ca"
)

var approvalID = regexp.MustCompile(`<dt>Approval request</dt><dd>([^<]+)</dd>`)

// TestApprovalsInbox: under the two-person rule a CA rotation asked for in
// the console answers 202 with the request to approve and changes
// nothing; the requester sees it waiting for others, a second security
// admin sees it in their inbox with the justification, cannot reject
// without a reason, approves it and the change is made; a requester
// withdraws another request; a viewer sees no decision forms and is
// refused by the API.
func TestApprovalsInbox(t *testing.T) {
	ff := newFleetFixture(t, fleetOptions{})
	sam := ff.login("sam", auth.RoleSecurityAdmin)
	sid := ff.login("sid", auth.RoleSecurityAdmin)
	viewer := ff.login("vera", auth.RoleViewer)
	ff.clock.Advance(time.Second) // the accounts predate the requests: newer ones may not approve them

	page := body(t, sam.post("/ca/prepare", url.Values{"justification": {"quarterly CA rotation"}}), http.StatusAccepted)
	mustContain(t, page, "Waiting for a second person&#39;s approval", "filed for approval by a second person")
	m := approvalID.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no approval request ID on the page:\n%s", page)
	}
	id := m[1]
	if gens := ff.ca.Generations(); len(gens) != 1 {
		t.Fatalf("the CA changed before approval: %d generations", len(gens))
	}

	page = body(t, sam.get("/approvals"), http.StatusOK)
	inbox, waiting := split(t, page, "Waiting for your decision", "Waiting for others")
	mustContain(t, inbox, "Nothing waits for you.")
	mustContain(t, waiting, id, "Fleet CA rotation", "quarterly CA rotation", "(you)", `action="/approvals/`+id+`/withdraw"`, "0 of 1 approval")
	mustNotContain(t, page, `action="/approvals/`+id+`/approve"`)

	page = body(t, sid.get("/approvals"), http.StatusOK)
	inbox, _ = split(t, page, "Waiting for your decision", "Waiting for others")
	mustContain(t, inbox, id, "quarterly CA rotation", "POST /api/v1/ca/prepare", `action="/approvals/`+id+`/approve"`, `action="/approvals/`+id+`/reject"`)
	mustContain(t, body(t, sid.post("/approvals/"+id+"/reject", url.Values{"reason": {""}}), http.StatusBadRequest), "say why")

	page = body(t, viewer.get("/approvals"), http.StatusOK)
	mustContain(t, page, "Nothing waits for you.", id)
	mustNotContain(t, page, `/approve"`, `/reject"`)
	body(t, viewer.post("/approvals/"+id+"/approve", nil), http.StatusForbidden)

	if to := redirect(t, sid.post("/approvals/"+id+"/approve", url.Values{"comment": {"matches the change ticket"}})); to != "/approvals?ok=approval.approve" {
		t.Fatalf("redirected to %q", to)
	}
	req, err := ff.approvals.Get(t.Context(), id)
	if err != nil || req.State != approval.StateExecuted || req.Approvals[0].By != "sid" {
		t.Fatalf("after approval: %+v %v", req, err)
	}
	if gens := ff.ca.Generations(); len(gens) != 2 || gens[1].State != ca.GenPrepared {
		t.Fatalf("the approved rotation did not prepare a generation: %+v", gens)
	}
	page = body(t, sam.get("/approvals"), http.StatusOK)
	_, hist := split(t, page, "Waiting for others", "Decided")
	mustContain(t, hist, id, ">executed<", "carried out", "sid")

	// A request filed through the API, withdrawn by its requester.
	resp := ff.apiAs("sam", auth.RoleSecurityAdmin, http.MethodPut, "/api/v1/policies/gw-new", []byte(`{"name":"new","pcrs":{"sha256":{"0":"`+strings.Repeat("00", 32)+`"}}}`), "new baseline")
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("policy change: %d", resp.StatusCode)
	}
	pending, err := ff.approvals.Pending(t.Context())
	if err != nil || len(pending) != 1 {
		t.Fatalf("pending: %v %v", pending, err)
	}
	pid := pending[0].ID
	mustContain(t, body(t, sam.get("/approvals"), http.StatusOK), "Attestation policy change", "new baseline", "PUT /api/v1/policies/{id} gw-new")
	redirect(t, sam.post("/approvals/"+pid+"/withdraw", url.Values{"reason": {"wrong PCR values"}}))
	if r, _ := ff.approvals.Get(t.Context(), pid); r.State != approval.StateRejected || r.Rejection.By != "sam" {
		t.Fatalf("after withdrawal: %+v", r)
	}
	if _, err := ff.policies.Get(t.Context(), "gw-new"); err == nil {
		t.Fatal("a withdrawn policy change was made")
	}
	mustContain(t, body(t, sid.get("/approvals"), http.StatusOK), "withdrawn by sam", "wrong PCR values")
}

// TestApprovalsOff: without the two-person rule there is no inbox.
func TestApprovalsOff(t *testing.T) {
	ff := newFleetFixture(t, fleetOptions{noApprovals: true})
	admin := ff.login("ada", auth.RoleAdmin)
	mustNotContain(t, body(t, admin.get("/"), http.StatusOK), `href="/approvals"`)
	if w := admin.get("/approvals"); w.Code != http.StatusNotFound {
		t.Fatalf("/approvals without the rule: %d", w.Code)
	}
}

// split returns the parts of page after the heading from and after the
// heading to.
func split(t *testing.T, page, from, to string) (string, string) {
	t.Helper()
	i, j := strings.Index(page, ">"+from+"</h2>"), strings.Index(page, ">"+to+"</h2>")
	if i < 0 || j < i {
		t.Fatalf("page lacks the sections %q and %q", from, to)
	}
	return page[i:j], page[j:]
}
