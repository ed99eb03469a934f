package auth

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sigil-iot/sigil/fleet/storage/kv"
	"github.com/sigil-iot/sigil/internal/runtest"
)

func TestSessionIdleExpiry(t *testing.T) {
	s, clk := newTestService(t, func(c *Config) { c.IdleTimeout = 30 * time.Minute })
	mustCreate(t, s, "alice", alicePW, RoleViewer)
	sess := mustLogin(t, s, "alice", alicePW)
	get := func() error {
		_, err := s.Authenticate(request(s, "GET", "/devices", "", &sess))
		return err
	}
	// Used every 29 minutes for hours: it stays alive.
	for i := range 10 {
		clk.Advance(29 * time.Minute)
		if err := get(); err != nil {
			t.Fatalf("request %d, 29 minutes after the previous one: %v", i, err)
		}
	}
	clk.Advance(30 * time.Minute)
	if err := get(); !errors.Is(err, ErrSessionExpired) {
		t.Fatalf("after 30 idle minutes: %v, want ErrSessionExpired", err)
	}
	// It is gone for good, not just refused once.
	clk.Advance(-time.Hour)
	if err := get(); !errors.Is(err, ErrSessionInvalid) {
		t.Fatalf("an expired session came back: %v", err)
	}
}

func TestSessionAbsoluteExpiry(t *testing.T) {
	s, clk := newTestService(t, func(c *Config) { c.IdleTimeout = time.Hour; c.MaxSessionAge = 8 * time.Hour })
	mustCreate(t, s, "alice", alicePW, RoleViewer)
	sess := mustLogin(t, s, "alice", alicePW)
	if want := clk.Now().Add(8 * time.Hour); !sess.Expires.Equal(want) {
		t.Fatalf("Expires = %v, want %v", sess.Expires, want)
	}
	for range 15 { // busy all day
		clk.Advance(30 * time.Minute)
		if _, err := s.Authenticate(request(s, "GET", "/devices", "", &sess)); err != nil {
			t.Fatal(err)
		}
	}
	clk.Advance(30 * time.Minute) // 8 hours after login
	_, err := s.Authenticate(request(s, "GET", "/devices", "", &sess))
	if !errors.Is(err, ErrSessionExpired) {
		t.Fatalf("8 hours after login: %v, want ErrSessionExpired", err)
	}
	w := serve(testMux(s), request(s, "GET", "/devices", "", &sess))
	if w.Code != http.StatusUnauthorized {
		t.Fatalf("status %d, want 401", w.Code)
	}
	if !strings.Contains(w.Header().Get("Set-Cookie"), "Max-Age=0") {
		t.Errorf("a refused session's cookie is not cleared: %q", w.Header().Get("Set-Cookie"))
	}
}

func TestSessionEndsWithPasswordChangeAndDisable(t *testing.T) {
	s, clk := newTestService(t, nil)
	ctx := context.Background()
	mustCreate(t, s, "root", bobPW, RoleAdmin)
	mustCreate(t, s, "alice", alicePW, RoleOperator)
	a1 := mustLogin(t, s, "alice", alicePW)
	a2 := mustLogin(t, s, "alice", alicePW)
	root := mustLogin(t, s, "root", bobPW)
	ap, err := s.Authenticate(request(s, "GET", "/", "", &a1))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.ChangeOwnPassword(ctx, ap, "wrong old password", "a brand new password", "192.0.2.1"); !errors.Is(err, ErrInvalidCredentials) {
		t.Fatalf("wrong old password: %v", err)
	}
	if _, err := s.Authenticate(request(s, "GET", "/", "", &a1)); err != nil {
		t.Fatalf("a failed change ended the session: %v", err)
	}
	if err := s.SetPassword(ctx, "alice", "a brand new password"); err != nil {
		t.Fatal(err)
	}
	for _, sess := range []Session{a1, a2} {
		if _, err := s.Authenticate(request(s, "GET", "/", "", &sess)); !errors.Is(err, ErrSessionInvalid) {
			t.Fatalf("session after a password change: %v", err)
		}
	}
	if _, err := s.Authenticate(request(s, "GET", "/", "", &root)); err != nil {
		t.Fatalf("another user's session ended: %v", err)
	}
	clk.Advance(time.Second) // the wait after the failed ChangeOwnPassword
	a3 := mustLogin(t, s, "alice", "a brand new password")
	if _, err := s.SetDisabled(ctx, "alice", true); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Authenticate(request(s, "GET", "/", "", &a3)); !errors.Is(err, ErrSessionInvalid) {
		t.Fatalf("session of a disabled user: %v", err)
	}
	if _, err := s.SetDisabled(ctx, "alice", false); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Authenticate(request(s, "GET", "/", "", &a3)); !errors.Is(err, ErrSessionInvalid) {
		t.Fatalf("a disabled user's session came back when she was enabled: %v", err)
	}
}

