package console_test

import (
	"context"
	"encoding/json"
	"html"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/attest"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/console"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/policy"
)

var wantHeaders = map[string]string{
	"Content-Security-Policy":   "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
	"Strict-Transport-Security": "max-age=31536000",
	"X-Frame-Options":           "DENY",
	"X-Content-Type-Options":    "nosniff",
	"Referrer-Policy":           "no-referrer",
}

// TestSecurityHeaders: every console answer — pages, the login page,
// redirects, error pages, refusals and static assets — carries the strict
// headers.
func TestSecurityHeaders(t *testing.T) {
	f := newFixture(t, nil)
	op := f.login("olga", auth.RoleOperator)
	f.addDevice(1, inventory.StateActive, nil)
	answers := map[string]*http.Response{
		"login page":        f.get(nil, "/login").Result(),
		"redirect to login": f.get(nil, "/devices").Result(),
		"overview":          op.get("/").Result(),
		"device":            op.get("/devices/" + devID(1)).Result(),
		"unknown device":    op.get("/devices/nope").Result(),
		"style sheet":       f.get(nil, "/static/console.css").Result(),
		"script":            f.get(nil, "/static/console.js").Result(),
		"csrf refusal":      op.postRaw("/devices/"+devID(1)+"/rotate", url.Values{}).Result(),
		"action redirect":   op.post("/devices/"+devID(1)+"/edit", url.Values{"owner": {"x"}}).Result(),
		"failed login":      f.serve(loginRequest("nobody", "wrong password")).Result(),
	}
	for name, resp := range answers {
		for k, v := range wantHeaders {
			if got := resp.Header.Get(k); got != v {
				t.Errorf("%s (%d): %s = %q, want %q", name, resp.StatusCode, k, got, v)
			}
		}
	}
	if ct := answers["style sheet"].Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/css") {
		t.Errorf("style sheet served as %q", ct)
	}
}

func loginRequest(user, pw string) *http.Request {
	r := newRequest(http.MethodPost, "/login", strings.NewReader(url.Values{"user": {user}, "password": {pw}, "next": {"/devices?state=active"}}.Encode()))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r.Header.Set("Origin", "https://"+host)
	return r
}

// TestLoginLogout: a browser without a session is sent to the login page
// (keeping where it wanted to go); a wrong password is refused on the login
// page; the right one sets the session cookie and returns to that page;
// logging out needs the CSRF token and ends the session for good.
func TestLoginLogout(t *testing.T) {
	f := newFixture(t, nil)
	if _, err := f.auth.CreateUser(context.Background(), "alice", "alice's long password", auth.RoleAdmin); err != nil {
		t.Fatal(err)
	}
	if to := redirect(t, f.get(nil, "/devices?state=active")); to != "/login?next="+url.QueryEscape("/devices?state=active") {
		t.Fatalf("redirected to %q", to)
	}
	page := body(t, f.get(nil, "/login?next=/devices"), http.StatusOK)
	mustContain(t, page, `<label for="user">`, `<label for="password">`, `name="next" value="/devices"`, `autocomplete="current-password"`)

	w := f.serve(loginRequest("alice", "not her password"))
	mustContain(t, body(t, w, http.StatusUnauthorized), "The user name or password is wrong.")
	if len(w.Result().Cookies()) != 0 {
		t.Fatal("a failed login set a cookie")
	}

	// Failed logins are throttled: an immediate retry waits, even with the
	// right password.
	w = f.serve(loginRequest("alice", "alice's long password"))
	mustContain(t, body(t, w, http.StatusTooManyRequests), "Too many failed logins")
	if w.Header().Get("Retry-After") == "" {
		t.Error("429 without Retry-After")
	}
	f.clock.Advance(time.Minute)
	w = f.serve(loginRequest("alice", "alice's long password"))
	if to := redirect(t, w); to != "/devices?state=active" {
		t.Fatalf("after login redirected to %q", to)
	}
	cookies := w.Result().Cookies()
	if len(cookies) != 1 || !cookies[0].HttpOnly || !cookies[0].Secure || cookies[0].SameSite != http.SameSiteStrictMode {
		t.Fatalf("session cookie %+v", cookies)
	}
	s := &session{f: f, user: "alice", cookie: cookies[0]}
	page = body(t, s.get("/"), http.StatusOK)
	mustContain(t, page, "alice", "Fleet overview")
	// The page's forms carry the session's CSRF token.
	m := regexp.MustCompile(`name="csrf_token" value="([^"]+)"`).FindStringSubmatch(page)
	if m == nil {
		t.Fatal("no CSRF field on the page")
	}
	s.csrf = html.UnescapeString(m[1])

	// A logout without the token is refused and the session lives on.
	body(t, s.postRaw("/logout", url.Values{}), http.StatusForbidden)
	body(t, s.get("/"), http.StatusOK)

	if to := redirect(t, s.post("/logout", nil)); to != "/login?bye=1" {
		t.Fatalf("after logout redirected to %q", to)
	}
	if to := redirect(t, s.get("/")); !strings.HasPrefix(to, "/login") {
		t.Fatalf("the ended session still opened a page (redirect %q)", to)
	}
}

