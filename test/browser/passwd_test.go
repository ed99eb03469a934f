package browser

import (
	"context"
	"errors"
	"os"
	"testing"

	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/sim/harness"
)

// TestPasswordChangeInChromium: a viewer logged in from two browsers
// changes their password on the settings page of one (passwd.spec.js):
// that browser stays logged in, the other is logged out and logs in with
// the new password. The fleet then accepts only the new password.
func TestPasswordChangeInChromium(t *testing.T) {
	requireBrowser(t)
	installPlaywright(t)
	ctx := context.Background()
	f, err := harness.StartFleet(ctx, server.Config{DataDir: t.TempDir()}, logger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Stop() })
	const user, oldPW, newPW = "pat", "pat's browser test password", "pat's new browser test password"
	if _, err := f.Auth.CreateUser(ctx, user, oldPW, auth.RoleViewer); err != nil {
		t.Fatal(err)
	}

	runScript(t, "passwd.spec.js", append(os.Environ(),
		"SIGIL_URL="+f.APIURL(), "SIGIL_CHROMIUM="+chromiumPath,
		"SIGIL_USER="+user, "SIGIL_PASSWORD="+oldPW, "SIGIL_NEW_PASSWORD="+newPW))

	if _, err := f.Auth.Login(ctx, user, oldPW, "192.0.2.50"); !errors.Is(err, auth.ErrInvalidCredentials) {
		t.Errorf("login with the old password after the change: %v", err)
	}
	if _, err := f.Auth.Login(ctx, user, newPW, "192.0.2.51"); err != nil {
		t.Errorf("login with the new password: %v", err)
	}
}
