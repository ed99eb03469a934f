package sso_test

import (
	"context"
	"encoding/json"
	"errors"
	"html"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/audit/audittest"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/sso"
	"github.com/sigil-iot/sigil/fleet/sso/ssotest"
)

const (
	clientID = "sigil-console"
	secret   = "the client secret of the test"
)

// clock is a settable clock for the re-check interval.
type clock struct {
	mu  sync.Mutex
	off time.Duration
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.off)
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.off += d
}

// entries collects audit entries.
type entries struct{ audittest.Recorder }

// find returns the entries with action whose outcome is out.
func (e *entries) find(action string, out audit.Outcome) []audit.Entry {
	return e.Find(func(x audit.Entry) bool { return x.Action == action && x.Outcome == out })
}

// fleet is the console side of a test: the auth service behind the sso
// middleware on an https test server, and a provider.
type fleet struct {
	t     *testing.T
	srv   *httptest.Server
	auth  *auth.Service
	op    *ssotest.Provider
	clock *clock
	audit *entries
	anon  *entries // refused logins the provider did not vouch for

	cfg     sso.Config
	mux     *http.ServeMux
	handler atomic.Pointer[http.Handler]
}

// replica serves the fleet from now on with another sso.Service sharing
// the operators' store: a second replica, or the fleet after a restart.
func (f *fleet) replica() {
	f.t.Helper()
	svc, err := sso.New(f.cfg, sso.Options{Auth: f.auth, Audit: f.audit, Anonymous: f.anon, HTTPClient: f.op.Client(), Now: f.clock.Now})
	if err != nil {
		f.t.Fatal(err)
	}
	h := svc.Wrap(f.mux)
	f.handler.Store(&h)
}

type setup struct {
	noPasswordLogin bool
}

func start(t *testing.T, s setup) *fleet {
	t.Helper()
	f := &fleet{t: t, clock: &clock{}, audit: &entries{}, anon: &entries{}}
	f.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { (*f.handler.Load()).ServeHTTP(w, r) }))
	t.Cleanup(f.srv.Close)
	redirect := f.srv.URL + "/auth/sso/callback"
	f.op = ssotest.Start(t, ssotest.Client{ID: clientID, Secret: secret,
		RedirectURIs: []string{redirect}, PostLogoutRedirectURIs: []string{f.srv.URL + "/login?bye=1"}})

	a, err := auth.Open(auth.Config{
		Path: filepath.Join(t.TempDir(), "operators.db"), NoSync: true, Audit: f.audit,
		Params:          auth.Params{Memory: 64, Time: 1, Threads: 1, SaltLen: 16, KeyLen: 32},
		NoPasswordLogin: s.noPasswordLogin, SSOLoginPath: sso.LoginPath,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	f.auth = a

	secretFile := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secretFile, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := sso.Config{
		Issuer: f.op.Issuer, ClientID: clientID, ClientSecretFile: secretFile, RedirectURL: redirect,
		Scopes: []string{"profile", "offline_access", "groups"},
		Roles: []sso.GroupRole{
			{Group: "sigil-admins", Role: auth.RoleAdmin},
			{Group: "sigil-ops", Role: auth.RoleOperator},
		},
	}
	if s.noPasswordLogin {
		off := false
		cfg.PasswordLogin = &off
	}
	f.cfg = cfg
	mux := http.NewServeMux()
	f.mux = mux
	mux.Handle("GET /me", a.Require()(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, _ := auth.PrincipalFrom(r.Context())
		_ = json.NewEncoder(w).Encode(map[string]string{"user": p.User, "role": string(p.Role), "csrf": p.CSRFToken})
	})))
	mux.Handle("POST /api/v1/login", a.LoginHandler())
	mux.Handle("POST /logout", a.LogoutHandler())
	f.replica()
	return f
}

// browser is a client with its own cookies that trusts the test server.
func (f *fleet) browser() *http.Client {
	jar, err := cookiejar.New(nil)
	if err != nil {
		f.t.Fatal(err)
	}
	c := f.srv.Client()
	c.Jar = jar
	return c
}