// TestLoginRefusesCrossSite: a login form posted from another site is
// refused (login CSRF), and post-login redirects stay on this site.
func TestLoginRefusesCrossSite(t *testing.T) {
	f := newFixture(t, nil)
	if _, err := f.auth.CreateUser(context.Background(), "alice", "alice's long password", auth.RoleAdmin); err != nil {
		t.Fatal(err)
	}
	r := loginRequest("alice", "alice's long password")
	r.Header.Set("Origin", "https://evil.example")
	w := f.serve(r)
	mustContain(t, body(t, w, http.StatusForbidden), "another site")
	if len(w.Result().Cookies()) != 0 {
		t.Fatal("a cross-site login set a cookie")
	}
	for _, next := range []string{"//evil.example/x", "https://evil.example/", `/\evil.example`, "javascript:alert(1)", "devices"} {
		form := url.Values{"user": {"alice"}, "password": {"alice's long password"}, "next": {next}}
		r := newRequest(http.MethodPost, "/login", strings.NewReader(form.Encode()))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if to := redirect(t, f.serve(r)); to != "/" {
			t.Errorf("next=%q redirected to %q", next, to)
		}
	}
}

// TestCSRFRefused: an action without the session's CSRF token, with a
// wrong one, or from another site changes nothing.
func TestCSRFRefused(t *testing.T) {
	f := newFixture(t, nil)
	op := f.login("olga", auth.RoleOperator)
	d := f.addDevice(1, inventory.StateActive, nil)
	path := "/devices/" + d.ID + "/quarantine"
	form := url.Values{"justification": {"suspicious traffic"}}
	body(t, op.postRaw(path, form), http.StatusForbidden)
	form.Set(auth.CSRFField, "not-the-token")
	body(t, op.postRaw(path, form), http.StatusForbidden)

	r := newRequest(http.MethodPost, path, strings.NewReader(url.Values{"justification": {"x y z"}, auth.CSRFField: {op.csrf}}.Encode()))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r.Header.Set("Sec-Fetch-Site", "cross-site")
	r.AddCookie(op.cookie)
	body(t, f.serve(r), http.StatusForbidden)

	if got := f.device(d.ID).State; got != inventory.StateActive {
		t.Fatalf("a refused request quarantined the device: %s", got)
	}
}

