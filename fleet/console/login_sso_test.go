package console_test

import (
	"context"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/console"
)

// TestLoginPageSingleSignOn: with single sign-on the login page links to
// it; with password logins turned off it shows no password form, and a
// posted password is refused with a message saying why.
func TestLoginPageSingleSignOn(t *testing.T) {
	for _, noPassword := range []bool{false, true} {
		f := newFixture(t, func(c *console.Config) {
			a, err := auth.Open(auth.Config{Path: filepath.Join(t.TempDir(), "operators.db"), NoSync: true,
				Params:       auth.Params{Memory: 64, Time: 1, Threads: 1, SaltLen: 16, KeyLen: 32},
				SSOLoginPath: "/auth/sso/login", NoPasswordLogin: noPassword})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { a.Close() })
			c.Auth = a
		})
		page := body(t, f.get(nil, "/login?next=/devices"), http.StatusOK)
		mustContain(t, page, `href="/auth/sso/login?next=%2Fdevices"`, "Log in with single sign-on")
		if got := strings.Contains(page, `<label for="password">`); got == noPassword {
			t.Errorf("password login off %v: password form shown %v", noPassword, got)
		}
		if noPassword {
			mustContain(t, body(t, f.serve(loginRequest("alice", "alice's long password")), http.StatusForbidden),
				"Password login is turned off: log in with single sign-on.")
		}
	}
}

// TestSettingsExternalAccount: an operator signed in through the identity
// provider is told to change their password there, and gets no password
// form.
func TestSettingsExternalAccount(t *testing.T) {
	f := newFixture(t, nil)
	sess, err := f.auth.LoginExternal(context.Background(), "dana", "https://idp.example.com", auth.RoleOperator, "192.0.2.1")
	if err != nil {
		t.Fatal(err)
	}
	s := &session{f: f, user: "dana", cookie: f.auth.Cookie(sess), csrf: sess.CSRFToken}
	page := body(t, s.get("/settings"), http.StatusOK)
	mustContain(t, page, "managed by your identity provider")
	if strings.Contains(page, `name="current_password"`) {
		t.Error("password form shown to an external account")
	}
	local := f.login("lee", auth.RoleOperator)
	mustContain(t, body(t, local.get("/settings"), http.StatusOK), `name="current_password"`)
}