// authorize starts a login in b and returns the provider's login page URL.
func (f *fleet) authorize(b *http.Client) *url.URL {
	f.t.Helper()
	resp, err := b.Get(f.srv.URL + sso.LoginPath + "?next=/me")
	if err != nil {
		f.t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Request.URL.String(), f.op.Issuer+"/login") {
		f.t.Fatalf("login start: %s at %s", resp.Status, resp.Request.URL)
	}
	return resp.Request.URL
}

// signIn signs in at the provider's login page; it stops before the
// fleet's callback and returns its URL.
func (f *fleet) signIn(b *http.Client, page *url.URL, user, password string) *url.URL {
	f.t.Helper()
	nb := *b
	nb.CheckRedirect = func(r *http.Request, _ []*http.Request) error {
		if r.URL.Host == strings.TrimPrefix(f.srv.URL, "https://") {
			return http.ErrUseLastResponse
		}
		return nil
	}
	resp, err := nb.PostForm(f.op.Issuer+"/login", url.Values{"id": {page.Query().Get("authRequestID")}, "username": {user}, "password": {password}})
	if err != nil {
		f.t.Fatal(err)
	}
	_ = resp.Body.Close()
	loc, err := resp.Location()
	if err != nil {
		f.t.Fatalf("sign in at the provider: %s, no redirect to the fleet: %v", resp.Status, err)
	}
	return loc
}