// TestViewerAndOperator: a viewer sees devices but no action buttons, and
// a viewer's posted action is refused by the API's permission check; an
// operator sees the buttons, quarantines with a justification and
// releases.
func TestViewerAndOperator(t *testing.T) {
	f := newFixture(t, nil)
	viewer := f.login("vera", auth.RoleViewer)
	op := f.login("olga", auth.RoleOperator)
	d := f.addDevice(1, inventory.StateActive, nil)
	devPath := "/devices/" + d.ID

	page := body(t, viewer.get(devPath), http.StatusOK)
	mustContain(t, page, d.ID, "Identity")
	mustNotContain(t, page, `action="`+devPath+`/quarantine"`, `action="`+devPath+`/revoke"`, `action="`+devPath+`/rotate"`, "Actions</h2>")
	mustNotContain(t, body(t, viewer.get("/settings"), http.StatusOK), `action="/settings/users"`)
	mustContain(t, body(t, viewer.post(devPath+"/quarantine", url.Values{"justification": {"because I can"}}), http.StatusForbidden), "devices.write")
	if got := f.device(d.ID).State; got != inventory.StateActive {
		t.Fatalf("a viewer's post changed the device: %s", got)
	}

	page = body(t, op.get(devPath), http.StatusOK)
	mustContain(t, page, `action="`+devPath+`/quarantine"`, `action="`+devPath+`/revoke"`, `action="`+devPath+`/rotate"`)
	mustNotContain(t, page, `action="`+devPath+`/release"`) // not quarantined

	// No justification: refused before anything changes.
	mustContain(t, body(t, op.post(devPath+"/quarantine", url.Values{"justification": {" "}}), http.StatusBadRequest), "justification")
	if got := f.device(d.ID).State; got != inventory.StateActive {
		t.Fatalf("quarantined without justification: %s", got)
	}

	if to := redirect(t, op.post(devPath+"/quarantine", url.Values{"justification": {"port scan from this device"}})); to != devPath+"?ok=device.quarantine" {
		t.Fatalf("redirected to %q", to)
	}
	got := f.device(d.ID)
	if got.State != inventory.StateQuarantined || !got.IsRevoked(d.CertSerial) {
		t.Fatalf("after quarantine: state %s, revoked %v", got.State, got.Revoked)
	}
	page = body(t, op.get(devPath+"?ok=device.quarantine"), http.StatusOK)
	mustContain(t, page, "Quarantined: its certificate is revoked", "quarantined by olga: port scan from this device", `action="`+devPath+`/release"`)

	if to := redirect(t, op.post(devPath+"/release", url.Values{"justification": {"scan was our pentest"}})); to != devPath+"?ok=device.release" {
		t.Fatalf("redirected to %q", to)
	}
	if got := f.device(d.ID).State; got != inventory.StateActive {
		t.Fatalf("after release: %s", got)
	}
	mustContain(t, body(t, op.get(devPath), http.StatusOK), "released by olga: scan was our pentest")

	// The API's refusals reach the operator with its public detail.
	mustContain(t, body(t, op.post(devPath+"/release", url.Values{"justification": {"again"}}), http.StatusConflict), "not quarantined")
	body(t, op.post("/devices/no-such-device/rotate", nil), http.StatusNotFound)
}

// TestDeviceActions: approve, revoke, rotate, edit and decommission go
// through the API and change what it changes.
func TestDeviceActions(t *testing.T) {
	f := newFixture(t, nil)
	admin := f.login("ada", auth.RoleAdmin)
	pending := f.addDevice(1, inventory.StatePending, nil)
	active := f.addDevice(2, inventory.StateActive, nil)

	redirect(t, admin.post("/devices/"+pending.ID+"/approve", nil))
	if d := f.device(pending.ID); !d.HasFlag("approved") {
		t.Fatalf("approve: flags %v", d.Flags)
	}
	redirect(t, admin.post("/devices/"+active.ID+"/revoke", url.Values{"reason": {"keyCompromise"}, "comment": {"lost in transit"}}))
	if d := f.device(active.ID); !d.IsRevoked(active.CertSerial) {
		t.Fatal("revoke did not revoke the certificate")
	}
	mustContain(t, body(t, admin.post("/devices/"+active.ID+"/revoke", url.Values{"reason": {"bogus"}}), http.StatusBadRequest), "reason must be")
	redirect(t, admin.post("/devices/"+active.ID+"/edit", url.Values{"owner": {"plant-7"}, "group": {"kiosks"}}))
	if d := f.device(active.ID); d.Owner != "plant-7" || d.Group != "kiosks" {
		t.Fatalf("edit: owner %q group %q", d.Owner, d.Group)
	}
	redirect(t, admin.post("/devices/"+active.ID+"/rotate", nil))
	redirect(t, admin.post("/devices/"+active.ID+"/decommission", url.Values{"justification": {"end of life"}}))
	if d := f.device(active.ID); d.State != inventory.StateDecommissioned {
		t.Fatalf("decommission: %s", d.State)
	}
}

