package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/approval"
	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/secrets"
	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/internal/wait"
	"github.com/sigil-iot/sigil/pkg/config"
	"github.com/sigil-iot/sigil/sim/harness"
)

// requireCurl fails (CI=true) or skips without curl.
func requireCurl(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("curl"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("missing curl")
		}
		t.Skip("missing curl")
	}
}

// curlAPI calls the fleet's API with curl (verifying the fleet's CA) and
// returns the status and body.
func curlAPI(t testing.TB, f *harness.Fleet, method, path, token, body string, hdr ...string) (int, string) {
	t.Helper()
	args := []string{"-sS", "--cacert", f.CACertPath(), "-X", method, "-w", "\n%{http_code}"}
	if token != "" {
		args = append(args, "-H", "Authorization: Bearer "+token)
	}
	for _, h := range hdr {
		args = append(args, "-H", h)
	}
	if body != "" {
		args = append(args, "-H", "Content-Type: application/json", "--data-binary", body)
	}
	out, err := exec.Command("curl", append(args, f.APIURL()+path)...).Output()
	if err != nil {
		t.Fatalf("curl %s %s: %v", method, path, err)
	}
	i := bytes.LastIndexByte(out, '\n')
	code, err := strconv.Atoi(string(out[i+1:]))
	if err != nil {
		t.Fatalf("curl %s %s: no status in %q", method, path, out)
	}
	return code, string(out[:i])
}