// get fetches u in b and returns the status and body.
func get(t *testing.T, b *http.Client, u string) (int, string) {
	t.Helper()
	resp, err := b.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// login runs the whole flow for user in a new browser and returns it.
func (f *fleet) login(user, password string) *http.Client {
	f.t.Helper()
	b := f.browser()
	cb := f.signIn(b, f.authorize(b), user, password)
	if code, body := get(f.t, b, cb.String()); code != http.StatusOK || !strings.Contains(body, `url=/me`) {
		f.t.Fatalf("callback: %d %s", code, body)
	}
	return b
}

// me returns who the fleet says b is, or the status refusing it.
func (f *fleet) me(b *http.Client) (int, map[string]string) {
	f.t.Helper()
	code, body := get(f.t, b, f.srv.URL+"/me")
	var m map[string]string
	if code == http.StatusOK {
		if err := json.Unmarshal([]byte(body), &m); err != nil {
			f.t.Fatal(err)
		}
	}
	return code, m
}

// TestLoginRoleFromGroup: a person of group sigil-ops logs in through the
// provider (PKCE S256) and is an operator; the audit log says which group
// granted the role.
func TestLoginRoleFromGroup(t *testing.T) {
	f := start(t, setup{})
	f.op.AddUser("alice", "alice's password", "staff", "sigil-ops")
	b := f.login("alice", "alice's password")
	if m := f.op.LastChallengeMethod(); m != "S256" {
		t.Errorf("PKCE method %q, want S256", m)
	}
	code, me := f.me(b)
	if code != http.StatusOK || me["user"] != "alice" || me["role"] != string(auth.RoleOperator) {
		t.Fatalf("after login: %d %v", code, me)
	}
	u, err := f.auth.User(context.Background(), "alice")
	if err != nil || u.External != f.op.Issuer {
		t.Errorf("account: %+v, %v", u, err)
	}
	logins := f.audit.find("auth.login", audit.OK)
	if len(logins) != 1 || logins[0].Details["group"] != "sigil-ops" || logins[0].Details["role"] != "operator" {
		t.Errorf("audit of the login: %+v", logins)
	}
}

// TestGroupRemovedNextRequestRefused: once the provider drops the person
// from every mapped group, their next request after the re-check interval
// is refused and the account is disabled; a new group changes the role.
func TestGroupRemovedNextRequestRefused(t *testing.T) {
	f := start(t, setup{})
	f.op.AddUser("alice", "pw-a", "sigil-ops")
	b := f.login("alice", "pw-a")

	f.op.SetGroups("alice", "sigil-admins")
	f.clock.Advance(2 * time.Minute)
	if code, me := f.me(b); code != http.StatusOK || me["role"] != string(auth.RoleAdmin) {
		t.Fatalf("after the move to sigil-admins: %d %v", code, me)
	}
	token, _, err := f.auth.CreateToken(context.Background(), "alice", "alice's script", auth.RoleViewer, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	f.op.SetGroups("alice", "staff")
	if code, _ := f.me(b); code != http.StatusOK {
		t.Fatalf("within the re-check interval the session holds: %d", code)
	}
	f.clock.Advance(2 * time.Minute)
	if code, me := f.me(b); code != http.StatusUnauthorized {
		t.Fatalf("after the group was removed: %d %v, want 401", code, me)
	}
	if u, err := f.auth.User(context.Background(), "alice"); err != nil || !u.Disabled {
		t.Errorf("account after the group was removed: %+v, %v", u, err)
	}
	req, _ := http.NewRequest(http.MethodGet, f.srv.URL+"/me", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := f.browser().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("alice's API token after the group was removed: %s, want 401", resp.Status)
	}
	if rs := f.audit.find("auth.sso.revoke", audit.Denied); len(rs) != 1 || !strings.Contains(rs[0].Reason, "no group maps") {
		t.Errorf("audit of the revocation: %+v", rs)
	}
	// Back in a group: a new login works again.
	f.op.SetGroups("alice", "sigil-ops")
	if code, me := f.me(f.login("alice", "pw-a")); code != http.StatusOK || me["role"] != "operator" {
		t.Errorf("login after the group came back: %d %v", code, me)
	}
}

// TestDisabledAtProviderRefused: a person disabled at the provider loses
// their session at the next re-check (the refresh is refused).
func TestDisabledAtProviderRefused(t *testing.T) {
	f := start(t, setup{})
	f.op.AddUser("carol", "pw-c", "sigil-ops")
	b := f.login("carol", "pw-c")
	f.op.Disable("carol")
	f.clock.Advance(2 * time.Minute)
	if code, _ := f.me(b); code != http.StatusUnauthorized {
		t.Fatalf("after the provider disabled the person: %d, want 401", code)
	}
}

// TestNoRoleDenied: a person in no mapped group gets no session.
func TestNoRoleDenied(t *testing.T) {
	f := start(t, setup{})
	f.op.AddUser("bob", "pw-b", "staff")
	b := f.browser()
	cb := f.signIn(b, f.authorize(b), "bob", "pw-b")
	code, body := get(t, b, cb.String())
	if code != http.StatusForbidden || !strings.Contains(body, "None of your groups") {
		t.Fatalf("callback: %d %s", code, body)
	}
	if code, _ := f.me(b); code != http.StatusUnauthorized {
		t.Errorf("after a refused login: %d", code)
	}
	refused := f.audit.find("auth.login", audit.Denied)
	if len(refused) != 1 || !strings.Contains(refused[0].Reason, "no group maps to a role") {
		t.Errorf("audit: %+v", refused)
	}
}

// TestBadStateRefused: a callback whose state is not the browser's, one
// from another browser, and a replayed one are refused.
func TestBadStateRefused(t *testing.T) {
	f := start(t, setup{})
	f.op.AddUser("alice", "pw-a", "sigil-ops")
	b := f.browser()
	cb := f.signIn(b, f.authorize(b), "alice", "pw-a")

	forged := *cb
	q := forged.Query()
	q.Set("state", "forged-state")
	forged.RawQuery = q.Encode()
	other := f.browser()
	for name, try := range map[string]func() (int, string){
		"forged state":  func() (int, string) { return get(t, b, forged.String()) },
		"other browser": func() (int, string) { return get(t, other, cb.String()) },
	} {
		if code, body := try(); code != http.StatusForbidden || !strings.Contains(body, "did not start in this browser") {
			t.Errorf("%s: %d %s", name, code, body)
		}
	}
	// The forged attempt cleared this browser's state cookie: the real
	// callback is refused too, and the login has to start again.
	if code, _ := get(t, b, cb.String()); code != http.StatusForbidden {
		t.Errorf("callback after a forged one: %d", code)
	}
	// A completed callback cannot be replayed, even with the browser's
	// state cookie: the provider takes a code once.
	b2 := f.browser()
	cb2 := f.signIn(b2, f.authorize(b2), "alice", "pw-a")
	u, _ := url.Parse(f.srv.URL)
	var stateCookie *http.Cookie
	for _, c := range b2.Jar.Cookies(u) {
		if c.Name == "__Host-sigil-sso" {
			stateCookie = c
		}
	}
	if stateCookie == nil {
		t.Fatal("no state cookie during the login")
	}
	if code, _ := get(t, b2, cb2.String()); code != http.StatusOK {
		t.Fatalf("callback: %d", code)
	}
	for _, c := range b2.Jar.Cookies(u) {
		if c.Name == "__Host-sigil-sso" {
			t.Errorf("state cookie still set after the callback")
		}
	}
	replay := f.browser()
	replay.Jar.SetCookies(u, []*http.Cookie{{Name: stateCookie.Name, Value: stateCookie.Value, Path: "/", Secure: true}})
	if code, body := get(t, replay, cb2.String()); code != http.StatusForbidden || !strings.Contains(body, "did not accept the login") {
		t.Errorf("replayed callback: %d %s", code, body)
	}
	// A state cookie made up by the browser does not open.
	forger := f.browser()
	forger.Jar.SetCookies(u, []*http.Cookie{{Name: stateCookie.Name, Value: cb2.Query().Get("state"), Path: "/", Secure: true}})
	if code, body := get(t, forger, cb2.String()); code != http.StatusForbidden || !strings.Contains(body, "did not start in this browser") {
		t.Errorf("made-up state cookie: %d %s", code, body)
	}
	if d := f.audit.find("auth.login", audit.Denied); len(d) != 0 {
		t.Errorf("refusals anyone can cause went to the audit log itself: %+v", d)
	}
	denied := f.anon.find("auth.login", audit.Denied)
	if len(denied) != 5 {
		t.Errorf("%d refused logins audited, want 5", len(denied))
	}
	for _, e := range denied {
		if !strings.Contains(e.Reason, "state") && !strings.Contains(e.Reason, "code exchange") {
			t.Errorf("refused login's reason: %q", e.Reason)
		}
	}
}

// TestWrongNonceRefused: an ID token whose nonce is not the login's is
// refused.
func TestWrongNonceRefused(t *testing.T) {
	f := start(t, setup{})
	f.op.AddUser("alice", "pw-a", "sigil-ops")
	f.op.WrongNonce(true)
	b := f.browser()
	cb := f.signIn(b, f.authorize(b), "alice", "pw-a")
	if code, body := get(t, b, cb.String()); code != http.StatusForbidden || !strings.Contains(body, "did not verify") {
		t.Fatalf("callback: %d %s", code, body)
	}
	refused := f.audit.find("auth.login", audit.Denied)
	if len(refused) != 1 || !strings.Contains(refused[0].Reason, "nonce") {
		t.Errorf("audit: %+v", refused)
	}
	if code, _ := f.me(b); code != http.StatusUnauthorized {
		t.Errorf("after a refused login: %d", code)
	}
}

// TestExpiredIDTokenRefused: an ID token past its expiry (as the fleet's
// clock says) is refused.
func TestExpiredIDTokenRefused(t *testing.T) {
	f := start(t, setup{})
	f.op.AddUser("alice", "pw-a", "sigil-ops")
	f.clock.Advance(time.Hour) // the provider's ID tokens live 5 minutes
	b := f.browser()
	cb := f.signIn(b, f.authorize(b), "alice", "pw-a")
	if code, _ := get(t, b, cb.String()); code != http.StatusForbidden {
		t.Fatalf("callback with an expired ID token: %d", code)
	}
	refused := f.anon.find("auth.login", audit.Denied)
	if len(refused) != 1 || !errorsMention(refused[0].Reason, "expired") {
		t.Errorf("audit: %+v", refused)
	}
}

// metaRefresh returns the target of a page's meta refresh.
func metaRefresh(t *testing.T, page string) string {
	t.Helper()
	m := regexp.MustCompile(`content="0;url=([^"]+)"`).FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no meta refresh in %s", page)
	}
	return html.UnescapeString(m[1])
}

func errorsMention(s, word string) bool { return strings.Contains(strings.ToLower(s), word) }

// TestLogout: logging out ends the session and sends the browser through
// the provider's end_session_endpoint back to the login page.
func TestLogout(t *testing.T) {
	f := start(t, setup{})
	f.op.AddUser("alice", "pw-a", "sigil-ops")
	b := f.login("alice", "pw-a")
	_, me := f.me(b)
	resp, err := b.PostForm(f.srv.URL+"/logout", url.Values{"csrf_token": {me["csrf"]}})
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	end := metaRefresh(t, string(page))
	if !strings.HasPrefix(end, f.op.Issuer+"/end_session?") || !strings.Contains(end, "id_token_hint=") {
		t.Fatalf("logout sends the browser to %q", end)
	}
	if resp, err = b.Get(end); err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if got := resp.Request.URL.String(); got != f.srv.URL+"/login?bye=1" {
		t.Errorf("after logout the browser is at %s", got)
	}
	if n := f.op.EndedSessions(); n != 1 {
		t.Errorf("provider sessions ended: %d, want 1", n)
	}
	if code, _ := f.me(b); code != http.StatusUnauthorized {
		t.Errorf("after logout: %d", code)
	}
	// Without the CSRF token, logout is refused and the session stays.
	b2 := f.login("alice", "pw-a")
	resp, err = b2.PostForm(f.srv.URL+"/logout", url.Values{})
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("logout without CSRF token: %s", resp.Status)
	}
	if code, _ := f.me(b2); code != http.StatusOK {
		t.Errorf("session after a refused logout: %d", code)
	}
}