// TestPagesRender: each page shows the data behind it.
func TestPagesRender(t *testing.T) {
	f := newFixture(t, nil)
	admin := f.login("ada", auth.RoleAdmin)
	now := f.clock.Now()
	f.addDevice(1, inventory.StateActive, func(d *inventory.Device) {
		d.Attestation, d.LastAttested, d.Owner, d.Group = "pass", now, "plant-a", "kiosks"
		d.CertExpiry = now.Add(3 * time.Hour) // expiring within 24 h
	})
	failing := f.addDevice(2, inventory.StateQuarantined, func(d *inventory.Device) { d.Attestation = "fail" })
	f.addDevice(3, inventory.StatePending, func(d *inventory.Device) { d.TrustPath = "" })
	f.addDevice(4, inventory.StateDecommissioned, nil)
	rec := &attest.Record{Time: now.Add(-time.Hour), DeviceID: failing.ID, Result: "fail", Reason: "policy", Message: "PCR 4 differs from policy gw-base",
		PolicyID: "gw-base", PolicyVersion: 2, Firmware: "1.4.2", Failures: []policy.Failure{{Kind: "pcr", Bank: "sha256", PCR: 4, EventIndex: -1,
			Expected: "aa11", Actual: "bb22", Message: "boot loader measurement changed: an unapproved boot loader ran"}}}
	if err := f.hist.Add(t.Context(), rec); err != nil {
		t.Fatal(err)
	}
	f.secrets[failing.ID] = sampleSecrets(now)
	if _, err := f.pol.Put(t.Context(), policy.Policy{ID: "gw-base", Name: "Gateway baseline", Model: "gw-1",
		PCRs: map[string]map[int]string{"sha256": {4: strings.Repeat("ab", 32)}}}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		f.console.ObserveVerdict("x", &attest.Record{Time: now.Add(-2 * time.Hour), Result: "pass"}, 0)
	}
	f.console.ObserveVerdict("x", &attest.Record{Time: now, Result: "fail"}, 0)

	page := body(t, admin.get("/"), http.StatusOK)
	mustContain(t, page, "4 devices", `/devices?state=active"><span class="card-title">active</span><span class="card-value">1</span>`,
		`<span class="card-title">quarantined</span><span class="card-value">1</span>`, "1 active device; the soonest:", devID(1)[:12],
		"07:00 UTC: 3 passed", "09:00 UTC: 1 failed", "<svg", `<dt>ek-ca</dt><dd>3</dd>`)

	page = body(t, admin.get("/devices/"+failing.ID), http.StatusOK)
	mustContain(t, page, "boot loader measurement changed: an unapproved boot loader ran", "sha256 PCR 4", "expected aa11", "actual",
		`href="/policies/gw-base"`, "v2", groupsOf(ekFP(2)), "app-key", "v3", "TPM import failed: wrong EK", "Lifecycle events")

	page = body(t, admin.get("/enrollment"), http.StatusOK)
	mustContain(t, page, `action="/enrollment/approve/`+devID(3)+`"`, `action="/enrollment/tokens"`)

	mustContain(t, body(t, admin.get("/policies"), http.StatusOK), `href="/policies/gw-base"`, "Gateway baseline", "sha256: 1")
	mustContain(t, body(t, admin.get("/policies/gw-base"), http.StatusOK), strings.Repeat("ab", 32), "v1")
	body(t, admin.get("/policies/nope"), http.StatusNotFound)

	gens := f.ca.Generations()
	mustContain(t, body(t, admin.get("/ca"), http.StatusOK), gens[0].Fingerprint[:8], `action="/ca/prepare"`)
	mustContain(t, body(t, admin.get("/settings"), http.StatusOK), "ada", `action="/settings/users"`, `action="/settings/tokens"`)
}

// sampleSecrets are a device's delivery states: one imported, one that
// failed.
func sampleSecrets(now time.Time) []api.DeviceSecret {
	return []api.DeviceSecret{
		{Name: "app-key", Latest: 3, Sent: 3, SentAt: now.Add(-time.Hour), Acked: 3, AckedAt: now.Add(-time.Hour)},
		{Name: "wifi-psk", Latest: 2, PCRBound: true, Sent: 2, SentAt: now, Error: "TPM import failed: wrong EK", ErrorAt: now},
	}
}

func groupsOf(s string) string { return s[:8] + " " + s[8:16] }

