package auth

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/storage/kv"
)

const newPW = "a brand new long password"

// sessionPrincipal authenticates sess as a request would.
func sessionPrincipal(t *testing.T, s *Service, sess Session) Principal {
	t.Helper()
	p, err := s.Authenticate(request(s, "GET", "/", "", &sess))
	if err != nil {
		t.Fatalf("session of %s: %v", sess.User, err)
	}
	return p
}

// TestChangeOwnPasswordEndsOtherSessions: the current password is
// required; the change ends every session of the user but rotates the one
// it was made with (new ID, new CSRF token), leaves API tokens and other
// users alone, and is audited without the passwords.
func TestChangeOwnPasswordEndsOtherSessions(t *testing.T) {
	rec := &memRecorder{}
	s, clk := newTestService(t, func(c *Config) { c.Audit = rec })
	ctx := context.Background()
	mustCreate(t, s, "root", bobPW, RoleAdmin)
	mustCreate(t, s, "alice", alicePW, RoleOperator)
	here := mustLogin(t, s, "alice", alicePW)
	elsewhere := mustLogin(t, s, "alice", alicePW)
	root := mustLogin(t, s, "root", bobPW)
	tokSecret, _, err := s.CreateToken(ctx, "alice", "ci", RoleViewer, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	p := sessionPrincipal(t, s, here)

	if _, err := s.ChangeOwnPassword(ctx, p, "not her password", newPW, "192.0.2.1"); !errors.Is(err, ErrInvalidCredentials) {
		t.Fatalf("wrong current password: %v, want ErrInvalidCredentials", err)
	}
	for _, sess := range []Session{here, elsewhere} {
		sessionPrincipal(t, s, sess) // a refused change ends nothing
	}
	clk.Advance(time.Second) // the wait after a failure, as for logins

	got, err := s.ChangeOwnPassword(ctx, p, alicePW, newPW, "192.0.2.1")
	if err != nil {
		t.Fatal(err)
	}
	if got.SessionsEnded != 2 {
		t.Errorf("SessionsEnded %d, want 2", got.SessionsEnded)
	}
	if got.Session.ID == "" || got.Session.ID == here.ID || got.Session.CSRFToken == here.CSRFToken || got.Session.User != "alice" {
		t.Fatalf("the session was not rotated: %v (ID changed %v)", got.Session, got.Session.ID != here.ID)
	}
	for name, sess := range map[string]Session{"the session it was made with": here, "another session": elsewhere} {
		if _, err := s.Authenticate(request(s, "GET", "/", "", &sess)); !errors.Is(err, ErrSessionInvalid) {
			t.Errorf("%s after the change: %v, want ErrSessionInvalid", name, err)
		}
	}
	if rp := sessionPrincipal(t, s, got.Session); rp.User != "alice" || rp.CSRFToken != got.Session.CSRFToken {
		t.Errorf("the rotated session authenticates as %v", rp)
	}
	sessionPrincipal(t, s, root) // another user's session lives on
	principalOf(t, s, tokSecret) // API tokens are not affected

	if _, err := s.Login(ctx, "alice", alicePW, "198.51.100.7"); !errors.Is(err, ErrInvalidCredentials) {
		t.Errorf("login with the old password: %v", err)
	}
	clk.Advance(time.Second)
	mustLogin(t, s, "alice", newPW)
	u, err := s.User(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if !u.PasswordChanged.Equal(clk.Now().Add(-time.Second)) || !u.Changed.Equal(u.Created) {
		t.Errorf("PasswordChanged %v, Changed %v (created %v): an own change is not a change of hands", u.PasswordChanged, u.Changed, u.Created)
	}

	if n := len(rec.find("auth.password", audit.Denied, "alice")); n != 1 {
		t.Errorf("%d denied auth.password entries, want 1", n)
	}
	ok := rec.find("auth.password", audit.OK, "alice")
	if len(ok) != 1 || ok[0].Actor != audit.User("alice") || ok[0].Details["sessions_ended"] != "2" || ok[0].Details["method"] != "session" {
		t.Fatalf("auth.password entries: %+v", ok)
	}
	for _, e := range rec.Entries() {
		if s := fmt.Sprintf("%+v", e); strings.Contains(s, alicePW) || strings.Contains(s, newPW) || strings.Contains(s, "not her password") {
			t.Fatalf("a password reached the audit log: %s", s)
		}
	}
}

// TestChangeOwnPasswordWithToken: an API token may change its owner's
// password only with the current one; no session comes back, every
// session ends, and the token keeps working.
func TestChangeOwnPasswordWithToken(t *testing.T) {
	s, _ := newTestService(t, nil)
	ctx := context.Background()
	mustCreate(t, s, "alice", alicePW, RoleOperator)
	sess := mustLogin(t, s, "alice", alicePW)
	secret, _, err := s.CreateToken(ctx, "alice", "cli", RoleViewer, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.ChangeOwnPassword(ctx, principalOf(t, s, secret), alicePW, newPW, "192.0.2.1")
	if err != nil {
		t.Fatal(err)
	}
	if got.Session.ID != "" || got.SessionsEnded != 1 {
		t.Fatalf("with a token: %+v, want no session and 1 ended", got)
	}
	if _, err := s.Authenticate(request(s, "GET", "/", "", &sess)); !errors.Is(err, ErrSessionInvalid) {
		t.Errorf("session after the change: %v", err)
	}
	principalOf(t, s, secret)
}

// TestChangeOwnPasswordRules: the new password follows the rules of new
// accounts and differs from the current one; refusals change nothing.
func TestChangeOwnPasswordRules(t *testing.T) {
	s, _ := newTestService(t, nil)
	ctx := context.Background()
	mustCreate(t, s, "alice", alicePW, RoleOperator)
	sess := mustLogin(t, s, "alice", alicePW)
	p := sessionPrincipal(t, s, sess)
	for _, tc := range []struct {
		pw   string
		want error
	}{
		{"short", ErrInvalid},
		{strings.Repeat("x", maxPassword+1), ErrInvalid},
		{alicePW, ErrSamePassword},
	} {
		if _, err := s.ChangeOwnPassword(ctx, p, alicePW, tc.pw, "192.0.2.1"); !errors.Is(err, tc.want) {
			t.Errorf("new password of %d bytes: %v, want %v", len(tc.pw), err, tc.want)
		}
	}
	sessionPrincipal(t, s, sess)
	mustLogin(t, s, "alice", alicePW)
}

// TestChangeOwnPasswordThrottled: guesses of the current password are
// throttled on the login counters: a stolen session cannot brute-force the
// password, and its guesses lock out logins from its address too, not
// from others.
func TestChangeOwnPasswordThrottled(t *testing.T) {
	s, clk := newTestService(t, nil)
	ctx := context.Background()
	mustCreate(t, s, "alice", alicePW, RoleOperator)
	p := sessionPrincipal(t, s, mustLogin(t, s, "alice", alicePW))
	const thief = "203.0.113.66"
	if _, err := s.ChangeOwnPassword(ctx, p, "guess 0", newPW, thief); !errors.Is(err, ErrInvalidCredentials) {
		t.Fatal(err)
	}
	var te *ThrottleError
	if _, err := s.ChangeOwnPassword(ctx, p, alicePW, newPW, thief); !errors.As(err, &te) || te.RetryAfter != time.Second {
		t.Fatalf("right after a wrong guess: %v, want a 1 s wait", err)
	}
	for i := 1; i < s.cfg.Throttle.Failures; i++ {
		clk.Advance(time.Minute)
		if _, err := s.ChangeOwnPassword(ctx, p, "another guess", newPW, thief); !errors.Is(err, ErrInvalidCredentials) {
			t.Fatalf("guess %d: %v", i, err)
		}
	}
	clk.Advance(time.Minute)
	if _, err := s.ChangeOwnPassword(ctx, p, alicePW, newPW, thief); !errors.As(err, &te) || te.RetryAfter < 10*time.Minute {
		t.Fatalf("after %d wrong guesses: %v, want a lockout", s.cfg.Throttle.Failures, err)
	}
	if _, err := s.Login(ctx, "alice", alicePW, thief); !errors.As(err, &te) {
		t.Fatalf("a login from the guessing address: %v, want throttled", err)
	}
	mustLogin(t, s, "alice", alicePW) // from her own address (192.0.2.1)
}

// TestSetPasswordEndsSessions: an administrator's reset ends the user's
// sessions at once (they are deleted, not only refused later) and leaves
// their API tokens.
func TestSetPasswordEndsSessions(t *testing.T) {
	s, _ := newTestService(t, nil)
	mustCreate(t, s, "alice", alicePW, RoleOperator)
	mustLogin(t, s, "alice", alicePW)
	secret, _, err := s.CreateToken(t.Context(), "alice", "ci", RoleViewer, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetPassword(context.Background(), "alice", newPW); err != nil {
		t.Fatal(err)
	}
	err = s.db.View(t.Context(), func(tx kv.Tx) error {
		n, err := countStored(tx, "alice")
		if err == nil && n != 0 {
			t.Errorf("%d sessions of alice stored after the reset", n)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	principalOf(t, s, secret)
}

// countStored counts the stored sessions of a user, live or not.
func countStored(tx kv.Tx, name string) (int, error) {
	n := 0
	err := tx.Bucket(bucketSessions).ForEach(func(_, v []byte) error {
		rec, err := decode[sessionRecord](v)
		if err != nil {
			return err
		}
		if rec.User == name {
			n++
		}
		return nil
	})
	return n, err
}