// TestPasswordLoginOff: with password logins turned off, a local account's
// password is refused with a clear message; its API token still works, and
// single sign-on still logs people in.
func TestPasswordLoginOff(t *testing.T) {
	f := start(t, setup{noPasswordLogin: true})
	ctx := context.Background()
	if _, err := f.auth.CreateUser(ctx, "breakglass", "a long break-glass password", auth.RoleAdmin); err != nil {
		t.Fatal(err)
	}
	if _, err := f.auth.Login(ctx, "breakglass", "a long break-glass password", "192.0.2.1"); !errors.Is(err, auth.ErrPasswordLoginOff) {
		t.Errorf("Login: %v, want ErrPasswordLoginOff", err)
	}
	b := f.browser()
	resp, err := b.Post(f.srv.URL+"/api/v1/login", "application/json",
		strings.NewReader(`{"user":"breakglass","password":"a long break-glass password"}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "password login is turned off") {
		t.Errorf("password login: %s %s", resp.Status, body)
	}
	secret, _, err := f.auth.CreateToken(ctx, "breakglass", "script", auth.RoleViewer, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodGet, f.srv.URL+"/me", nil)
	req.Header.Set("Authorization", "Bearer "+secret)
	resp, err = b.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("API token with password login off: %s", resp.Status)
	}
	if r := f.audit.find("auth.login", audit.Denied); len(r) == 0 || r[0].Reason != "password login is turned off" {
		t.Errorf("audit: %+v", r)
	}
	f.op.AddUser("alice", "pw-a", "sigil-ops")
	if code, _ := f.me(f.login("alice", "pw-a")); code != http.StatusOK {
		t.Errorf("single sign-on with password login off: %d", code)
	}
}

// TestLocalAccountNotTakenOver: a provider user named like a local account
// is refused, and the local account keeps its password and role.
func TestLocalAccountNotTakenOver(t *testing.T) {
	f := start(t, setup{})
	ctx := context.Background()
	if _, err := f.auth.CreateUser(ctx, "admin2", "a long local password", auth.RoleViewer); err != nil {
		t.Fatal(err)
	}
	f.op.AddUser("admin2", "pw", "sigil-admins")
	b := f.browser()
	cb := f.signIn(b, f.authorize(b), "admin2", "pw")
	if code, body := get(t, b, cb.String()); code != http.StatusForbidden || !strings.Contains(body, "local account") {
		t.Fatalf("callback: %d %s", code, body)
	}
	u, err := f.auth.User(ctx, "admin2")
	if err != nil || u.Role != auth.RoleViewer || u.External != "" {
		t.Errorf("local account after the attempt: %+v %v", u, err)
	}
}

// TestExternalAccountHasNoPassword: an account made by single sign-on
// cannot log in with a password.
func TestExternalAccountHasNoPassword(t *testing.T) {
	f := start(t, setup{})
	f.op.AddUser("alice", "pw-a", "sigil-ops")
	f.login("alice", "pw-a")
	if _, err := f.auth.Login(context.Background(), "alice", "", "192.0.2.2"); !errors.Is(err, auth.ErrInvalidCredentials) {
		t.Errorf("password login of an external account: %v", err)
	}
}

// TestConfigValidate: incomplete configurations are refused.
func TestConfigValidate(t *testing.T) {
	off := false
	for name, c := range map[string]sso.Config{
		"password off without sso": {PasswordLogin: &off},
		"no client":                {Issuer: "https://idp.example.com"},
		"http issuer":              {Issuer: "http://idp.example.com", ClientID: "c", ClientSecretFile: "/nonexistent", RedirectURL: "https://f/cb", Roles: []sso.GroupRole{{Group: "g", Role: auth.RoleViewer}}},
		"unknown role":             {Issuer: "https://idp.example.com", ClientID: "c", ClientSecretFile: "/nonexistent", RedirectURL: "https://f/cb", Roles: []sso.GroupRole{{Group: "g", Role: "root"}}},
	} {
		if err := c.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if err := (sso.Config{}).Validate(); err != nil {
		t.Errorf("no sso: %v", err)
	}
}

// TestStateSharedByReplicas: the provider state is kept with the account,
// sealed, so that another replica (or the fleet after a restart) serves the
// session, re-checks it with the refresh token the first one stored, and
// refuses it once the group is removed; the first replica then picks up the
// rotated refresh token from the store.
func TestStateSharedByReplicas(t *testing.T) {
	f := start(t, setup{})
	f.op.AddUser("alice", "pw-a", "sigil-ops")
	b := f.login("alice", "pw-a")
	first := f.handler.Load()

	f.replica() // a restart, or another replica
	f.clock.Advance(2 * time.Minute)
	if code, me := f.me(b); code != http.StatusOK || me["role"] != "operator" {
		t.Fatalf("on the second replica: %d %v", code, me)
	}
	f.handler.Store(first) // back on the first: its cached refresh token was rotated
	f.clock.Advance(2 * time.Minute)
	if code, _ := f.me(b); code != http.StatusOK {
		t.Fatalf("on the first replica after the other's re-check: %d", code)
	}
	if rs := f.audit.find("auth.sso.revoke", audit.Denied); len(rs) != 0 {
		t.Fatalf("revocations: %+v", rs)
	}
	f.replica()
	f.op.SetGroups("alice")
	f.clock.Advance(2 * time.Minute)
	if code, _ := f.me(b); code != http.StatusUnauthorized {
		t.Fatalf("after the group was removed, on another replica: %d", code)
	}
	state, err := f.auth.ExternalState(context.Background(), "alice", f.op.Issuer)
	if err != nil || state != nil {
		t.Errorf("stored state after the revocation: %d bytes, %v", len(state), err)
	}
}

// TestStoredStateIsSealed: the provider's tokens are not readable in the
// operators' store.
func TestStoredStateIsSealed(t *testing.T) {
	f := start(t, setup{})
	f.op.AddUser("alice", "pw-a", "sigil-ops")
	f.login("alice", "pw-a")
	state, err := f.auth.ExternalState(context.Background(), "alice", f.op.Issuer)
	if err != nil || len(state) == 0 {
		t.Fatalf("stored state: %d bytes, %v", len(state), err)
	}
	for _, plain := range []string{"refresh_token", "access_token", "sub-", "eyJ"} {
		if strings.Contains(string(state), plain) {
			t.Errorf("the stored state shows %q", plain)
		}
	}
}

// TestLoginAcrossReplicas: a login started on one replica completes on
// another (the login in progress travels sealed in the state cookie).
func TestLoginAcrossReplicas(t *testing.T) {
	f := start(t, setup{})
	f.op.AddUser("alice", "pw-a", "sigil-ops")
	b := f.browser()
	page := f.authorize(b)
	f.replica()
	cb := f.signIn(b, page, "alice", "pw-a")
	if code, body := get(t, b, cb.String()); code != http.StatusOK {
		t.Fatalf("callback on the other replica: %d %s", code, body)
	}
	if code, me := f.me(b); code != http.StatusOK || me["role"] != "operator" {
		t.Errorf("after login: %d %v", code, me)
	}
}