// TestDeviceSearch: the device list finds devices by a part of their
// serial, ID, owner, by whole EK fingerprint, filters by state, model,
// owner and group, and pages through all of them.
func TestDeviceSearch(t *testing.T) {
	f := newFixture(t, func(c *console.Config) { c.ScanBudget = 40 })
	op := f.login("olga", auth.RoleOperator)
	for i := range 130 {
		state := inventory.StateActive
		if i%10 == 0 {
			state = inventory.StatePending
		}
		f.addDevice(i, state, func(d *inventory.Device) {
			d.Owner = []string{"plant-a", "plant-b"}[i%2]
			d.Group = []string{"kiosks", "pumps", "gates"}[i%3]
			if i == 77 {
				d.Model = "cam-2"
			}
		})
	}
	rowRE := regexp.MustCompile(`<a class="mono" href="/devices/([0-9a-f]{64})">`)
	nextRE := regexp.MustCompile(`<a href="([^"]+)" rel="next">`)
	// collect follows the next links from path and returns the device IDs
	// listed, failing on a repeat.
	collect := func(path string) []string {
		t.Helper()
		var ids []string
		seen := map[string]bool{}
		for pages := 0; path != ""; pages++ {
			if pages > 20 {
				t.Fatalf("paging from %s does not end", path)
			}
			page := body(t, op.get(path), http.StatusOK)
			for _, m := range rowRE.FindAllStringSubmatch(page, -1) {
				if seen[m[1]] {
					t.Fatalf("device listed twice: %s", m[1])
				}
				seen[m[1]] = true
				ids = append(ids, m[1])
			}
			path = ""
			if m := nextRE.FindStringSubmatch(page); m != nil {
				path = html.UnescapeString(m[1])
			}
		}
		return ids
	}
	same := func(name string, got []string, want ...int) {
		t.Helper()
		var w []string
		for _, i := range want {
			w = append(w, devID(i))
		}
		if strings.Join(got, ",") != strings.Join(w, ",") {
			t.Errorf("%s: got %d devices %v, want %v", name, len(got), got, want)
		}
	}
	same("serial", collect("/devices?q=SN-0077"), 77)
	same("part of the ID", collect("/devices?q="+devID(42)[50:]), 42)
	same("whole EK fingerprint", collect("/devices?q="+ekFP(5)), 5)
	same("model", collect("/devices?model=cam-2"), 77)
	// The budget (40 records) stops a scan early: the first page says so
	// and offers to continue.
	page := body(t, op.get("/devices?q=SN-0077"), http.StatusOK)
	mustContain(t, page, "No match among the 40 devices examined so far.", "Continue searching")

	all := collect("/devices")
	if len(all) != 130 || !slices.IsSorted(all) {
		t.Fatalf("paging listed %d of 130 devices (sorted: %v)", len(all), slices.IsSorted(all))
	}
	// Owner, group and state together: i%2==0 (plant-a), i%3==1 (pumps),
	// i%10==0 (pending), so i%30 == 10.
	same("owner+group+state", collect("/devices?owner=PLANT-A&group=pumps&state=pending"), 10, 40, 70, 100)
	body(t, op.get("/devices?state=bogus"), http.StatusBadRequest)
}

// TestEnrollmentTokenShownOnce: creating an enrollment token shows its
// secret once; the secret works for enrollment and appears nowhere else.
// Only a user who may change what secrets target (secrets.write) is
// offered, and may mint, a token that grants a model or group.
func TestEnrollmentTokenShownOnce(t *testing.T) {
	f := newFixture(t, nil)
	op := f.login("olga", auth.RoleOperator)
	form := body(t, op.get("/enrollment"), http.StatusOK)
	mustContain(t, form, `action="/enrollment/tokens"`)
	mustNotContain(t, form, `name="model"`, `name="group"`)
	body(t, op.post("/enrollment/tokens", url.Values{"model": {"gw-1"}, "owner": {"plant-a"}, "ttl": {"1h"}}), http.StatusForbidden)
	w := op.post("/enrollment/tokens", url.Values{"owner": {"plant-a"}, "ttl": {"1h"}})
	page := body(t, w, http.StatusOK)
	m := regexp.MustCompile(`value="(sgt_[^"]+)"`).FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no token on the answer page:\n%s", page)
	}
	secret := m[1]
	if w.Header().Get("Cache-Control") != "no-store" {
		t.Error("the page with the secret may be cached")
	}
	tok, err := f.inv.CheckToken(t.Context(), secret, "gw-1", f.clock.Now())
	if err != nil || tok.Owner != "plant-a" || tok.Model != "" || tok.Group != "" {
		t.Fatalf("the shown token does not check: %+v %v", tok, err)
	}
	sec := f.login("sam", auth.RoleSecurityAdmin)
	mustContain(t, body(t, sec.get("/enrollment"), http.StatusOK), `name="model"`, `name="group"`)
	granting := body(t, sec.post("/enrollment/tokens", url.Values{"model": {"gw-1"}, "group": {"pumps"}, "ttl": {"1h"}}), http.StatusOK)
	mustContain(t, granting, "Model the device gets", "gw-1", "Group the device gets", "pumps")
	mustNotContain(t, body(t, op.get("/enrollment"), http.StatusOK), secret)
	viewer := f.login("vera", auth.RoleViewer)
	mustNotContain(t, body(t, viewer.get("/enrollment"), http.StatusOK), `action="/enrollment/tokens"`)
	body(t, viewer.post("/enrollment/tokens", nil), http.StatusForbidden)
}

