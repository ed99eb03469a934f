package browser

import (
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/fleet/sso"
	"github.com/sigil-iot/sigil/fleet/sso/ssotest"
	"github.com/sigil-iot/sigil/pkg/config"
	"github.com/sigil-iot/sigil/sim/harness"
)

// TestSingleSignOnInChromium: an operator logs in to the console through
// a real OpenID Provider's login page (ssotest, on a loopback port) in
// Chromium (sso.spec.js), lands in the console with the role their group
// maps to, logs out through the provider, logs in again, and loses access
// at their next request once the provider drops them from the group; a
// new login is then refused.
func TestSingleSignOnInChromium(t *testing.T) {
	requireBrowser(t)
	installPlaywright(t)
	ctx := context.Background()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	apiAddr := ln.Addr().String()
	_ = ln.Close() // the fleet listens there: the provider must know its URL first
	_, port, _ := net.SplitHostPort(apiAddr)
	fleetURL := "https://localhost:" + port

	const clientID, secret = "sigil-console", "the browser test's client secret"
	op := ssotest.Start(t, ssotest.Client{ID: clientID, Secret: secret,
		RedirectURIs: []string{fleetURL + "/auth/sso/callback"}, PostLogoutRedirectURIs: []string{fleetURL + "/login?bye=1"}})
	op.AddUser("dana", "dana's provider password", "staff", "sigil-ops")
	secretFile := filepath.Join(t.TempDir(), "client-secret")
	if err := os.WriteFile(secretFile, []byte(secret), 0o600); err != nil {
		t.Fatal(err)
	}

	f, err := harness.StartFleet(ctx, server.Config{DataDir: t.TempDir(), APIAddr: apiAddr, SSO: sso.Config{
		Issuer: op.Issuer, ClientID: clientID, ClientSecretFile: secretFile, RedirectURL: fleetURL + "/auth/sso/callback",
		Scopes: []string{"profile", "offline_access", "groups"},
		Roles:  []sso.GroupRole{{Group: "sigil-admins", Role: auth.RoleAdmin}, {Group: "sigil-ops", Role: auth.RoleOperator}},
		// Every request asks the provider again: the group's removal
		// shows at the very next one.
		RecheckEvery: config.Duration(time.Nanosecond),
	}}, logger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Stop() })
	if f.APIURL() != fleetURL {
		t.Fatalf("the fleet serves at %s, not %s", f.APIURL(), fleetURL)
	}

	// The script asks for the group's removal here, between two steps.
	control := http.NewServeMux()
	control.HandleFunc("POST /remove-group", func(w http.ResponseWriter, _ *http.Request) {
		op.SetGroups("dana", "staff")
		w.WriteHeader(http.StatusNoContent)
	})
	cl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	csrv := &http.Server{Handler: control, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = csrv.Serve(cl) }()
	t.Cleanup(func() { _ = csrv.Close() })

	runScript(t, "sso.spec.js", append(os.Environ(),
		"SIGIL_URL="+fleetURL, "SIGIL_CHROMIUM="+chromiumPath, "SIGIL_IDP="+op.Issuer,
		"SIGIL_CONTROL=http://"+cl.Addr().String(), "SIGIL_USER=dana", "SIGIL_PASSWORD=dana's provider password"))

	if n := op.EndedSessions(); n != 1 {
		t.Errorf("sessions ended at the provider: %d, want 1", n)
	}
	u, err := f.Auth.User(ctx, "dana")
	if err != nil || !u.Disabled || u.External != op.Issuer {
		t.Errorf("dana's account after the group was removed: %+v, %v", u, err)
	}
}
