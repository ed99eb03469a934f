package console_test

import (
	"html"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/console"
	"github.com/sigil-iot/sigil/fleet/governance"
	"github.com/sigil-iot/sigil/fleet/inventory"
)

// newTriageFixture is the console fixture with a real governance service
// behind both the triage page and the real API handler.
func newTriageFixture(t *testing.T) (*fixture, *governance.Service) {
	t.Helper()
	var gov *governance.Service
	f := newFixture(t, func(c *console.Config) {
		inv := c.Inventory.(*inventory.Store)
		var err error
		gov, err = governance.Open(governance.Config{Path: filepath.Join(t.TempDir(), "governance.db"), Devices: inv, Now: c.Now, NoSync: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { gov.Close() })
		c.API = api.New(api.Config{Inventory: inv, Auth: c.Auth, Governance: gov, Now: c.Now, RateLimit: -1})
		*c = c.With(console.TriagePages{Governance: gov}.Extension())
	})
	return f, gov
}

// pendingKey returns the key of the undecided triage entry with the
// client ID.
func pendingKey(t *testing.T, gov *governance.Service, clientID string) string {
	t.Helper()
	list, _, err := gov.Triage(governance.TriageFilter{Undecided: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, sh := range list {
		if sh.ClientID == clientID {
			return sh.Key
		}
	}
	t.Fatalf("no undecided triage entry for client %q in %+v", clientID, list)
	return ""
}

// TestTriagePage: unknown identities recorded by governance appear on the
// triage page with what they presented, where from and how often; an
// operator blocks one (with a note) and it moves to the block list, and
// dismisses another; the operator cannot remove a block (security.approve)
// but a security admin can; a viewer sees the lists without any form and
// is refused when posting anyway; the page holds nothing the CSP forbids
// even with hostile client IDs.
func TestTriagePage(t *testing.T) {
	f, gov := newTriageFixture(t)
	viewer := f.login("vera", auth.RoleViewer)
	op := f.login("otto", auth.RoleOperator)
	sam := f.login("sam", auth.RoleSecurityAdmin)

	const ghost, evil = "gw-ghost/7", `"><script>alert(1)</script>`
	ek := strings.Repeat("c3", 32)
	for _, a := range []governance.Attempt{
		{Kind: governance.AttemptUnknownClient, ClientID: ghost, Remote: "198.51.100.2:1883", Reason: "bad bootstrap token"},
		{Kind: governance.AttemptUnknownClient, ClientID: ghost, Remote: "198.51.100.3:1883", Reason: "bad bootstrap token"},
		{Kind: governance.AttemptUnknownEK, ClientID: "boot-3", EKFingerprint: ek, Remote: "203.0.113.9:5000", Reason: "EK not trusted"},
		{Kind: governance.AttemptUnknownClient, ClientID: evil, Remote: "192.0.2.66:1883", Reason: evil},
	} {
		if err := gov.Observe(a); err != nil {
			t.Fatal(err)
		}
	}
	if err := gov.Flush(); err != nil {
		t.Fatal(err)
	}
	key := pendingKey(t, gov, ghost)
	form := func(verb string) string {
		return `action="/triage/` + html.EscapeString(url.PathEscape(key)) + "/" + verb + `"`
	}

	page := body(t, op.get("/triage"), http.StatusOK)
	mustContain(t, page, `href="/triage"`, "Unknown client ID", html.EscapeString(ghost), "198.51.100.2, 198.51.100.3",
		"<td>2</td>", "bad bootstrap token", "Unknown TPM (EK)", "boot-3", "c3c3c3c3 c3c3c3c3", form("dismiss"),
		`formaction="/triage/`+html.EscapeString(url.PathEscape(key))+`/block"`, "Nothing is blocked.")
	for _, v := range cspViolations(page) {
		t.Errorf("/triage: %s", v)
	}
	if strings.Contains(page, "<script>alert(1)") {
		t.Error("/triage: a hostile client ID was not escaped")
	}
	checkForms(t, "/triage", page)

	vpage := body(t, viewer.get("/triage"), http.StatusOK)
	mustContain(t, vpage, html.EscapeString(ghost), "198.51.100.3")
	mustNotContain(t, vpage, "<form method=\"post\" action=\"/triage", "formaction=")
	body(t, viewer.post("/triage/"+url.PathEscape(key)+"/block", url.Values{"note": {"viewer"}}), http.StatusForbidden)
	if sh, err := gov.Shadow(key); err != nil || sh.Decision != governance.DecisionNone {
		t.Fatalf("after the viewer's refused post: %+v %v", sh, err)
	}

	if to := redirect(t, op.post("/triage/"+url.PathEscape(key)+"/block", url.Values{"note": {"not one of ours"}})); to != "/triage?ok=triage.block" {
		t.Fatalf("redirected to %q", to)
	}
	sh, err := gov.Shadow(key)
	if err != nil || sh.Decision != governance.DecisionBlock || sh.DecidedBy != "otto" || sh.Note != "not one of ours" {
		t.Fatalf("after blocking: %+v %v", sh, err)
	}
	if _, ok := gov.Blocked(ghost, "", ""); !ok {
		t.Fatal("the blocked client ID is not on the block list")
	}
	page = body(t, op.get("/triage?ok=triage.block"), http.StatusOK)
	pending, blocks := split(t, page, "Waiting for a decision", "Block list")
	mustContain(t, page, "Blocked: its identity is on the block list")
	mustNotContain(t, pending, html.EscapeString(ghost))
	mustContain(t, pending, "boot-3")
	mustContain(t, blocks, "client-id", html.EscapeString(ghost), "not one of ours", "otto", "from "+html.EscapeString(key))
	mustNotContain(t, blocks, `action="/triage/blocks/remove"`)
	unblock := url.Values{"kind": {"client-id"}, "value": {ghost}}
	body(t, op.post("/triage/blocks/remove", unblock), http.StatusForbidden)
	if _, ok := gov.Blocked(ghost, "", ""); !ok {
		t.Fatal("an operator without security.approve removed a block")
	}

	ekKey := pendingKey(t, gov, "boot-3")
	redirect(t, op.post("/triage/"+url.PathEscape(ekKey)+"/dismiss", nil))
	if sh, err := gov.Shadow(ekKey); err != nil || sh.Decision != governance.DecisionDismiss {
		t.Fatalf("after dismissing: %+v %v", sh, err)
	}
	if _, ok := gov.Blocked("boot-3", "", ek); ok {
		t.Fatal("dismissing blocked the identity")
	}
	mustNotContain(t, body(t, op.get("/triage"), http.StatusOK), "boot-3")

	_, blocks = split(t, body(t, sam.get("/triage"), http.StatusOK), "Waiting for a decision", "Block list")
	mustContain(t, blocks, `action="/triage/blocks/remove"`, `name="value" value="`+html.EscapeString(ghost)+`"`)
	body(t, sam.post("/triage/blocks/remove", url.Values{"kind": {"everything"}, "value": {ghost}}), http.StatusBadRequest)
	if to := redirect(t, sam.post("/triage/blocks/remove", unblock)); to != "/triage?ok=triage.unblock" {
		t.Fatalf("redirected to %q", to)
	}
	if _, ok := gov.Blocked(ghost, "", ""); ok {
		t.Fatal("the block is still there after its removal")
	}
	_, blocks = split(t, body(t, sam.get("/triage"), http.StatusOK), "Waiting for a decision", "Block list")
	mustContain(t, blocks, "Nothing is blocked.")

	body(t, op.get("/triage?after=zz"), http.StatusBadRequest)
}