// TestAPITokens: an operator creates an API token in the settings (shown
// once), it authenticates against the API, and revoking it ends that.
func TestAPITokens(t *testing.T) {
	f := newFixture(t, nil)
	op := f.login("olga", auth.RoleOperator)
	page := body(t, op.post("/settings/tokens", url.Values{"name": {"ci-deploy"}, "role": {"viewer"}, "ttl": {"24h"}}), http.StatusOK)
	m := regexp.MustCompile(`value="(sga_[^"]+)"`).FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no token secret on the page:\n%s", page)
	}
	me := func() int {
		r := newRequest(http.MethodGet, "/api/v1/me", nil)
		r.Header.Set("Authorization", "Bearer "+m[1])
		return f.serve(r).Code
	}
	if c := me(); c != http.StatusOK {
		t.Fatalf("new token: %d", c)
	}
	toks, err := f.auth.Tokens(t.Context(), "olga")
	if err != nil || len(toks) != 1 || toks[0].Role != auth.RoleViewer {
		t.Fatalf("tokens %+v %v", toks, err)
	}
	settings := body(t, op.get("/settings"), http.StatusOK)
	mustContain(t, settings, "ci-deploy", `action="/settings/tokens/`+toks[0].ID+`/revoke"`)
	mustNotContain(t, settings, m[1])
	redirect(t, op.post("/settings/tokens/"+toks[0].ID+"/revoke", nil))
	if c := me(); c != http.StatusUnauthorized {
		t.Fatalf("revoked token: %d", c)
	}
	// A refusal links back to the page the form was on.
	mustContain(t, body(t, op.post("/settings/tokens/apt_0000000000000000/revoke", nil), http.StatusNotFound), `<a href="/settings">`)
	// A scope above one's own role is refused by the API.
	mustContain(t, body(t, op.post("/settings/tokens", url.Values{"name": {"x"}, "role": {"admin"}}), http.StatusForbidden), "scope admin")
}

// TestUsers: only an admin manages users; a generated password is shown
// once and logs the user in.
func TestUsers(t *testing.T) {
	f := newFixture(t, nil)
	admin := f.login("ada", auth.RoleAdmin)
	sec := f.login("sam", auth.RoleSecurityAdmin)
	body(t, sec.post("/settings/users", url.Values{"name": {"eve"}, "role": {"admin"}}), http.StatusForbidden)
	page := body(t, admin.post("/settings/users", url.Values{"name": {"bob"}, "role": {"operator"}}), http.StatusOK)
	m := regexp.MustCompile(`id="secret" class="mono" readonly value="([^"]+)"`).FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no generated password:\n%s", page)
	}
	if _, err := f.auth.Login(context.Background(), "bob", html.UnescapeString(m[1]), "192.0.2.1"); err != nil {
		t.Fatalf("the shown password does not log in: %v", err)
	}
	redirect(t, admin.post("/settings/users/bob/disable", nil))
	if u, _ := f.auth.User(t.Context(), "bob"); !u.Disabled {
		t.Fatal("disable did not disable")
	}
	redirect(t, admin.post("/settings/users/bob/role", url.Values{"role": {"viewer"}}))
	if u, _ := f.auth.User(t.Context(), "bob"); u.Role != auth.RoleViewer {
		t.Fatalf("role %s", u.Role)
	}
	redirect(t, admin.post("/settings/users/bob/delete", nil))
	if _, err := f.auth.User(t.Context(), "bob"); err == nil {
		t.Fatal("delete did not delete")
	}
	mustContain(t, body(t, admin.post("/settings/users/ada/delete", nil), http.StatusConflict), "last enabled admin")
}

