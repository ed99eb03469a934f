package console_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"golang.org/x/crypto/ssh"
)

var grantID = regexp.MustCompile(`aria-label="Grant ([0-9a-f]{16})"`)

// TestAccessPage: an operator requests SSH access in the console; the
// page shows it requested, without an approve form for its requester; a
// security admin approves it there and the certificate appears; a viewer
// has no access page; the grant is revoked from the page.
func TestAccessPage(t *testing.T) {
	ff := newFleetFixture(t, fleetOptions{})
	dev := ff.addDevice(1, inventory.StateActive, nil)
	ana := ff.login("ana", auth.RoleOperator)
	sid := ff.login("sid", auth.RoleSecurityAdmin)
	viewer := ff.login("vera", auth.RoleViewer)
	ff.clock.Advance(time.Second)

	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	k, _ := ssh.NewPublicKey(pub)
	key := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k)))
	mustContain(t, body(t, ana.post("/access/request", url.Values{"kind": {"device"}, "target": {dev.ID}, "public_key": {key}, "justification": {"x"}}), http.StatusBadRequest), "justification")
	if to := redirect(t, ana.post("/access/request", url.Values{"kind": {"device"}, "target": {dev.ID}, "login": {"root"}, "public_key": {key},
		"duration": {"30m"}, "justification": {"INC-9 reboot loop"}})); to != "/access?ok=access.request" {
		t.Fatalf("redirected to %q", to)
	}
	page := body(t, ana.get("/access"), http.StatusOK)
	m := grantID.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no grant on the page:\n%s", page)
	}
	id := m[1]
	mustContain(t, page, "INC-9 reboot loop", "requested", "(you)", `action="/access/`+id+`/deny"`, "Withdraw")
	mustNotContain(t, page, `action="/access/`+id+`/approve"`)

	page = body(t, sid.get("/access"), http.StatusOK)
	mustContain(t, page, id, `action="/access/`+id+`/approve"`)
	if to := redirect(t, sid.post("/access/"+id+"/approve", url.Values{"comment": {"ok"}})); to != "/access?ok=access.approve" {
		t.Fatalf("redirected to %q", to)
	}
	page = body(t, ana.get("/access"), http.StatusOK)
	mustContain(t, page, "approved", "ssh-ed25519-cert-v01@openssh.com", "sigil-grant:"+id, "Approved by</dt><dd>sid", `action="/access/`+id+`/revoke"`)

	body(t, viewer.get("/access"), http.StatusForbidden)

	if to := redirect(t, ana.post("/access/"+id+"/revoke", url.Values{"reason": {"done early"}})); to != "/access?ok=access.revoke" {
		t.Fatalf("redirected to %q", to)
	}
	page = body(t, ana.get("/access"), http.StatusOK)
	mustContain(t, page, "revoked", "by ana")
	mustNotContain(t, page, "ssh-ed25519-cert-v01@openssh.com")
}
