package console_test

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/auth"
)

// TestChangePassword: the settings page offers every operator a password
// change form (CSRF token, current password, confirmation); a wrong
// current password or a mismatched confirmation is refused on the page;
// the change ends the user's other sessions and keeps this browser logged
// in under a new session cookie.
func TestChangePassword(t *testing.T) {
	f := newFixture(t, nil)
	me := f.login("vera", auth.RoleViewer)
	sess, err := f.auth.Login(context.Background(), "vera", "password of vera", "198.51.100.4")
	if err != nil {
		t.Fatal(err)
	}
	other := &session{f: f, user: "vera", cookie: f.auth.Cookie(sess), csrf: sess.CSRFToken}
	page := body(t, me.get("/settings"), http.StatusOK)
	mustContain(t, page, `action="/settings/password"`, `name="current_password"`, `autocomplete="current-password"`,
		`name="new_password"`, `name="confirm_password"`, `autocomplete="new-password"`, `name="csrf_token"`)

	const newPW = "vera's new long password"
	form := func(cur, pw, again string) url.Values {
		return url.Values{"current_password": {cur}, "new_password": {pw}, "confirm_password": {again}}
	}
	body(t, me.postRaw("/settings/password", form("password of vera", newPW, newPW)), http.StatusForbidden) // no CSRF token
	mustContain(t, body(t, me.post("/settings/password", form("password of vera", newPW, "something else entirely")), http.StatusBadRequest),
		"confirmation differ")
	mustContain(t, body(t, me.post("/settings/password", form("not vera's password", newPW, newPW)), http.StatusForbidden),
		"current password is wrong")
	f.clock.Advance(time.Minute) // the throttle's wait after a wrong password
	mustContain(t, body(t, me.post("/settings/password", form("password of vera", "short", "short")), http.StatusBadRequest),
		"at least 12 characters")

	w := me.post("/settings/password", form("password of vera", newPW, newPW))
	if to := redirect(t, w); to != "/settings?ok=user.password" {
		t.Fatalf("after the change redirected to %q", to)
	}
	var rotated *http.Cookie
	for _, c := range w.Result().Cookies() {
		if c.Name == me.cookie.Name && c.Value != "" {
			rotated = c
		}
	}
	if rotated == nil || rotated.Value == me.cookie.Value || !rotated.HttpOnly || !rotated.Secure || rotated.SameSite != http.SameSiteStrictMode {
		t.Fatalf("no rotated session cookie: %v", w.Result().Cookies())
	}
	for name, s := range map[string]*session{"the old cookie": me, "the other session": other} {
		if to := redirect(t, s.get("/settings")); !strings.HasPrefix(to, "/login") {
			t.Errorf("%s after the change: redirect to %q, want the login page", name, to)
		}
	}
	me.cookie = rotated
	mustContain(t, body(t, me.get("/settings?ok=user.password"), http.StatusOK), "Password changed.", "API tokens still work")
	if _, err := f.auth.Login(context.Background(), "vera", newPW, "192.0.2.99"); err != nil {
		t.Fatalf("login with the new password: %v", err)
	}
}
