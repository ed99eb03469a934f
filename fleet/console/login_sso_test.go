package console_test

import (
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
