package console_test

import (
	"crypto/x509"
	"encoding/hex"
	"html"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/console"
	"github.com/sigil-iot/sigil/fleet/governance"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/internal/pkitest"
)

// TestNotFoundPage: an unknown console URL answers the console's own 404
// page — HTML with the operator's navigation and a way back — instead of
// the API's problem+json; a visitor without a session gets the page with a
// link to log in and no menu; a page whose subsystem is off is not found
// the same way; unknown API URLs and the API's own routes outside /api/
// still answer as the API does.
func TestNotFoundPage(t *testing.T) {
	f := newFixture(t, nil)
	op := f.login("olga", auth.RoleOperator)

	w := op.get("/no-such-page/" + url.PathEscape(`"><script>x</script>`))
	page := body(t, w, http.StatusNotFound)
	if ct := w.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
		t.Fatalf("Content-Type %q, want HTML", ct)
	}
	if w.Header().Get("Content-Security-Policy") == "" {
		t.Error("the 404 page lacks the console's security headers")
	}
	mustContain(t, page, "Page not found", `<nav aria-label="Main">`, `href="/devices"`, `href="/enrollment"`, "olga", "/no-such-page/")
	mustNotContain(t, page, "<script>x</script>", "problem+json", `"detail"`)
	for _, v := range cspViolations(page) {
		t.Errorf("404 page: %s", v)
	}

	w = f.get(nil, "/no-such-page")
	page = body(t, w, http.StatusNotFound)
	mustContain(t, page, "Page not found", `href="/login?next=%2Fno-such-page"`)
	mustNotContain(t, page, `<nav aria-label="Main">`, `href="/devices"`)

	// The policies pages are off without a policy store.
	g := newFixture(t, func(c *console.Config) { c.Policies = nil })
	body(t, g.login("olga", auth.RoleOperator).get("/policies"), http.StatusNotFound)
	mustContain(t, body(t, g.get(nil, "/policies"), http.StatusNotFound), "Page not found")

	w = op.get("/api/v1/no-such-route")
	if w.Code != http.StatusNotFound || !strings.Contains(w.Header().Get("Content-Type"), "problem+json") {
		t.Fatalf("/api/v1/no-such-route: %d %s", w.Code, w.Header().Get("Content-Type"))
	}
	if w := f.get(nil, "/healthz"); w.Code != http.StatusOK || !strings.Contains(w.Header().Get("Content-Type"), "json") {
		t.Fatalf("/healthz: %d %s", w.Code, w.Header().Get("Content-Type"))
	}
	if w := f.get(nil, "/crl"); w.Code == http.StatusNotFound && strings.Contains(w.Body.String(), "Page not found") {
		t.Fatalf("/crl is the API's, got the console's 404")
	}
}

// TestLoginThrottleMessage: a throttled login says so in one sentence with
// the wait in whole seconds, not the API's detail glued to a prefix.
func TestLoginThrottleMessage(t *testing.T) {
	f := newFixture(t, nil)
	f.login("alice", auth.RoleAdmin)
	body(t, f.serve(loginRequest("alice", "not her password")), http.StatusUnauthorized)
	w := f.serve(loginRequest("alice", "password of alice"))
	page := body(t, w, http.StatusTooManyRequests)
	m := regexp.MustCompile(`role="alert">([^<]*)<`).FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no alert on the throttled login page:\n%s", page)
	}
	msg := html.UnescapeString(m[1])
	want := regexp.MustCompile(`^Too many failed logins: try again in (1 second|[0-9]+ seconds|[0-9]+ minutes?)\.$`)
	if !want.MatchString(msg) {
		t.Fatalf("throttle message %q is not one clear sentence", msg)
	}
	if n := strings.Count(strings.ToLower(msg), "too many failed logins"); n != 1 {
		t.Fatalf("throttle message %q repeats itself", msg)
	}
}