func TestSessionSurvivesRestartAndStoresNoSecret(t *testing.T) {
	s, clk := newTestService(t, nil)
	mustCreate(t, s, "alice", alicePW, RoleViewer)
	sess := mustLogin(t, s, "alice", alicePW)
	path := s.cfg.Path
	s.Close()
	db, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := base64.RawURLEncoding.DecodeString(sess.ID)
	for name, secret := range map[string][]byte{
		"session ID": []byte(sess.ID), "raw session ID": raw,
		"CSRF token": []byte(sess.CSRFToken), "password": []byte(alicePW),
	} {
		if bytes.Contains(db, secret) {
			t.Errorf("the database file contains the %s", name)
		}
	}
	sum := sha256.Sum256(raw)
	if !bytes.Contains(db, sum[:]) {
		t.Error("the database file does not hold the session ID's hash (test is not looking at the right file)")
	}
	s2, err := Open(Config{Path: path, Params: testParams, Now: clk.Now, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	p, err := s2.Authenticate(request(s2, "GET", "/", "", &sess))
	if err != nil || p.User != "alice" || p.Method != MethodSession || p.CSRFToken != sess.CSRFToken {
		t.Fatalf("after restart: %+v %v", p, err)
	}
}

func TestCookieAttributes(t *testing.T) {
	s, _ := newTestService(t, nil)
	mustCreate(t, s, "alice", alicePW, RoleViewer)
	w := serve(testMux(s), request(s, "POST", "/login", `{"user":"alice","password":"`+alicePW+`"}`, nil))
	if w.Code != http.StatusOK {
		t.Fatalf("login: %d %s", w.Code, w.Body)
	}
	raw := w.Header().Values("Set-Cookie")
	if len(raw) != 1 {
		t.Fatalf("Set-Cookie headers: %q", raw)
	}
	c, err := http.ParseSetCookie(raw[0])
	if err != nil {
		t.Fatal(err)
	}
	if c.Name != "__Host-sigil-session" || !c.HttpOnly || !c.Secure || c.SameSite != http.SameSiteStrictMode ||
		c.Path != "/" || c.Domain != "" {
		t.Fatalf("cookie %q lacks HttpOnly, Secure, SameSite=Strict, Path=/ or has a Domain", raw[0])
	}
	for _, attr := range []string{"HttpOnly", "Secure", "SameSite=Strict", "Path=/", "Max-Age=43200"} {
		if !strings.Contains(raw[0], attr) {
			t.Errorf("Set-Cookie %q lacks %s", raw[0], attr)
		}
	}
	if id, err := base64.RawURLEncoding.DecodeString(c.Value); err != nil || len(id) != 32 {
		t.Fatalf("session ID is not 256 bits of base64url: %q", c.Value)
	}
	if strings.Contains(w.Body.String(), c.Value) {
		t.Fatal("the login body repeats the session ID")
	}
	sess := Session{ID: c.Value}
	w = serve(testMux(s), request(s, "POST", "/logout", "", &sess, CSRFHeader, mustLoginResponse(t, w).CSRFToken))
	if w.Code != http.StatusNoContent {
		t.Fatalf("logout: %d %s", w.Code, w.Body)
	}
	cleared, err := http.ParseSetCookie(w.Header().Get("Set-Cookie"))
	if err != nil || cleared.Name != c.Name || cleared.MaxAge >= 0 || cleared.Value != "" {
		t.Fatalf("logout does not clear the cookie: %q", w.Header().Get("Set-Cookie"))
	}
	if _, err := s.Authenticate(request(s, "GET", "/", "", &sess)); !errors.Is(err, ErrSessionInvalid) {
		t.Fatalf("session after logout: %v", err)
	}
}

func mustLoginResponse(t *testing.T, w *httptest.ResponseRecorder) LoginResponse {
	t.Helper()
	var lr LoginResponse
	if err := json.Unmarshal(w.Body.Bytes(), &lr); err != nil || lr.CSRFToken == "" {
		t.Fatalf("login response %s: %v", w.Body, err)
	}
	return lr
}

// TestBrowserFlow drives login, reads, a CSRF-protected write and logout
// through a real TLS server with a cookie jar, as a browser would.
func TestBrowserFlow(t *testing.T) {
	s, _ := newTestService(t, nil)
	mustCreate(t, s, "alice", alicePW, RoleOperator)
	srv := httptest.NewTLSServer(testMux(s))
	defer srv.Close()
	jar, _ := cookiejar.New(nil)
	c := srv.Client()
	c.Jar = jar
	do := func(method, path, body string, hdr ...string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		req.Header.Set("Origin", srv.URL)
		req.Header.Set("Sec-Fetch-Site", "same-origin")
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		return resp
	}
	s.cfg.Origins = []string{srv.URL}
	if r := do("GET", "/devices", ""); r.StatusCode != http.StatusUnauthorized {
		t.Fatalf("before login: %d", r.StatusCode)
	}
	r := do("POST", "/login", `{"user":"alice","password":"`+alicePW+`"}`, "Content-Type", "application/json")
	if r.StatusCode != http.StatusOK {
		t.Fatalf("login: %d", r.StatusCode)
	}
	var lr LoginResponse
	if err := json.NewDecoder(r.Body).Decode(&lr); err != nil {
		t.Fatal(err)
	}
	if r := do("GET", "/devices", ""); r.StatusCode != http.StatusOK {
		t.Fatalf("read after login: %d", r.StatusCode)
	}
	if r := do("POST", "/devices", "{}"); r.StatusCode != http.StatusForbidden {
		t.Fatalf("write without CSRF token: %d", r.StatusCode)
	}
	if r := do("POST", "/devices", "{}", CSRFHeader, lr.CSRFToken); r.StatusCode != http.StatusOK {
		t.Fatalf("write with CSRF token: %d", r.StatusCode)
	}
	if r := do("POST", "/logout", "", CSRFHeader, lr.CSRFToken); r.StatusCode != http.StatusNoContent {
		t.Fatalf("logout: %d", r.StatusCode)
	}
	if r := do("GET", "/devices", ""); r.StatusCode != http.StatusUnauthorized {
		t.Fatalf("after logout: %d", r.StatusCode)
	}
}

func TestPruneAndRun(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, err := Open(Config{Path: t.TempDir() + "/auth.db", Params: testParams, NoSync: true,
			IdleTimeout: 10 * time.Minute, MaxSessionAge: time.Hour, PruneInterval: 5 * time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		mustCreate(t, s, "alice", alicePW, RoleViewer)
		mustLogin(t, s, "alice", alicePW)
		keep := mustLogin(t, s, "alice", alicePW)
		count := func() int {
			n, _ := countSessions(s)
			return n
		}
		if count() != 2 {
			t.Fatalf("%d sessions, want 2", count())
		}
		stop := runtest.Start(t, s.Run)
		for range 3 { // keep one session busy for 15 minutes
			time.Sleep(5 * time.Minute)
			if _, err := s.Authenticate(request(s, "GET", "/", "", &keep)); err != nil {
				t.Fatal(err)
			}
		}
		synctest.Wait()
		if n := count(); n != 1 {
			t.Fatalf("%d sessions after the idle one expired and Run pruned, want 1", n)
		}
		if err := stop(); err != nil {
			t.Fatalf("Run: %v", err)
		}
	})
}

func countSessions(s *Service) (int, error) {
	n := 0
	err := s.db.View(context.Background(), func(tx kv.Tx) error {
		return tx.Bucket(bucketSessions).ForEach(func(_, _ []byte) error { n++; return nil })
	})
	return n, err
}
