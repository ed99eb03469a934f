package browser

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"testing"
	"time"

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

// runScript runs a node script, streams its output into the test log and
// fails the test when it exits non-zero.
func runScript(t *testing.T, script string, env []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", script)
	cmd.Env = env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		t.Log(sc.Text())
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("%s: %v\n%s", script, err, stderr.String())
	}
}