// TestCARotation: the CA buttons prepare, activate and retire generations
// through the API; a viewer sees none of them.
func TestCARotation(t *testing.T) {
	f := newFixture(t, nil)
	sec := f.login("sam", auth.RoleSecurityAdmin)
	viewer := f.login("vera", auth.RoleViewer)
	mustNotContain(t, body(t, viewer.get("/ca"), http.StatusOK), `action="/ca/`)
	redirect(t, sec.post("/ca/prepare", nil))
	page := body(t, sec.get("/ca"), http.StatusOK)
	mustContain(t, page, `action="/ca/activate"`, "prepared")
	mustNotContain(t, page, `action="/ca/prepare"`)
	redirect(t, sec.post("/ca/activate", url.Values{"rate": {"-1"}}))
	redirect(t, sec.post("/ca/retire", nil))
	var states []string
	for _, g := range f.ca.Generations() {
		states = append(states, g.State)
	}
	if strings.Join(states, ",") != "retired,active" {
		t.Fatalf("generations %v", states)
	}
	body(t, sec.post("/ca/activate", url.Values{"rate": {"fast"}}), http.StatusBadRequest)
}

// TestFallbackToAPI: paths the console does not serve reach the API.
func TestFallbackToAPI(t *testing.T) {
	f := newFixture(t, nil)
	w := f.get(nil, "/healthz")
	var v map[string]string
	if w.Code != http.StatusOK || json.Unmarshal(w.Body.Bytes(), &v) != nil || v["status"] != "ok" {
		t.Fatalf("/healthz: %d %s", w.Code, w.Body)
	}
	if w := f.get(nil, "/api/v1/devices"); w.Code != http.StatusUnauthorized || !strings.Contains(w.Header().Get("Content-Type"), "problem+json") {
		t.Fatalf("/api/v1/devices without credentials: %d %s", w.Code, w.Header().Get("Content-Type"))
	}
}

