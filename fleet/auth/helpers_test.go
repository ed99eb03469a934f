package auth

import (
	"context"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/internal/clocktest"
)

func newClock() *clocktest.Clock {
	return clocktest.New(time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC))
}

// testParams are cheap argon2id parameters for tests.
var testParams = Params{Memory: 64, Time: 1, Threads: 1, SaltLen: 16, KeyLen: 32}

const (
	alicePW = "correct horse battery"
	bobPW   = "another long password"
)

// newTestService opens a service in a temporary directory with a fake
// clock; mod may adjust the config.
func newTestService(t testing.TB, mod func(*Config)) (*Service, *clocktest.Clock) {
	t.Helper()
	clk := newClock()
	cfg := Config{
		Path:   filepath.Join(t.TempDir(), "auth.db"),
		Params: testParams,
		Now:    clk.Now,
		NoSync: true,
	}
	if mod != nil {
		mod(&cfg)
	}
	s, err := openBackend(t, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, clk
}

func mustCreate(t testing.TB, s *Service, name, pw string, role Role) {
	t.Helper()
	if _, err := s.CreateUser(context.Background(), name, pw, role); err != nil {
		t.Fatal(err)
	}
}

func mustLogin(t testing.TB, s *Service, name, pw string) Session {
	t.Helper()
	sess, err := s.Login(context.Background(), name, pw, "192.0.2.1")
	if err != nil {
		t.Fatalf("login %s: %v", name, err)
	}
	return sess
}

// testMux serves the routes the HTTP tests use: each answers 200 with the
// principal's user name.
func testMux(s *Service) *http.ServeMux {
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, _ := PrincipalFrom(r.Context())
		w.Write([]byte(p.User))
	})
	mux := http.NewServeMux()
	mux.Handle("POST /login", s.LoginHandler())
	mux.Handle("POST /logout", s.LogoutHandler())
	mux.Handle("GET /devices", s.Require(PermDevicesRead)(ok))
	mux.Handle("POST /devices", s.Require(PermDevicesWrite)(ok))
	mux.Handle("GET /me", s.Require()(ok))
	for _, p := range Permissions() {
		mux.Handle("POST /perm/"+string(p), s.Require(p)(ok))
	}
	return mux
}

// request builds a request from the console's origin (https://fleet.test)
// with a session cookie (if sess is not nil) and the given headers.
func request(s *Service, method, target, body string, sess *Session, hdr ...string) *http.Request {
	r := httptest.NewRequest(method, "https://fleet.test"+target, strings.NewReader(body))
	r.RemoteAddr = "192.0.2.1:40000"
	if sess != nil {
		r.AddCookie(&http.Cookie{Name: s.cfg.CookieName, Value: sess.ID})
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Set(hdr[i], hdr[i+1])
	}
	return r
}

func serve(h http.Handler, r *http.Request) *httptest.ResponseRecorder {
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}
