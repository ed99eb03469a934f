package console_test

import (
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"testing"

	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/inventory"
)

var auditSeq = regexp.MustCompile(`<tr>\s*<td class="mono">(\d+)</td>`)

// TestAuditPage: the console's own actions land in the audit log; the
// audit page lists them newest first, filters by target, actor and action,
// pages through older entries without overlap, and verifies the chain
// through the API, showing what it established; the device page shows the
// device's trail. Roles without audit.read see neither.
func TestAuditPage(t *testing.T) {
	ff := newFleetFixture(t, fleetOptions{})
	sam := ff.login("sam", auth.RoleSecurityAdmin)
	op := ff.login("olga", auth.RoleOperator)
	d := ff.addDevice(1, inventory.StateActive, nil)
	other := ff.addDevice(2, inventory.StateActive, nil)
	for i := range 30 {
		redirect(t, op.post("/devices/"+d.ID+"/edit", url.Values{"owner": {"owner-" + strconv.Itoa(i)}}))
		redirect(t, sam.post("/devices/"+other.ID+"/edit", url.Values{"owner": {"x"}}))
	}

	page := body(t, sam.get("/audit"), http.StatusOK)
	mustContain(t, page, "api.devices.patch", `href="/devices/`+d.ID+`"`, "user:olga", "user:sam", `action="/audit/verify"`, `href="/api/v1/audit/export"`)
	seqs := seqsOf(page)
	if len(seqs) != 50 || seqs[0] != 60 || seqs[49] != 11 {
		t.Fatalf("first page: %d entries %v, want 60 down to 11", len(seqs), seqs)
	}
	older := seqsOf(body(t, sam.get(regexpLink(t, page)), http.StatusOK))
	if len(older) != 10 || older[0] != 10 || older[9] != 1 {
		t.Fatalf("second page: %v, want 10 down to 1", older)
	}

	byTarget := body(t, sam.get("/audit?target="+d.ID), http.StatusOK)
	if s := seqsOf(byTarget); len(s) != 30 {
		t.Errorf("target filter: %d entries, want 30", len(s))
	}
	mustNotContain(t, byTarget, "user:sam")
	byActor := body(t, sam.get("/audit?actor=user:sam"), http.StatusOK)
	mustNotContain(t, byActor, "user:olga")
	if s := seqsOf(byActor); len(s) != 30 {
		t.Errorf("actor filter: %d entries, want 30", len(s))
	}
	mustContain(t, body(t, sam.get("/audit?action=api.tokens"), http.StatusOK), "No entry matches")
	body(t, sam.get("/audit?actor=robot:x"), http.StatusBadRequest)
	body(t, sam.get("/audit?since=yesterday"), http.StatusBadRequest)
	mustContain(t, body(t, sam.get("/audit?since=2026-03-01&until=2026-03-01"), http.StatusOK), "api.devices.patch")
	mustContain(t, body(t, sam.get("/audit?until=2026-02-28"), http.StatusOK), "No entry matches")

	// Verify: the API recomputes the chain; the page says what it found.
	redirect(t, sam.post("/audit/checkpoint", nil))
	rep, err := ff.audit.VerifyStore(t.Context(), nil) // what the API's verification will find
	if err != nil {
		t.Fatal(err)
	}
	page = body(t, sam.post("/audit/verify", nil), http.StatusOK)
	mustContain(t, page, "Audit log verified", "<dt>Entries verified</dt><dd>"+strconv.Itoa(rep.Entries)+"</dd>",
		"<dt>Signed checkpoints verified</dt><dd>1</dd>", rep.Head.String()[:16])

	// The device's trail, newest first, with a link to all of it.
	page = body(t, sam.get("/devices/"+d.ID), http.StatusOK)
	mustContain(t, page, "Audit trail", "api.devices.patch", `href="/audit?target=`+d.ID+`"`)
	mustNotContain(t, page, "user:sam")

	// An operator holds no audit.read.
	mustNotContain(t, body(t, op.get("/"), http.StatusOK), `href="/audit"`)
	body(t, op.get("/audit"), http.StatusForbidden)
	mustNotContain(t, body(t, op.get("/devices/"+d.ID), http.StatusOK), "Audit trail")
	body(t, op.post("/audit/verify", nil), http.StatusForbidden)
	if e, _ := ff.audit.List(t.Context(), audit.Filter{Limit: 1}); e.Entries[0].Outcome != audit.Denied || e.Entries[0].Actor.ID != "olga" {
		t.Errorf("the refused verification was not recorded as denied: %+v", e.Entries[0])
	}
}

func seqsOf(page string) []int {
	var out []int
	for _, m := range auditSeq.FindAllStringSubmatch(page, -1) {
		n, _ := strconv.Atoi(m[1])
		out = append(out, n)
	}
	return out
}