// TestBearerTokenIsNotALogin: an API token does not open console pages.
func TestBearerTokenIsNotALogin(t *testing.T) {
	f := newFixture(t, nil)
	f.login("olga", auth.RoleOperator)
	secret, _, err := f.auth.CreateToken(t.Context(), "olga", "script", auth.RoleOperator, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	r := newRequest(http.MethodGet, "/", nil)
	r.Header.Set("Authorization", "Bearer "+secret)
	body(t, f.serve(r), http.StatusOK) // a valid token is a principal like any other
	r = newRequest(http.MethodGet, "/", nil)
	r.Header.Set("Authorization", "Bearer sga_bogus")
	body(t, f.serve(r), http.StatusUnauthorized)
}

// TestExtensionPoints: a page, an overview card and a device section
// added through the Config appear for operators allowed to see them, and
// an extension action runs through the API like the built-in ones.
func TestExtensionPoints(t *testing.T) {
	f := newFixture(t, func(c *console.Config) {
		c.Pages = []console.Page{{
			Name: "campaigns", Path: "/campaigns", Nav: "Campaigns", Perm: auth.PermFirmwareWrite,
			Template: `{{define "content"}}<h1>Campaigns</h1><p id="n">{{.Data}}</p>{{if .Allowed "ext.tag"}}<form method="post" action="/campaigns/tag/{{pathseg "` + devID(1) + `"}}">{{template "csrf" .}}<button>tag</button></form>{{end}}{{end}}`,
			Load:     func(*http.Request, auth.Principal) (any, error) { return "3 running", nil },
			Actions: []console.Action{{Name: "ext.tag", Path: "/campaigns/tag/{id}", API: "PATCH /api/v1/devices/{id}",
				Body: func(url.Values) (any, error) { return map[string][]string{"tags": {"canary"}}, nil },
				Then: "/campaigns", OK: "Tagged."}},
		}}
		c.Cards = []console.CardFunc{func(*http.Request, auth.Principal) ([]console.Card, error) {
			return []console.Card{{Title: "Open alerts", Value: "7", Tone: "bad", Link: "/alerts"}, {Title: "Campaign c-1", Value: "40%", Done: 4, Total: 10}}, nil
		}}
		c.DeviceSections = []console.Section{{Name: "risk", Title: "Risk", Perm: auth.PermDevicesRead,
			Template: `{{define "section"}}<p>risk of {{short .Device.ID}}: {{.Data}}</p>{{end}}`,
			Load:     func(_ *http.Request, _ auth.Principal, d *inventory.Device) (any, error) { return 42, nil }}}
	})
	f.addDevice(1, inventory.StateActive, nil)
	op := f.login("olga", auth.RoleOperator)
	viewer := f.login("vera", auth.RoleViewer)

	mustContain(t, body(t, op.get("/"), http.StatusOK), `href="/campaigns"`, "Open alerts", `<progress max="10" value="4"`)
	mustNotContain(t, body(t, viewer.get("/"), http.StatusOK), `href="/campaigns"`)
	body(t, viewer.get("/campaigns"), http.StatusForbidden)
	mustContain(t, body(t, op.get("/campaigns"), http.StatusOK), `<p id="n">3 running</p>`, `aria-current="page"`)
	mustContain(t, body(t, viewer.get("/devices/"+devID(1)), http.StatusOK), "risk of "+devID(1)[:12]+"…: 42")
	if to := redirect(t, op.post("/campaigns/tag/"+devID(1), nil)); to != "/campaigns?ok=ext.tag" {
		t.Fatalf("redirect %q", to)
	}
	if tags := f.device(devID(1)).Tags; !slices.Equal(tags, []string{"canary"}) {
		t.Fatalf("tags %q", tags)
	}

	// A malformed extension is refused at New.
	_, err := console.New(console.Config{Auth: f.auth, API: f.api, Inventory: f.inv, Pages: []console.Page{{Name: "x", Path: "/x", Template: "<p>no content block</p>"}}})
	if err == nil {
		t.Fatal("a page without a content template was accepted")
	}
}

// TestOverviewSummaryIsCached: the overview counts the inventory at most
// once per SummaryMaxAge.
func TestOverviewSummaryIsCached(t *testing.T) {
	f := newFixture(t, func(c *console.Config) { c.SummaryMaxAge = time.Minute })
	op := f.login("olga", auth.RoleOperator)
	f.addDevice(1, inventory.StateActive, nil)
	mustContain(t, body(t, op.get("/"), http.StatusOK), "1 device ·")
	f.addDevice(2, inventory.StateActive, nil)
	mustContain(t, body(t, op.get("/"), http.StatusOK), "1 device ·")
	f.clock.Advance(61 * time.Second)
	mustContain(t, body(t, op.get("/"), http.StatusOK), "2 devices")
}

// TestNullOriginUnderNoReferrer: with "Referrer-Policy: no-referrer"
// browsers post forms with "Origin: null"; the console accepts that only
// when the browser's Sec-Fetch-Site says same-origin, and still requires
// the CSRF token.
func TestNullOriginUnderNoReferrer(t *testing.T) {
	f := newFixture(t, nil)
	op := f.login("olga", auth.RoleOperator)
	d := f.addDevice(1, inventory.StateActive, nil)
	post := func(site string, withToken bool) int {
		form := url.Values{"owner": {"site-" + site}}
		if withToken {
			form.Set(auth.CSRFField, op.csrf)
		}
		r := newRequest(http.MethodPost, "/devices/"+d.ID+"/edit", strings.NewReader(form.Encode()))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		r.Header.Set("Origin", "null")
		if site != "" {
			r.Header.Set("Sec-Fetch-Site", site)
		}
		r.AddCookie(op.cookie)
		return f.serve(r).Code
	}
	for _, c := range []struct {
		site      string
		withToken bool
		want      int
	}{
		{"", true, http.StatusForbidden},
		{"cross-site", true, http.StatusForbidden},
		{"same-site", true, http.StatusForbidden},
		{"same-origin", false, http.StatusForbidden},
		{"same-origin", true, http.StatusSeeOther},
	} {
		if got := post(c.site, c.withToken); got != c.want {
			t.Errorf("Sec-Fetch-Site %q, token %v: %d, want %d", c.site, c.withToken, got, c.want)
		}
	}
	if owner := f.device(d.ID).Owner; owner != "site-same-origin" {
		t.Fatalf("owner %q: a refused request changed it, or the accepted one did not", owner)
	}
	// The login form too.
	if _, err := f.auth.CreateUser(context.Background(), "alice", "alice's long password", auth.RoleAdmin); err != nil {
		t.Fatal(err)
	}
	r := loginRequest("alice", "alice's long password")
	r.Header.Set("Origin", "null")
	body(t, f.serve(r), http.StatusForbidden)
	r = loginRequest("alice", "alice's long password")
	r.Header.Set("Origin", "null")
	r.Header.Set("Sec-Fetch-Site", "same-origin")
	redirect(t, f.serve(r))
}