// TestScopedTokenCannotMintAboveItsScope is issue 11's reproduction, with
// curl against a running fleet: a viewer-scoped token of the admin can
// neither mint a token above viewer (it got an admin token, 201) nor
// create users, nor revoke its owner's other tokens; it may mint a viewer
// token (never outliving itself) and revoke itself.
func TestScopedTokenCannotMintAboveItsScope(t *testing.T) {
	requireCurl(t)
	f := startFleet(t, nil)
	admin, _ := f.Client()
	ctx := context.Background()
	viewer, err := admin.CreateAPIToken(ctx, api.TokenRequest{Name: "dashboard", Role: auth.RoleViewer, TTL: config.Duration(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	for _, role := range auth.Roles()[1:] {
		code, body := curlAPI(t, f, "POST", "/api/v1/tokens", viewer.Secret, `{"name":"escalate","role":"`+string(role)+`","ttl":"8760h"}`)
		if code != http.StatusForbidden {
			t.Errorf("viewer-scoped token minting a %s token: %d %s, want 403", role, code, body)
		}
	}
	code, body := curlAPI(t, f, "POST", "/api/v1/users", viewer.Secret, `{"name":"mallory","role":"admin","password":"mallory's long password"}`)
	if code != http.StatusForbidden {
		t.Errorf("viewer-scoped token creating an admin user: %d %s, want 403", code, body)
	}
	if _, err := f.Auth.User(ctx, "mallory"); !errors.Is(err, auth.ErrNotFound) {
		t.Errorf("mallory exists: %v", err)
	}
	// The owner's other tokens: the admin token file's among them.
	var list struct{ Tokens []auth.Token }
	if err := admin.Do(ctx, "GET", "/api/v1/tokens", nil, &list); err != nil {
		t.Fatal(err)
	}
	for _, tok := range list.Tokens {
		if tok.ID == viewer.ID {
			continue
		}
		if code, body := curlAPI(t, f, "DELETE", "/api/v1/tokens/"+tok.ID, viewer.Secret, ""); code != http.StatusForbidden {
			t.Errorf("viewer-scoped token revoking its owner's %s token %s: %d %s, want 403", tok.Role, tok.Name, code, body)
		}
	}
	if _, err := admin.Me(ctx); err != nil {
		t.Fatalf("the admin token after the viewer token's attempts: %v", err)
	}
	// Within its scope: a viewer token, which does not outlive its parent.
	code, body = curlAPI(t, f, "POST", "/api/v1/tokens", viewer.Secret, `{"name":"child","role":"viewer","ttl":"8760h"}`)
	var child api.TokenCreated
	if err := json.Unmarshal([]byte(body), &child); code != http.StatusCreated || err != nil {
		t.Fatalf("viewer-scoped token minting a viewer token: %d %s", code, body)
	}
	if child.Expires.After(viewer.Expires) {
		t.Errorf("the child token expires %v, after its parent %v", child.Expires, viewer.Expires)
	}
	if code, body := curlAPI(t, f, "DELETE", "/api/v1/tokens/"+viewer.ID, viewer.Secret, ""); code != http.StatusNoContent {
		t.Fatalf("a token revoking itself: %d %s", code, body)
	}
	if code, _ := curlAPI(t, f, "GET", "/api/v1/me", viewer.Secret, ""); code != http.StatusUnauthorized {
		t.Fatalf("the revoked token still works: %d", code)
	}
}

// TestOnePersonCannotSatisfyTheTwoPersonRule is issue 11's reproduction of
// an admin approving their own request through a second account: under
// two_person_rule a new account is created disabled until a second person
// approves; an account created or changed after a request cannot approve
// it; and an approved action runs only if its requester still holds the
// permission when it runs.
func TestOnePersonCannotSatisfyTheTwoPersonRule(t *testing.T) {
	f := startFleet(t, func(c *server.Config) { c.TwoPersonRule = true })
	admin, _ := f.Client()
	admin.Justification = "rotate the plant Wi-Fi key"
	ctx := context.Background()
	// A second security admin who existed before any request.
	sam := secondAdmin(t, f, admin)
	sam.Justification = "sam's change"

	// The admin's request.
	_, err := admin.PutSecret(ctx, "wifi-psk", []byte("hunter2 hunter2"), secrets.Target{Model: "gw-1"}, false)
	var pe *api.PendingError
	if !errors.As(err, &pe) {
		t.Fatalf("secret change: %v", err)
	}
	secretReq := pe.Pending.Approval.ID

	// The attack: a second account, logged in with its password.
	var created struct {
		auth.User
		Approval *approval.Request `json:"approval"`
	}
	if err := admin.Do(ctx, "POST", "/api/v1/users", api.UserRequest{Name: "shadow", Role: auth.RoleSecurityAdmin, Password: "shadow's long password"}, &created); err != nil {
		t.Fatalf("create shadow: %v", err)
	}
	if !created.Disabled || created.Approval == nil || created.Approval.Kind != "users.change" {
		t.Fatalf("a user created under the two-person rule: %+v", created)
	}
	if shadow := loginClient(t, f, admin, "shadow", "shadow's long password"); shadow != nil {
		var r approval.Request
		err := shadow.Do(ctx, "POST", "/api/v1/approvals/"+secretReq+"/approve", api.DecisionRequest{}, &r)
		t.Fatalf("the new shadow account logged in before a second person approved it (its approval of the admin's request: %v %s)", err, r.State)
	}
	// Its enabling needs someone else: not the admin.
	var r approval.Request
	if err := admin.Do(ctx, "POST", "/api/v1/approvals/"+created.Approval.ID+"/approve", api.DecisionRequest{}, &r); status(err) != http.StatusForbidden {
		t.Fatalf("the admin approving the account they created: %v", err)
	}
	// Sam enables it. Shadow now logs in but may not approve what was
	// filed before it existed.
	if err := sam.Do(ctx, "POST", "/api/v1/approvals/"+created.Approval.ID+"/approve", api.DecisionRequest{}, &r); err != nil || r.State != approval.StateExecuted {
		t.Fatalf("sam enabling shadow: %+v %v", r, err)
	}
	shadow := loginClient(t, f, admin, "shadow", "shadow's long password")
	if shadow == nil {
		t.Fatal("shadow cannot log in after approval")
	}
	if err := shadow.Do(ctx, "POST", "/api/v1/approvals/"+secretReq+"/approve", api.DecisionRequest{}, &r); status(err) != http.StatusForbidden {
		t.Fatalf("an account created after the request approving it: %v", err)
	}
	var inbox api.ApprovalList
	if err := shadow.Do(ctx, "GET", "/api/v1/approvals", nil, &inbox); err != nil || len(inbox.Approvals) != 0 {
		t.Fatalf("shadow's inbox: %+v %v", inbox, err)
	}

	// An approver token is held for approval too: it works only once a
	// second person approved it.
	var tok struct {
		api.TokenCreated
		Pending  bool              `json:"pending"`
		Approval *approval.Request `json:"approval"`
	}
	if err := admin.Do(ctx, "POST", "/api/v1/tokens", api.TokenRequest{Name: "approver", Role: auth.RoleSecurityAdmin, TTL: config.Duration(time.Hour)}, &tok); err != nil || !tok.Pending || tok.Approval == nil {
		t.Fatalf("an approver token under the two-person rule: %+v %v", tok, err)
	}
	if code, _ := curlAPI(t, f, "GET", "/api/v1/me", tok.Secret, ""); code != http.StatusUnauthorized {
		t.Fatalf("an unapproved approver token: %d, want 401", code)
	}
	if err := sam.Do(ctx, "POST", "/api/v1/approvals/"+tok.Approval.ID+"/approve", api.DecisionRequest{}, &r); err != nil || r.State != approval.StateExecuted {
		t.Fatalf("sam approving the approver token: %+v %v", r, err)
	}
	if code, _ := curlAPI(t, f, "GET", "/api/v1/me", tok.Secret, ""); code != http.StatusOK {
		t.Fatalf("the approved approver token: %d, want 200", code)
	}

	// A role change is held; once approved, a demoted requester's earlier
	// request no longer runs when approved.
	if _, err := f.Auth.CreateUser(ctx, "olga", "olga's long password", auth.RoleSecurityAdmin); err != nil {
		t.Fatal(err)
	}
	olgaTok, _, err := f.Auth.CreateToken(ctx, "olga", "cli", auth.RoleSecurityAdmin, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	olga := api.NewClient(f.APIURL(), olgaTok, nil)
	olga.HTTP, olga.Justification = admin.HTTP, "olga's change"
	_, err = olga.PutSecret(ctx, "vpn-psk", []byte("a vpn key here"), secrets.Target{Model: "gw-1"}, false)
	if !errors.As(err, &pe) {
		t.Fatalf("olga's secret change: %v", err)
	}
	olgaReq := pe.Pending.Approval.ID
	demote := auth.RoleOperator
	err = admin.Do(ctx, "PATCH", "/api/v1/users/olga", api.UserPatch{Role: &demote}, nil)
	if !errors.As(err, &pe) || pe.Pending.Approval.Kind != "users.change" {
		t.Fatalf("demoting olga: %v", err)
	}
	if u, _ := f.Auth.User(ctx, "olga"); u.Role != auth.RoleSecurityAdmin {
		t.Fatalf("olga's role changed before approval: %s", u.Role)
	}
	if err := sam.Do(ctx, "POST", "/api/v1/approvals/"+pe.Pending.Approval.ID+"/approve", api.DecisionRequest{}, &r); err != nil || r.State != approval.StateExecuted {
		t.Fatalf("sam approving olga's demotion: %+v %v", r, err)
	}
	if err := sam.Do(ctx, "POST", "/api/v1/approvals/"+olgaReq+"/approve", api.DecisionRequest{}, &r); err != nil {
		t.Fatal(err)
	}
	if r.State != approval.StateFailed || !strings.Contains(r.Error, string(auth.PermSecretsWrite)) {
		t.Fatalf("a demoted requester's approved change: %+v", r)
	}
	if l, _ := admin.Secrets(ctx); len(l.Secrets) != 0 {
		t.Fatalf("secrets after the demoted requester's change: %+v", l.Secrets)
	}

	// Sam approves the admin's original request: it runs.
	if err := sam.Do(ctx, "POST", "/api/v1/approvals/"+secretReq+"/approve", api.DecisionRequest{}, &r); err != nil || r.State != approval.StateExecuted {
		t.Fatalf("sam approving the admin's request: %+v %v", r, err)
	}
}

// loginClient logs in with a password (POST /api/v1/login; waiting out the
// throttle an earlier failure caused) and returns a client using the
// session, or nil when the login is refused.
func loginClient(t testing.TB, f *harness.Fleet, base *api.Client, user, password string) *sessionClient {
	t.Helper()
	b, _ := json.Marshal(map[string]string{"user": user, "password": password})
	var resp *http.Response
	// Poll until the throttle admits the login.
	wait.Poll(wait.Timeout, func() bool {
		req, _ := http.NewRequest("POST", f.APIURL()+"/api/v1/login", bytes.NewReader(b))
		req.Header.Set("Content-Type", "application/json")
		var err error
		if resp, err = base.HTTP.Do(req); err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusTooManyRequests {
			return true
		}
		resp.Body.Close()
		return false
	})
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil
	}
	var lr auth.LoginResponse
	if err := json.NewDecoder(resp.Body).Decode(&lr); err != nil {
		t.Fatal(err)
	}
	return &sessionClient{f: f, hc: base.HTTP, cookies: resp.Cookies(), csrf: lr.CSRFToken}
}

// sessionClient calls the API with a browser session (cookie and CSRF
// token).
type sessionClient struct {
	f       *harness.Fleet
	hc      *http.Client
	cookies []*http.Cookie
	csrf    string
}

func (c *sessionClient) Do(ctx context.Context, method, path string, body, out any) error {
	var rd *bytes.Reader
	if body == nil {
		rd = bytes.NewReader(nil)
	} else {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequestWithContext(ctx, method, c.f.APIURL()+path, rd)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(auth.CSRFHeader, c.csrf)
	for _, ck := range c.cookies {
		req.AddCookie(ck)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		se := &api.StatusError{Status: resp.StatusCode}
		_ = json.NewDecoder(resp.Body).Decode(&se.Problem)
		return se
	}
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// TestLoginLockoutIsPerSource: five wrong passwords for the admin from one
// address (curl, as an attacker would) lock that address out for the
// admin, not the admin from elsewhere; the failures and the lockout are in
// the audit log, as are a denied read and a request whose target is longer
// than an audit entry's target may be.
func TestLoginLockoutIsPerSource(t *testing.T) {
	requireCurl(t)
	f := startFleet(t, nil)
	admin, _ := f.Client()
	ctx := context.Background()
	pw, err := os.ReadFile(f.Config.DataDir + "/" + server.AdminPasswordFile)
	if err != nil {
		t.Fatal(err)
	}
	password := strings.TrimSpace(string(pw))
	// login returns the status code and, with a 429, its Retry-After.
	login := func(from, password string) (int, time.Duration) {
		body, _ := json.Marshal(map[string]string{"user": "admin", "password": password})
		args := []string{"-4", "-sS", "-o", "/dev/null", "-w", "%{http_code} %header{retry-after}", "--cacert", f.CACertPath(),
			"--interface", from, "-H", "Content-Type: application/json", "--data-binary", string(body), f.APIURL() + "/api/v1/login"}
		out, err := exec.Command("curl", args...).Output()
		if err != nil {
			t.Fatalf("curl login from %s: %v", from, err)
		}
		code, after, _ := strings.Cut(strings.TrimSpace(string(out)), " ")
		c, _ := strconv.Atoi(code)
		s, _ := strconv.Atoi(after)
		return c, time.Duration(s) * time.Second
	}
	// The attacker, from 127.0.0.2: five wrong passwords, waiting out the
	// throttle between them (the server says how long).
	deadline := time.Now().Add(2 * time.Minute)
	for i := range 5 {
		code, after := login("127.0.0.2", "not the admin password "+strconv.Itoa(i))
		for code == http.StatusTooManyRequests && after > 0 && time.Now().Before(deadline) {
			// sleep: the attacker waits as long as the throttle's Retry-After says (the throttle is what is tested)
			time.Sleep(after)
			code, after = login("127.0.0.2", "not the admin password "+strconv.Itoa(i))
		}
		if code != http.StatusUnauthorized {
			t.Fatalf("wrong password %d: %d", i, code)
		}
	}
	if code, _ := login("127.0.0.2", password); code != http.StatusTooManyRequests {
		t.Fatalf("the attacker's address after five failures: %d, want 429", code)
	}
	// The real admin, from 127.0.0.1, is not locked out.
	if code, _ := login("127.0.0.1", password); code != http.StatusOK {
		t.Fatalf("the admin from another address: %d, want 200", code)
	}

	// A denied read, and a request with a 300-byte target.
	if _, err := admin.CreateUser(ctx, api.UserRequest{Name: "vera", Role: auth.RoleViewer}); err != nil {
		t.Fatal(err)
	}
	vera, _, err := f.Auth.CreateToken(ctx, "vera", "reader", auth.RoleViewer, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if code, _ := curlAPI(t, f, "GET", "/api/v1/users", vera, ""); code != http.StatusForbidden {
		t.Fatalf("a viewer listing users: %d", code)
	}
	long := strings.Repeat("x", 300)
	if code, _ := curlAPI(t, f, "PATCH", "/api/v1/devices/"+long, f.AdminToken(), `{"owner":"ops"}`); code != http.StatusNotFound {
		t.Fatalf("PATCH a device with a long ID: %d", code)
	}

	var l api.AuditList
	if err := admin.Do(ctx, "GET", "/api/v1/audit?limit=500", nil, &l); err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	var truncated *audit.Entry
	for i, e := range l.Entries {
		switch {
		case e.Action == "auth.login" && e.Outcome == audit.Denied && e.Target == "admin" && e.Details["source"] == "127.0.0.2":
			count["failed login"]++
		case e.Action == "auth.lockout" && e.Target == "admin" && e.Details["source"] == "127.0.0.2":
			count["lockout"]++
		case e.Action == "auth.login" && e.Outcome == audit.OK && e.Target == "admin" && e.Details["source"] == "127.0.0.1":
			count["login"]++
		case e.Action == "api.users.get" && e.Outcome == audit.Denied && e.Actor == audit.User("vera"):
			count["denied read"]++
		case e.Action == "api.devices.patch" && strings.HasPrefix(e.Target, "xxxx"):
			truncated = &l.Entries[i]
		}
	}
	for what, want := range map[string]int{"failed login": 5, "lockout": 1, "login": 1, "denied read": 1} {
		if count[what] != want {
			b, _ := json.MarshalIndent(l.Entries, "", " ")
			t.Errorf("audit log: %d %s entries, want %d\n%s", count[what], what, want, b)
		}
	}
	if truncated == nil || len(truncated.Target) > audit.MaxID || !strings.Contains(truncated.Target, "truncated") {
		t.Errorf("the long target's entry: %+v", truncated)
	}
}