// TestEnrollmentTokensListed: the enrollment page lists the issued
// enrollment tokens — ID, owner, what they grant, expiry, unused, used
// (by which device) or expired — and never a secret or its hash; a viewer
// sees the list too.
func TestEnrollmentTokensListed(t *testing.T) {
	f := newFixture(t, nil)
	unusedSecret, unused, err := f.inv.CreateToken(t.Context(), inventory.Grant{Model: "gw-1", Group: "line-3"}, "plant-a", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(time.Minute)
	usedSecret, used, err := f.inv.CreateToken(t.Context(), inventory.Grant{}, "plant-b", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dev := f.addDevice(1, inventory.StateActive, nil)
	if _, err := f.inv.ConsumeToken(t.Context(), usedSecret, dev.ID, "", f.clock.Now()); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(time.Minute)
	expiredSecret, expired, err := f.inv.CreateToken(t.Context(), inventory.Grant{}, "plant-c", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(2 * time.Hour)
	op := f.login("olga", auth.RoleOperator)
	viewer := f.login("vera", auth.RoleViewer)

	for _, s := range []*session{op, viewer} {
		page := body(t, s.get("/enrollment"), http.StatusOK)
		list := panelOf(t, page, "Issued tokens")
		mustContain(t, list, unused.ID, "plant-a", "gw-1", "line-3", "unused",
			used.ID, "plant-b", "used", "/devices/"+dev.ID,
			expired.ID, "plant-c", "expired")
		for _, tok := range []*inventory.Token{unused, used, expired} {
			mustNotContain(t, page, hex.EncodeToString(tok.Hash))
		}
		mustNotContain(t, page, unusedSecret, usedSecret, expiredSecret, "sgt_")
		for _, v := range cspViolations(page) {
			t.Errorf("/enrollment: %s", v)
		}
	}
	// The newest first.
	page := body(t, op.get("/enrollment"), http.StatusOK)
	if i, j := strings.Index(page, expired.ID), strings.Index(page, unused.ID); i < 0 || j < 0 || i > j {
		t.Errorf("tokens not listed newest first")
	}
	// Only the unused ones.
	list := panelOf(t, body(t, op.get("/enrollment?tokens=unused"), http.StatusOK), "Issued tokens")
	mustContain(t, list, unused.ID)
	mustNotContain(t, list, used.ID, expired.ID)
	body(t, op.get("/enrollment?tokens=everything"), http.StatusBadRequest)
}

// foreignCert is a client certificate from a CA that is not the fleet's.
func foreignCert(t *testing.T) *x509.Certificate {
	t.Helper()
	return pkitest.NewCA(t, "Acme Plant CA").Client(t, "gw-impostor").Leaf
}

// TestTriageNoEnrollForForeignCertificates: a shadow device seen with a
// certificate from another CA is offered block and dismiss but not enroll,
// and the page says why; an unknown TPM is still offered enroll. Posting
// enroll for the foreign certificate anyway is refused with the reason.
func TestTriageNoEnrollForForeignCertificates(t *testing.T) {
	f, gov := newTriageFixture(t)
	op := f.login("otto", auth.RoleOperator)
	for _, a := range []governance.Attempt{
		{Kind: governance.AttemptForeignCert, ClientID: "gw-impostor", Cert: foreignCert(t), Remote: "198.51.100.7:40000", Reason: "certificate signed by unknown authority"},
		{Kind: governance.AttemptUnknownEK, ClientID: "boot-4", EKFingerprint: strings.Repeat("d4", 32), Remote: "203.0.113.4:5000", Reason: "EK not trusted"},
	} {
		if err := gov.Observe(a); err != nil {
			t.Fatal(err)
		}
	}
	if err := gov.Flush(); err != nil {
		t.Fatal(err)
	}
	foreign, tpm := pendingKey(t, gov, "gw-impostor"), pendingKey(t, gov, "boot-4")
	page := body(t, op.get("/triage"), http.StatusOK)
	enroll := func(key string) string {
		return `formaction="/triage/` + html.EscapeString(url.PathEscape(key)) + `/enroll"`
	}
	block := func(key string) string {
		return `formaction="/triage/` + html.EscapeString(url.PathEscape(key)) + `/block"`
	}
	mustContain(t, page, block(foreign), block(tpm), enroll(tpm), "Acme Plant CA",
		"not offered: its certificate was issued by another CA")
	mustNotContain(t, page, enroll(foreign))

	w := op.post("/triage/"+url.PathEscape(foreign)+"/enroll", nil)
	mustContain(t, body(t, w, http.StatusConflict), "issued by another CA")
	if sh, err := gov.Shadow(foreign); err != nil || sh.Decision != governance.DecisionNone {
		t.Fatalf("after the refused enroll: %+v %v", sh, err)
	}
}

// panelOf returns the page's panel under the heading, up to its end.
func panelOf(t *testing.T, page, heading string) string {
	t.Helper()
	i := strings.Index(page, ">"+heading+"</h2>")
	if i < 0 {
		t.Fatalf("page lacks the section %q", heading)
	}
	rest := page[i:]
	if j := strings.Index(rest, "</section>"); j >= 0 {
		rest = rest[:j]
	}
	return rest
}
