package auth

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/audit/audittest"
)

// principalOf authenticates an API token secret.
func principalOf(t testing.TB, s *Service, secret string) Principal {
	t.Helper()
	r := httptest.NewRequest("GET", "/", nil)
	r.Header.Set("Authorization", "Bearer "+secret)
	p, err := s.Authenticate(r)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// scopedToken returns the principal of a new token of owner scoped to role.
func scopedToken(t testing.TB, s *Service, owner string, role Role) Principal {
	t.Helper()
	secret, _, err := s.CreateToken(t.Context(), owner, "scoped "+string(role), role, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return principalOf(t, s, secret)
}

// TestCreateTokenAsStaysInScope: a token hands out only scopes it covers,
// never outlives itself, and a session hands out what its user's role
// covers.
func TestCreateTokenAsStaysInScope(t *testing.T) {
	s, clk := newTestService(t, nil)
	mustCreate(t, s, "root", alicePW, RoleAdmin)
	for _, scope := range Roles() {
		p := scopedToken(t, s, "root", scope)
		for _, role := range Roles() {
			_, tok, err := s.CreateTokenAs(t.Context(), p, TokenSpec{Name: "child", Role: role, TTL: 24 * time.Hour})
			switch {
			case scope.Covers(role) && err != nil:
				t.Errorf("%s-scoped token creating a %s token: %v", scope, role, err)
			case !scope.Covers(role) && !errors.Is(err, ErrForbidden):
				t.Errorf("%s-scoped token creating a %s token: %v, want ErrForbidden", scope, role, err)
			case err == nil && tok.Expires.After(p.Expires):
				t.Errorf("a child token expires %v, after its parent %v", tok.Expires, p.Expires)
			}
		}
	}
	sess := mustLogin(t, s, "root", alicePW)
	p, err := s.session(t.Context(), sess.ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, tok, err := s.CreateTokenAs(t.Context(), p, TokenSpec{Name: "ci", Role: RoleAdmin, TTL: 24 * time.Hour})
	if err != nil || !tok.Expires.Equal(clk.Now().Add(24*time.Hour)) {
		t.Fatalf("a session creating a day-long admin token: %+v %v", tok, err)
	}
	if _, _, err := s.CreateTokenAs(t.Context(), p, TokenSpec{Name: "ci", Role: "root", TTL: time.Hour}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("unknown role: %v", err)
	}
}

// TestRevokeTokenAs: a token revokes itself and its owner's tokens that
// may do no more than it; not its owner's wider ones; another user's only
// with users.admin.
func TestRevokeTokenAs(t *testing.T) {
	s, _ := newTestService(t, nil)
	mustCreate(t, s, "root", alicePW, RoleAdmin)
	mustCreate(t, s, "alice", alicePW, RoleOperator)
	viewer := scopedToken(t, s, "root", RoleViewer)
	wide := scopedToken(t, s, "root", RoleAdmin)
	narrow := scopedToken(t, s, "root", RoleViewer)
	theirs := scopedToken(t, s, "alice", RoleOperator)
	if _, err := s.RevokeTokenAs(t.Context(), viewer, wide.TokenID); !errors.Is(err, ErrForbidden) {
		t.Fatalf("viewer token revoking its owner's admin token: %v", err)
	}
	if _, err := s.RevokeTokenAs(t.Context(), viewer, theirs.TokenID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("viewer token revoking another user's token: %v", err)
	}
	if _, err := s.RevokeTokenAs(t.Context(), viewer, narrow.TokenID); err != nil {
		t.Fatalf("viewer token revoking its owner's viewer token: %v", err)
	}
	if _, err := s.RevokeTokenAs(t.Context(), viewer, viewer.TokenID); err != nil {
		t.Fatalf("a token revoking itself: %v", err)
	}
	// An operator token whose owner was demoted to viewer now does what a
	// viewer does: a viewer-scoped credential of that owner may revoke it.
	demoted := scopedToken(t, s, "alice", RoleViewer)
	if _, err := s.SetRole(t.Context(), "alice", RoleViewer); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RevokeTokenAs(t.Context(), demoted, theirs.TokenID); err != nil {
		t.Fatalf("revoking a demoted owner's operator token: %v", err)
	}
	if _, err := s.RevokeTokenAs(t.Context(), wide, scopedToken(t, s, "alice", RoleViewer).TokenID); err != nil {
		t.Fatalf("an admin token revoking another user's token: %v", err)
	}
	if tok, _ := s.Token(t.Context(), wide.TokenID); !tok.Revoked.IsZero() {
		t.Fatal("the admin token was revoked")
	}
}

// TestUserChangesAsStayInScope: managing users needs users.admin and a
// scope that covers both the user's role and the role handed out.
func TestUserChangesAsStayInScope(t *testing.T) {
	s, _ := newTestService(t, nil)
	ctx := context.Background()
	mustCreate(t, s, "root", alicePW, RoleAdmin)
	mustCreate(t, s, "root2", alicePW, RoleAdmin)
	admin := scopedToken(t, s, "root", RoleAdmin)
	sec := scopedToken(t, s, "root", RoleSecurityAdmin)
	if _, err := s.CreateUserAs(ctx, sec, NewUser{Name: "eve", Password: alicePW, Role: RoleViewer}); !errors.Is(err, ErrForbidden) {
		t.Fatalf("a security-admin-scoped token creating a user: %v", err)
	}
	u, err := s.CreateUserAs(ctx, admin, NewUser{Name: "Bob", Password: bobPW, Role: RoleOperator, Disabled: true})
	if err != nil || !u.Disabled || u.Name != "bob" {
		t.Fatalf("create disabled: %+v %v", u, err)
	}
	admins := RoleAdmin
	if _, err := s.ChangeUserAs(ctx, sec, "bob", UserChange{Role: &admins}); !errors.Is(err, ErrForbidden) {
		t.Fatalf("promote without users.admin: %v", err)
	}
	no := false
	if u, err := s.ChangeUserAs(ctx, admin, "bob", UserChange{Role: &admins, Disabled: &no}); err != nil || u.Role != RoleAdmin || u.Disabled {
		t.Fatalf("promote and enable: %+v %v", u, err)
	}
	if err := s.DeleteUserAs(ctx, sec, "bob"); !errors.Is(err, ErrForbidden) {
		t.Fatalf("delete without users.admin: %v", err)
	}
	if err := s.DeleteUserAs(ctx, admin, "bob"); err != nil {
		t.Fatal(err)
	}
	bad := Role("superuser")
	if _, err := s.ChangeUserAs(ctx, admin, "root2", UserChange{Role: &bad}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("unknown role: %v", err)
	}
}

// TestSinceMarksAccountChanges: creation, a role change, enabling again
// and an administrator's password reset move User.Since; a user's own
// password change and a repeated role do not.
func TestSinceMarksAccountChanges(t *testing.T) {
	s, clk := newTestService(t, nil)
	ctx := context.Background()
	mustCreate(t, s, "root", alicePW, RoleAdmin)
	mustCreate(t, s, "alice", alicePW, RoleOperator)
	since := func() time.Time {
		u, err := s.User(ctx, "alice")
		if err != nil {
			t.Fatal(err)
		}
		return u.Since()
	}
	created := clk.Now()
	if !since().Equal(created) {
		t.Fatalf("Since after creation: %v", since())
	}
	step := func(what string, moves bool, do func() error) {
		t.Helper()
		clk.Advance(time.Hour)
		before := since()
		if err := do(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if got := since(); moves != got.Equal(clk.Now()) || (!moves && !got.Equal(before)) {
			t.Errorf("%s: Since %v (now %v), want moved=%v", what, got, clk.Now(), moves)
		}
	}
	step("same role", false, func() error { _, err := s.SetRole(ctx, "alice", RoleOperator); return err })
	step("new role", true, func() error { _, err := s.SetRole(ctx, "alice", RoleSecurityAdmin); return err })
	step("disable", false, func() error { _, err := s.SetDisabled(ctx, "alice", true); return err })
	step("enable", true, func() error { _, err := s.SetDisabled(ctx, "alice", false); return err })
	step("own password change", false, func() error {
		_, err := s.ChangeOwnPassword(ctx, scopedToken(t, s, "alice", RoleViewer), alicePW, bobPW, "192.0.2.9")
		return err
	})
	step("admin's reset", true, func() error { return s.SetPassword(ctx, "alice", alicePW) })
	p := scopedToken(t, s, "alice", RoleViewer)
	if !p.Since().Equal(since()) {
		t.Fatalf("the principal's Since %v, the user's %v", p.Since(), since())
	}
}

// TestPrincipalFromCredential: a credential is established again as its
// user and token are now: the scope within the current role; refused once
// the token is revoked, expired or pending, or the user disabled or gone.
func TestPrincipalFromCredential(t *testing.T) {
	s, clk := newTestService(t, nil)
	mustCreate(t, s, "root", alicePW, RoleAdmin)
	mustCreate(t, s, "alice", alicePW, RoleSecurityAdmin)
	tokP := scopedToken(t, s, "alice", RoleSecurityAdmin)
	sess := mustLogin(t, s, "alice", alicePW)
	sessP, err := s.session(t.Context(), sess.ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []Credential{tokP.Credential(), sessP.Credential()} {
		p, err := s.Principal(t.Context(), c)
		if err != nil || !p.Can(PermSecretsWrite) || p.User != "alice" {
			t.Fatalf("%+v: %+v %v", c, p, err)
		}
	}
	if _, err := s.SetRole(t.Context(), "alice", RoleOperator); err != nil {
		t.Fatal(err)
	}
	for _, c := range []Credential{tokP.Credential(), sessP.Credential()} {
		p, err := s.Principal(t.Context(), c)
		if err != nil || p.Can(PermSecretsWrite) || p.Can(PermFirmwareWrite) || !p.Can(PermDevicesWrite) {
			t.Fatalf("after a demotion to operator, %s acts as %+v (%v)", c.Method, p, err)
		}
	}
	if _, err := s.RevokeToken(t.Context(), tokP.TokenID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Principal(t.Context(), tokP.Credential()); !errors.Is(err, ErrCredentialGone) {
		t.Fatalf("revoked token: %v", err)
	}
	expiring := scopedToken(t, s, "alice", RoleViewer)
	clk.Advance(2 * time.Hour)
	if _, err := s.Principal(t.Context(), expiring.Credential()); !errors.Is(err, ErrCredentialGone) {
		t.Fatalf("expired token: %v", err)
	}
	_, pending, err := s.CreateTokenAs(t.Context(), sessP, TokenSpec{Name: "held", Role: RoleViewer, TTL: time.Hour, Pending: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Principal(t.Context(), Credential{User: "alice", Method: MethodToken, Scope: RoleViewer, TokenID: pending.ID}); !errors.Is(err, ErrCredentialGone) {
		t.Fatalf("pending token: %v", err)
	}
	if _, err := s.SetDisabled(t.Context(), "alice", true); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Principal(t.Context(), sessP.Credential()); !errors.Is(err, ErrCredentialGone) {
		t.Fatalf("disabled user: %v", err)
	}
	if _, err := s.Principal(t.Context(), Credential{User: "nobody", Method: MethodSession, Scope: RoleViewer}); !errors.Is(err, ErrCredentialGone) {
		t.Fatalf("unknown user: %v", err)
	}
	if _, err := s.Principal(t.Context(), Credential{User: "root", Method: "magic", Scope: RoleViewer}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("unknown method: %v", err)
	}
}

// TestPendingTokenActivation: a pending token does not authenticate until
// its owner, still covering its scope, activates it.
func TestPendingTokenActivation(t *testing.T) {
	s, _ := newTestService(t, nil)
	mustCreate(t, s, "root", alicePW, RoleAdmin)
	mustCreate(t, s, "sam", alicePW, RoleSecurityAdmin)
	root := scopedToken(t, s, "root", RoleAdmin)
	secret, tok, err := s.CreateTokenAs(t.Context(), root, TokenSpec{Name: "approver", Role: RoleSecurityAdmin, TTL: time.Hour, Pending: true})
	if err != nil || !tok.Pending {
		t.Fatalf("%+v %v", tok, err)
	}
	r := httptest.NewRequest("GET", "/", nil)
	r.Header.Set("Authorization", "Bearer "+secret)
	if _, err := s.Authenticate(r); !errors.Is(err, ErrTokenInvalid) {
		t.Fatalf("a pending token authenticated: %v", err)
	}
	if _, err := s.ActivateTokenAs(t.Context(), scopedToken(t, s, "sam", RoleSecurityAdmin), tok.ID); !errors.Is(err, ErrForbidden) {
		t.Fatalf("someone else activating it: %v", err)
	}
	if _, err := s.ActivateTokenAs(t.Context(), scopedToken(t, s, "root", RoleViewer), tok.ID); !errors.Is(err, ErrForbidden) {
		t.Fatalf("a viewer credential of its owner activating it: %v", err)
	}
	if got, err := s.ActivateTokenAs(t.Context(), root, tok.ID); err != nil || got.Pending {
		t.Fatalf("activate: %+v %v", got, err)
	}
	if p := principalOf(t, s, secret); p.Role != RoleSecurityAdmin {
		t.Fatalf("activated token: %+v", p)
	}
	if _, err := s.ActivateTokenAs(t.Context(), root, tok.ID); !errors.Is(err, ErrInvalid) {
		t.Fatalf("activating twice: %v", err)
	}
}

// memRecorder keeps audit entries in memory.
type memRecorder struct{ audittest.Recorder }

func (m *memRecorder) find(action string, outcome audit.Outcome, target string) []audit.Entry {
	return m.Find(func(e audit.Entry) bool { return e.Action == action && e.Outcome == outcome && e.Target == target })
}

// TestLoginsAudited: failed logins (the name only when it exists),
// lockouts, the slow-down of a distributed guess and successful logins go
// to the audit log; never a password.
func TestLoginsAudited(t *testing.T) {
	rec := &memRecorder{}
	s, clk := newTestService(t, func(c *Config) {
		c.Audit = rec
		c.Throttle = Throttle{Failures: 2, AddrFailures: 3, UserFailures: 4, Lockout: time.Hour}
	})
	mustCreate(t, s, "root", alicePW, RoleAdmin)
	ctx := context.Background()
	s.Login(ctx, "root", "wrong password one", "198.51.100.1")
	clk.Advance(time.Minute)
	s.Login(ctx, "root", "wrong password two", "198.51.100.1") // locks root from .1
	clk.Advance(time.Minute)
	s.Login(ctx, "nobody-correct-horse", "wrong password", "198.51.100.1") // locks .1
	clk.Advance(time.Minute)
	s.Login(ctx, "root", "wrong password three", "198.51.100.2")
	clk.Advance(time.Minute)
	s.Login(ctx, "root", "wrong password four", "198.51.100.3") // slows root down
	clk.Advance(time.Minute)
	mustLogin(t, s, "root", alicePW)

	if got := rec.find("auth.login", audit.Denied, "root"); len(got) != 4 || got[0].Details["source"] != "198.51.100.1" || got[0].Actor != audit.System("auth") {
		t.Fatalf("failed logins of root: %+v", got)
	}
	if got := rec.find("auth.login", audit.Denied, ""); len(got) != 1 || got[0].Details["known_user"] != "false" {
		t.Fatalf("failed login of an unknown name: %+v", got)
	}
	if got := rec.find("auth.lockout", audit.OK, "root"); len(got) != 1 || got[0].Details["scope"] != "user-source" {
		t.Fatalf("root's lockout from an address: %+v", got)
	}
	if got := rec.find("auth.lockout", audit.OK, ""); len(got) != 1 || got[0].Details["scope"] != "source" {
		t.Fatalf("the address's lockout: %+v", got)
	}
	if got := rec.find("auth.slowdown", audit.OK, "root"); len(got) != 1 {
		t.Fatalf("root's slow-down: %+v", got)
	}
	if got := rec.find("auth.login", audit.OK, "root"); len(got) != 1 || got[0].Actor != audit.User("root") {
		t.Fatalf("root's login: %+v", got)
	}
	for _, e := range rec.Entries() {
		for _, v := range append([]string{e.Target, e.Reason}, detailValues(e)...) {
			if containsAny(v, alicePW, "wrong password", "correct-horse") {
				t.Fatalf("an audit entry holds what was typed: %+v", e)
			}
		}
	}
}

func detailValues(e audit.Entry) []string {
	var out []string
	for _, v := range e.Details {
		out = append(out, v)
	}
	return out
}

func containsAny(s string, subs ...string) bool {
	return slices.ContainsFunc(subs, func(sub string) bool { return strings.Contains(s, sub) })
}

// TestDistributedGuessSlowsNeverLocks: failures for one name from many
// addresses slow that name down from unfamiliar addresses (one attempt per
// UserDelay), never lock it, and never slow an address it logged in from.
func TestDistributedGuessSlowsNeverLocks(t *testing.T) {
	s, clk := newTestService(t, func(c *Config) {
		c.Throttle = Throttle{UserFailures: 10, UserDelay: 5 * time.Second, Lockout: time.Hour}
	})
	mustCreate(t, s, "root", alicePW, RoleAdmin)
	ctx := context.Background()
	mustLogin(t, s, "root", alicePW) // from 192.0.2.1: familiar from now on
	for i := range 10 {
		if _, err := s.Login(ctx, "root", "a distributed guess", "10.1.0."+string(rune('0'+i))); !errors.Is(err, ErrInvalidCredentials) {
			t.Fatalf("guess %d: %v", i, err)
		}
	}
	// Slowed: one attempt per 5 s from unfamiliar addresses.
	if _, err := s.Login(ctx, "root", "another guess", "10.2.0.1"); !errors.Is(err, ErrInvalidCredentials) {
		t.Fatalf("the first slowed attempt: %v", err)
	}
	if got := outcome(mustFail(s.Login(ctx, "root", alicePW, "10.2.0.2"))); got != "throttled 5s" {
		t.Fatalf("right after it, from elsewhere: %s", got)
	}
	// The familiar address is not slowed.
	if _, err := s.Login(ctx, "root", alicePW, "192.0.2.1"); err != nil {
		t.Fatalf("root from its familiar address: %v", err)
	}
	// Never locked: after the delay, an unfamiliar address is admitted.
	clk.Advance(5 * time.Second)
	if _, err := s.Login(ctx, "root", alicePW, "10.2.0.2"); err != nil {
		t.Fatalf("root from a new address after the delay: %v", err)
	}
	// An unknown name is slowed the same way (nothing tells them apart).
	for i := range 10 {
		s.Login(ctx, "ghost", "a distributed guess", "10.3.0."+string(rune('0'+i)))
	}
	s.Login(ctx, "ghost", "another guess", "10.4.0.1")
	if got := outcome(mustFail(s.Login(ctx, "ghost", "yet another", "10.4.0.2"))); got != "throttled 5s" {
		t.Fatalf("unknown name, slowed: %s", got)
	}
}

// TestUnknownNamesGoToTheAnonymousRecorder: failed logins of names that do
// not exist are anyone's to cause, so they go to Config.Anonymous (the
// server's sampler), while those of real users stay in the audit log.
func TestUnknownNamesGoToTheAnonymousRecorder(t *testing.T) {
	rec, anon := &memRecorder{}, &memRecorder{}
	s, clk := newTestService(t, func(c *Config) {
		c.Audit, c.Anonymous = rec, anon
	})
	mustCreate(t, s, "root", alicePW, RoleAdmin)
	ctx := context.Background()
	for i := range 3 {
		s.Login(ctx, fmt.Sprintf("nobody-%d", i), "wrong password", "198.51.100.7")
		clk.Advance(time.Minute)
	}
	s.Login(ctx, "root", "wrong password", "198.51.100.8")
	if got := anon.find("auth.login", audit.Denied, ""); len(got) != 3 {
		t.Fatalf("anonymous recorder: %d failed logins of unknown names, want 3: %+v", len(got), anon.Entries())
	}
	if got := rec.find("auth.login", audit.Denied, ""); len(got) != 0 {
		t.Fatalf("audit log: failed logins of unknown names %+v, want none", got)
	}
	if got := rec.find("auth.login", audit.Denied, "root"); len(got) != 1 {
		t.Fatalf("audit log: failed logins of root %+v, want one", got)
	}
	if got := anon.find("auth.login", audit.Denied, "root"); len(got) != 0 {
		t.Fatalf("anonymous recorder holds a real user's failed login: %+v", got)
	}
}
