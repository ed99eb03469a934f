package auth

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

func bearer(s *Service, method, path, secret string) *http.Request {
	return request(s, method, path, "{}", nil, "Authorization", "Bearer "+secret)
}

func TestTokenShownOnceAndScoped(t *testing.T) {
	s, clk := newTestService(t, nil)
	mustCreate(t, s, "root", alicePW, RoleAdmin)
	secret, tok, err := s.CreateToken(t.Context(), "root", "read-only dashboard", RoleViewer, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(secret, TokenPrefix) || len(secret) != len(TokenPrefix)+43 {
		t.Fatalf("secret %q is not sga_ + 256 bits", secret)
	}
	if tok.Role != RoleViewer || tok.Owner != "root" || !tok.Expires.Equal(clk.Now().Add(24*time.Hour)) {
		t.Fatalf("token %+v", tok)
	}
	// Shown once: no listing or lookup returns it, and the file lacks it.
	list, err := s.Tokens(t.Context(), "root")
	if err != nil || len(list) != 1 || list[0].ID != tok.ID {
		t.Fatalf("Tokens: %+v %v", list, err)
	}
	mux := testMux(s)
	if w := serve(mux, bearer(s, "GET", "/devices", secret)); w.Code != http.StatusOK || w.Body.String() != "root" {
		t.Fatalf("viewer token reads: %d %s", w.Code, w.Body)
	}
	w := serve(mux, bearer(s, "POST", "/devices", secret))
	if w.Code != http.StatusForbidden {
		t.Fatalf("viewer token writes: %d", w.Code)
	}
	if p := decodeProblem(t, w.Body.Bytes()); !strings.Contains(p.Detail, "devices.write") {
		t.Errorf("403 detail does not name the missing permission: %q", p.Detail)
	}
	s.Close()
	db, err := os.ReadFile(s.cfg.Path)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(db, []byte(secret)) || bytes.Contains(db, []byte(strings.TrimPrefix(secret, TokenPrefix))) {
		t.Fatal("the database file holds the token secret")
	}
}

func TestTokenExpiryRevocationAndLastUsed(t *testing.T) {
	s, clk := newTestService(t, nil)
	mustCreate(t, s, "alice", alicePW, RoleOperator)
	secret, tok, err := s.CreateToken(t.Context(), "alice", "ci", RoleOperator, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	secret2, tok2, err := s.CreateToken(t.Context(), "alice", "ci 2", RoleOperator, 48*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	mux := testMux(s)
	if got, _ := s.Token(t.Context(), tok.ID); !got.LastUsed.IsZero() {
		t.Fatal("a new token has been used")
	}
	clk.Advance(10 * time.Minute)
	if w := serve(mux, bearer(s, "POST", "/devices", secret)); w.Code != http.StatusOK {
		t.Fatalf("operator token writes: %d %s", w.Code, w.Body)
	}
	if got, _ := s.Token(t.Context(), tok.ID); !got.LastUsed.Equal(clk.Now()) {
		t.Fatalf("LastUsed = %v, want %v", got.LastUsed, clk.Now())
	}
	clk.Advance(50 * time.Minute)
	w := serve(mux, bearer(s, "GET", "/devices", secret))
	if w.Code != http.StatusUnauthorized || !strings.Contains(w.Header().Get("WWW-Authenticate"), "invalid_token") {
		t.Fatalf("expired token: %d %q", w.Code, w.Header().Get("WWW-Authenticate"))
	}
	if p := decodeProblem(t, w.Body.Bytes()); !strings.Contains(p.Detail, "expired") {
		t.Errorf("detail %q", p.Detail)
	}
	if _, err := s.Authenticate(bearer(s, "GET", "/", secret)); !errors.Is(err, ErrTokenExpired) {
		t.Fatalf("expired: %v", err)
	}

	if w := serve(mux, bearer(s, "GET", "/devices", secret2)); w.Code != http.StatusOK {
		t.Fatalf("second token: %d", w.Code)
	}
	if _, err := s.RevokeToken(t.Context(), tok2.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Authenticate(bearer(s, "GET", "/", secret2)); !errors.Is(err, ErrTokenInvalid) {
		t.Fatalf("revoked: %v", err)
	}
	if got, _ := s.Token(t.Context(), tok2.ID); got.Revoked.IsZero() || got.Active(clk.Now()) {
		t.Fatalf("revoked token %+v", got)
	}
}

func TestTokenFollowsItsOwner(t *testing.T) {
	s, _ := newTestService(t, nil)
	mustCreate(t, s, "root", alicePW, RoleAdmin)
	mustCreate(t, s, "alice", alicePW, RoleAdmin)
	if _, _, err := s.CreateToken(t.Context(), "root", "x", Role("superuser"), time.Hour); !errors.Is(err, ErrInvalid) {
		t.Fatalf("unknown role: %v", err)
	}
	secret, _, err := s.CreateToken(t.Context(), "alice", "admin script", RoleAdmin, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	mux := testMux(s)
	if w := serve(mux, bearer(s, "POST", "/perm/users.admin", secret)); w.Code != 200 {
		t.Fatalf("admin token: %d", w.Code)
	}
	// Demoted: the token keeps only what both its scope and the owner's new
	// role grant.
	if _, err := s.SetRole(t.Context(), "alice", RoleViewer); err != nil {
		t.Fatal(err)
	}
	if w := serve(mux, bearer(s, "POST", "/perm/users.admin", secret)); w.Code != 403 {
		t.Fatalf("token of a demoted owner keeps users.admin: %d", w.Code)
	}
	if w := serve(mux, bearer(s, "POST", "/perm/devices.read", secret)); w.Code != 200 {
		t.Fatalf("token of a demoted owner: %d", w.Code)
	}
	// A viewer cannot mint an operator token.
	if _, _, err := s.CreateToken(t.Context(), "alice", "escalate", RoleOperator, time.Hour); !errors.Is(err, ErrForbidden) {
		t.Fatalf("token above the owner's role: %v", err)
	}
	if _, err := s.SetDisabled(t.Context(), "alice", true); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Authenticate(bearer(s, "GET", "/", secret)); !errors.Is(err, ErrTokenInvalid) {
		t.Fatalf("token of a disabled owner: %v", err)
	}
	if err := s.DeleteUser(t.Context(), "alice"); err != nil {
		t.Fatal(err)
	}
	if list, _ := s.Tokens(t.Context(), "alice"); len(list) != 0 {
		t.Fatalf("tokens of a deleted user remain: %+v", list)
	}
	if _, err := s.Authenticate(bearer(s, "GET", "/", secret)); !errors.Is(err, ErrTokenInvalid) {
		t.Fatalf("token of a deleted owner: %v", err)
	}
}

func TestTokenLifetimeBounds(t *testing.T) {
	s, _ := newTestService(t, func(c *Config) { c.MaxTokenTTL = 30 * 24 * time.Hour })
	mustCreate(t, s, "alice", alicePW, RoleOperator)
	for _, ttl := range []time.Duration{0, -time.Hour, 31 * 24 * time.Hour} {
		if _, _, err := s.CreateToken(t.Context(), "alice", "x", RoleViewer, ttl); !errors.Is(err, ErrInvalid) {
			t.Errorf("ttl %s: %v", ttl, err)
		}
	}
	for _, name := range []string{"", strings.Repeat("n", 129), "line\nbreak", "bad \xff utf-8"} {
		if _, _, err := s.CreateToken(t.Context(), "alice", name, RoleViewer, time.Hour); !errors.Is(err, ErrInvalid) {
			t.Errorf("name %q: %v", name, err)
		}
	}
	if _, _, err := s.CreateToken(t.Context(), "nobody", "x", RoleViewer, time.Hour); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown owner: %v", err)
	}
}

func TestMalformedCredentials(t *testing.T) {
	s, _ := newTestService(t, nil)
	mustCreate(t, s, "alice", alicePW, RoleOperator)
	sess := mustLogin(t, s, "alice", alicePW)
	secret, _, err := s.CreateToken(t.Context(), "alice", "ci", RoleOperator, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	flip := "A"
	if strings.HasSuffix(secret, flip) {
		flip = "B"
	}
	for name, hdr := range map[string][]string{
		"basic":            {"Authorization", "Basic YWxpY2U6cGFzc3dvcmQ="},
		"bearer, no token": {"Authorization", "Bearer"},
		"bearer, empty":    {"Authorization", "Bearer "},
		"wrong prefix":     {"Authorization", "Bearer sgt_" + strings.TrimPrefix(secret, TokenPrefix)},
		"one char off":     {"Authorization", "Bearer " + secret[:len(secret)-1] + flip},
		"too long":         {"Authorization", "Bearer " + secret + "A"},
	} {
		r := request(s, "GET", "/devices", "", &sess, hdr...) // a valid cookie does not rescue a bad bearer
		if _, err := s.Authenticate(r); !errors.Is(err, ErrTokenInvalid) {
			t.Errorf("%s: %v, want ErrTokenInvalid", name, err)
		}
	}
	r := request(s, "GET", "/devices", "", nil)
	r.Header.Add("Authorization", "Bearer "+secret)
	r.Header.Add("Authorization", "Bearer "+secret)
	if _, err := s.Authenticate(r); !errors.Is(err, ErrTokenInvalid) {
		t.Errorf("two Authorization headers: %v", err)
	}
	if _, err := s.Authenticate(request(s, "GET", "/", "", &Session{ID: "not-a-session"})); !errors.Is(err, ErrSessionInvalid) {
		t.Errorf("malformed cookie: %v", err)
	}
	if _, err := s.Authenticate(request(s, "GET", "/", "", nil)); !errors.Is(err, ErrNoCredentials) {
		t.Errorf("no credentials: %v", err)
	}
	w := serve(testMux(s), request(s, "GET", "/devices", "", nil))
	if w.Code != 401 || w.Header().Get("WWW-Authenticate") == "" || w.Header().Get("Content-Type") != "application/problem+json" {
		t.Errorf("no credentials: %d %v", w.Code, w.Header())
	}
}

func TestStoreFailureIsNotLeaked(t *testing.T) {
	s, _ := newTestService(t, nil)
	mustCreate(t, s, "alice", alicePW, RoleOperator)
	secret, _, err := s.CreateToken(t.Context(), "alice", "ci", RoleOperator, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	s.db.Close()
	w := serve(testMux(s), bearer(s, "GET", "/devices", secret))
	if w.Code != http.StatusInternalServerError {
		t.Fatalf("status %d", w.Code)
	}
	p := decodeProblem(t, w.Body.Bytes())
	if p.Status != 500 || strings.Contains(strings.ToLower(w.Body.String()), "database") {
		t.Fatalf("problem %+v", p)
	}
	if _, err := s.Login(context.Background(), "alice", alicePW, "192.0.2.1"); err == nil {
		t.Fatal("login with a closed store")
	}
}
