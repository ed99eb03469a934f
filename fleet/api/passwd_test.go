package api

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/internal/wait"
)

// browser is a logged-in session as the console's browser holds it.
type browser struct {
	cookie *http.Cookie
	csrf   string
}

// login logs name in with POST /api/v1/login.
func (f *opsFixture) login(t *testing.T, name, pw string) browser {
	t.Helper()
	resp, body := f.do(t, "POST", "/api/v1/login", "", map[string]string{"user": name, "password": pw})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("login %s: %d %s", name, resp.StatusCode, body)
	}
	var lr auth.LoginResponse
	if err := json.Unmarshal([]byte(body), &lr); err != nil {
		t.Fatal(err)
	}
	return browser{cookie: sessionCookie(t, resp), csrf: lr.CSRFToken}
}

func sessionCookie(t *testing.T, resp *http.Response) *http.Cookie {
	t.Helper()
	for _, c := range resp.Cookies() {
		if c.Value != "" && c.MaxAge >= 0 {
			return c
		}
	}
	t.Fatalf("no session cookie in %v", resp.Header.Values("Set-Cookie"))
	return nil
}

// send calls the API with b's session (and its CSRF token unless csrf is
// false).
func (f *opsFixture) send(t *testing.T, b browser, method, path string, body any, csrf bool) (*http.Response, string) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		raw, _ := json.Marshal(body)
		rd = strings.NewReader(string(raw))
	}
	req, _ := http.NewRequest(method, f.srv.URL+path, rd)
	req.AddCookie(b.cookie)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if csrf {
		req.Header.Set(auth.CSRFHeader, b.csrf)
	}
	resp, err := f.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	sb, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(sb)
}

// TestChangeOwnPasswordAPI: POST /api/v1/users/me/password needs the
// session's CSRF token and the current password, follows the password
// rules, ends the user's other sessions and rotates the caller's (a new
// cookie and CSRF token), leaves API tokens working, answers a guess
// right after a wrong one with 429, and is audited.
func TestChangeOwnPasswordAPI(t *testing.T) {
	f := newOpsFixture(t, false)
	const path = "/api/v1/users/me/password"
	const alicePW, newPW = "alice's long password", "alice's new long password"
	if _, err := f.auth.CreateUser(context.Background(), "alice", alicePW, auth.RoleViewer); err != nil {
		t.Fatal(err)
	}
	here, elsewhere := f.login(t, "alice", alicePW), f.login(t, "alice", alicePW)
	tok, _, err := f.auth.CreateToken(t.Context(), "alice", "cli", auth.RoleViewer, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	good := PasswordRequest{Current: alicePW, New: newPW}

	if resp, body := f.send(t, here, "POST", path, good, false); resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "CSRF") {
		t.Fatalf("without the CSRF token: %d %s", resp.StatusCode, body)
	}
	if resp, body := f.send(t, here, "POST", path, PasswordRequest{Current: alicePW, New: "short"}, true); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("a short new password: %d %s", resp.StatusCode, body)
	}
	resp, body := f.send(t, here, "POST", path, PasswordRequest{Current: "a wrong guess!", New: newPW}, true)
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "current password is wrong") {
		t.Fatalf("a wrong current password: %d %s", resp.StatusCode, body)
	}
	resp, body = f.send(t, here, "POST", path, good, true)
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("right after a wrong guess: %d %s (Retry-After %q), want 429", resp.StatusCode, body, resp.Header.Get("Retry-After"))
	}
	for _, b := range []browser{here, elsewhere} {
		if resp, body := f.send(t, b, "GET", "/api/v1/me", nil, false); resp.StatusCode != http.StatusOK {
			t.Fatalf("a refused change ended a session: %d %s", resp.StatusCode, body)
		}
	}

	// The throttle waits a second after a failure (the login counters).
	var changed PasswordChanged
	resp, body = pastThrottle(func() (*http.Response, string) { return f.send(t, here, "POST", path, good, true) })
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("change: %d %s", resp.StatusCode, body)
	}
	if err := json.Unmarshal([]byte(body), &changed); err != nil {
		t.Fatal(err)
	}
	rotated := browser{cookie: sessionCookie(t, resp), csrf: changed.CSRFToken}
	if changed.SessionsEnded != 2 || rotated.cookie.Value == here.cookie.Value || rotated.csrf == here.csrf || !strings.Contains(changed.Note, "API tokens are not affected") {
		t.Fatalf("answer %+v, cookie rotated %v", changed, rotated.cookie.Value != here.cookie.Value)
	}
	for name, b := range map[string]browser{"the old cookie": here, "the other session": elsewhere} {
		if resp, _ := f.send(t, b, "GET", "/api/v1/me", nil, false); resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s after the change: %d, want 401", name, resp.StatusCode)
		}
	}
	if resp, body := f.send(t, rotated, "POST", "/api/v1/tokens", TokenRequest{Name: "after", Role: auth.RoleViewer}, true); resp.StatusCode != http.StatusCreated {
		t.Errorf("the rotated session with its new CSRF token: %d %s", resp.StatusCode, body)
	}
	if resp, body := f.do(t, "GET", "/api/v1/me", tok, nil); resp.StatusCode != http.StatusOK {
		t.Errorf("alice's API token after the change: %d %s", resp.StatusCode, body)
	}
	if resp, _ := f.do(t, "POST", "/api/v1/login", "", map[string]string{"user": "alice", "password": alicePW}); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("login with the old password: %d", resp.StatusCode)
	}
	if resp, body := pastThrottle(func() (*http.Response, string) {
		return f.do(t, "POST", "/api/v1/login", "", map[string]string{"user": "alice", "password": newPW})
	}); resp.StatusCode != http.StatusOK {
		t.Errorf("login with the new password: %d %s", resp.StatusCode, body)
	}

	// With an API token (the CLI): the current password is required too.
	if resp, body := f.do(t, "POST", path, tok, PasswordRequest{Current: alicePW, New: "a third long password"}); resp.StatusCode != http.StatusForbidden {
		t.Errorf("a token with the old password: %d %s", resp.StatusCode, body)
	}

	page, err := f.log.List(t.Context(), audit.Filter{Action: "api.users.me.password.post", Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	outcomes := map[audit.Outcome]int{}
	for _, e := range page.Entries {
		if e.Actor != audit.User("alice") {
			continue // the CSRF refusal names no one: the session was not accepted
		}
		outcomes[e.Outcome]++
	}
	if outcomes[audit.OK] != 1 || outcomes[audit.Denied] != 2 {
		t.Errorf("audit outcomes %v, want 1 ok and the refusals", outcomes)
	}
}

// pastThrottle calls do until it answers something else than 429 (the
// throttle's wait after a failure is a second), for at most 10 s.
func pastThrottle(do func() (*http.Response, string)) (*http.Response, string) {
	var (
		resp *http.Response
		body string
	)
	wait.Poll(10*time.Second, func() bool {
		resp, body = do()
		return resp.StatusCode != http.StatusTooManyRequests
	})
	return resp, body
}

// TestJSONBodyNeedsContentType: a body sent as curl -d sends it (a form's
// content type) is refused with 415, and the answer says what to send.
func TestJSONBodyNeedsContentType(t *testing.T) {
	f := newOpsFixture(t, false)
	req, _ := http.NewRequest("POST", f.srv.URL+"/api/v1/tokens", strings.NewReader(`{"name":"prometheus","role":"viewer","ttl":"8760h"}`))
	req.Header.Set("Authorization", "Bearer "+f.scoped[auth.RoleAdmin])
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := f.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnsupportedMediaType || !strings.Contains(string(b), "Content-Type: application/json") {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
}
