package auth

import (
	"context"
	"errors"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestEnsureAdmin(t *testing.T) {
	s, _ := newTestService(t, nil)
	ctx := context.Background()
	file := filepath.Join(t.TempDir(), "admin.password")
	created, err := s.EnsureAdmin(ctx, file)
	if err != nil || !created {
		t.Fatalf("EnsureAdmin: %v %v", created, err)
	}
	st, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("password file mode %v, want 0600", st.Mode().Perm())
	}
	data, _ := os.ReadFile(file)
	pw := strings.TrimSuffix(string(data), "\n")
	if len(pw) != 32 || strings.ContainsAny(pw, " \n") {
		t.Fatalf("password %q is not 24 random bytes in base64url", pw)
	}
	sess := mustLogin(t, s, BootstrapAdmin, pw)
	if sess.Role != RoleAdmin {
		t.Fatalf("role %s", sess.Role)
	}
	// A second start changes nothing.
	if created, err := s.EnsureAdmin(ctx, file); err != nil || created {
		t.Fatalf("second EnsureAdmin: %v %v", created, err)
	}
	if again, _ := os.ReadFile(file); string(again) != string(data) {
		t.Fatal("second EnsureAdmin rewrote the password file")
	}
	// Nor does a start with users but no password file.
	other := filepath.Join(t.TempDir(), "admin.password")
	if created, err := s.EnsureAdmin(ctx, other); err != nil || created {
		t.Fatalf("EnsureAdmin with users: %v %v", created, err)
	}
	if _, err := os.Stat(other); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("EnsureAdmin with users wrote a file: %v", err)
	}
}

func TestEnsureAdminUnwritableFile(t *testing.T) {
	s, _ := newTestService(t, nil)
	_, err := s.EnsureAdmin(context.Background(), filepath.Join(t.TempDir(), "missing-dir", "admin.password"))
	if err == nil {
		t.Fatal("EnsureAdmin succeeded without writing its password file")
	}
	if users, _ := s.Users(t.Context()); len(users) != 0 {
		t.Fatalf("an admin nobody knows the password of was created: %+v", users)
	}
}

func TestLastAdminStays(t *testing.T) {
	s, _ := newTestService(t, nil)
	mustCreate(t, s, "root", alicePW, RoleAdmin)
	if _, err := s.SetRole(t.Context(), "root", RoleSecurityAdmin); !errors.Is(err, ErrLastAdmin) {
		t.Fatalf("demote the last admin: %v", err)
	}
	if _, err := s.SetDisabled(t.Context(), "root", true); !errors.Is(err, ErrLastAdmin) {
		t.Fatalf("disable the last admin: %v", err)
	}
	if err := s.DeleteUser(t.Context(), "root"); !errors.Is(err, ErrLastAdmin) {
		t.Fatalf("delete the last admin: %v", err)
	}
	mustCreate(t, s, "second", alicePW, RoleAdmin)
	if _, err := s.SetRole(t.Context(), "root", RoleSecurityAdmin); err != nil {
		t.Fatalf("demote one of two admins: %v", err)
	}
	if u, _ := s.User(t.Context(), "root"); u.Role != RoleSecurityAdmin {
		t.Fatalf("role %s", u.Role)
	}
}

func TestUserValidation(t *testing.T) {
	s, _ := newTestService(t, nil)
	ctx := context.Background()
	for _, name := range []string{"", "-lead", ".dot", "has space", "semi;colon", strings.Repeat("a", 65), "ünï"} {
		if _, err := s.CreateUser(ctx, name, alicePW, RoleViewer); !errors.Is(err, ErrInvalid) {
			t.Errorf("name %q: %v", name, err)
		}
	}
	if _, err := s.CreateUser(ctx, "alice", "short", RoleViewer); !errors.Is(err, ErrInvalid) {
		t.Errorf("short password: %v", err)
	}
	if _, err := s.CreateUser(ctx, "alice", alicePW, Role("root")); !errors.Is(err, ErrInvalid) {
		t.Errorf("unknown role: %v", err)
	}
	if _, err := s.CreateUser(ctx, "Alice@Example.com", alicePW, RoleViewer); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateUser(ctx, "alice@example.com", alicePW, RoleViewer); !errors.Is(err, ErrExists) {
		t.Errorf("same name in another case: %v", err)
	}
	mustLogin(t, s, "ALICE@example.com", alicePW)
	users, err := s.Users(ctx)
	if err != nil || len(users) != 1 || users[0].Name != "alice@example.com" {
		t.Fatalf("Users: %+v %v", users, err)
	}
}

// FuzzAuthenticate throws arbitrary credentials at Authenticate: it must
// refuse them with one of its documented errors, never panic, and never let
// them through.
func FuzzAuthenticate(f *testing.F) {
	s, _ := newTestService(f, func(c *Config) { c.Params = testParams })
	mustCreate(f, s, "alice", alicePW, RoleAdmin)
	sess := mustLogin(f, s, "alice", alicePW)
	secret, _, err := s.CreateToken(f.Context(), "alice", "fuzz", RoleAdmin, time.Hour)
	if err != nil {
		f.Fatal(err)
	}
	f.Add("Bearer "+secret[:len(secret)-2], "", "GET", "")
	f.Add("", sess.ID[:len(sess.ID)-1]+"_", "POST", sess.CSRFToken)
	f.Add("", sess.ID, "POST", sess.CSRFToken[1:])
	f.Add("bearer  sga_", "", "GET", "")
	f.Add("", "%%%", "DELETE", "")
	f.Fuzz(func(t *testing.T, authz, cookie, method, csrf string) {
		r := httptest.NewRequest("GET", "https://fleet.test/", nil)
		r.Method = method
		if authz != "" {
			r.Header.Set("Authorization", authz)
		}
		if cookie != "" {
			r.Header.Set("Cookie", s.cfg.CookieName+"="+cookie)
		}
		if csrf != "" {
			r.Header.Set(CSRFHeader, csrf)
		}
		p, err := s.Authenticate(r)
		if err == nil {
			// Only the real credentials, however they were wrapped, get in.
			_, tok, _ := strings.Cut(authz, " ")
			c, _ := r.Cookie(s.cfg.CookieName)
			real := (p.Method == MethodToken && strings.TrimSpace(tok) == secret) ||
				(p.Method == MethodSession && authz == "" && c != nil && c.Value == sess.ID)
			if !real {
				t.Fatalf("authenticated %+v with authz=%q cookie=%q", p, authz, cookie)
			}
			return
		}
		for _, known := range []error{ErrNoCredentials, ErrTokenInvalid, ErrTokenExpired, ErrSessionInvalid, ErrSessionExpired, ErrCSRF} {
			if errors.Is(err, known) {
				return
			}
		}
		t.Fatalf("undocumented error %v", err)
	})
}
