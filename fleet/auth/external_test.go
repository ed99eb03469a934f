package auth

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestExternalAccounts: single sign-on creates an external account with
// its role, never takes over a local one, re-enables and changes the role
// at later logins; SyncExternal with no role disables the account and ends
// its sessions; an external account never logs in with a password.
func TestExternalAccounts(t *testing.T) {
	s, _ := newTestService(t, nil)
	ctx := context.Background()
	const idp = "https://idp.example.com"
	mustCreate(t, s, "local", "a long local password", RoleViewer)

	if _, err := s.LoginExternal(ctx, "local", idp, RoleAdmin, "192.0.2.1"); !errors.Is(err, ErrNotExternal) {
		t.Errorf("external login as a local account: %v", err)
	}
	if u, _ := s.User(ctx, "local"); u.Role != RoleViewer || u.External != "" {
		t.Errorf("local account after the attempt: %+v", u)
	}
	if _, err := s.LoginExternal(ctx, "eve", "https://other.example.com", RoleViewer, "192.0.2.1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.LoginExternal(ctx, "eve", idp, RoleAdmin, "192.0.2.1"); !errors.Is(err, ErrNotExternal) {
		t.Errorf("login through another provider: %v", err)
	}
	if _, err := s.LoginExternal(ctx, "Bad Name!", idp, RoleViewer, "192.0.2.1"); !errors.Is(err, ErrInvalid) {
		t.Errorf("invalid name: %v", err)
	}

	sess, err := s.LoginExternal(ctx, "Dana", idp, RoleOperator, "192.0.2.1")
	if err != nil || sess.User != "dana" || sess.Role != RoleOperator {
		t.Fatalf("LoginExternal: %+v, %v", sess, err)
	}
	if _, err := s.Login(ctx, "dana", "", "192.0.2.1"); !errors.Is(err, ErrInvalidCredentials) {
		t.Errorf("password login of an external account: %v", err)
	}
	if changed, err := s.SyncExternal(ctx, "dana", idp, RoleAdmin); err != nil || !changed {
		t.Fatalf("SyncExternal to admin: %v %v", changed, err)
	}
	if u, _ := s.User(ctx, "dana"); u.Role != RoleAdmin || u.Disabled {
		t.Errorf("after the role change: %+v", u)
	}
	if changed, err := s.SyncExternal(ctx, "dana", idp, ""); err != nil || !changed {
		t.Fatalf("SyncExternal to no role: %v %v", changed, err)
	}
	if _, err := s.session(ctx, sess.ID, nil); !errors.Is(err, ErrSessionInvalid) {
		t.Errorf("session after the role was withdrawn: %v", err)
	}
	if _, err := s.SyncExternal(ctx, "local", idp, ""); !errors.Is(err, ErrNotExternal) {
		t.Errorf("SyncExternal of a local account: %v", err)
	}
	sess, err = s.LoginExternal(ctx, "dana", idp, RoleViewer, "192.0.2.1")
	if err != nil {
		t.Fatal(err)
	}
	if p, err := s.session(ctx, sess.ID, nil); err != nil || p.Role != RoleViewer || p.External != idp {
		t.Errorf("session after logging in again: %+v, %v", p, err)
	}
	// The provider's state is kept with the account, for its issuer only.
	if err := s.SetExternalState(ctx, "dana", idp, []byte("sealed state")); err != nil {
		t.Fatal(err)
	}
	if got, err := s.ExternalState(ctx, "dana", idp); err != nil || string(got) != "sealed state" {
		t.Errorf("ExternalState: %q, %v", got, err)
	}
	if _, err := s.ExternalState(ctx, "dana", "https://other.example.com"); !errors.Is(err, ErrNotExternal) {
		t.Errorf("ExternalState for another issuer: %v", err)
	}
	if err := s.SetExternalState(ctx, "local", idp, []byte("x")); !errors.Is(err, ErrNotExternal) {
		t.Errorf("SetExternalState of a local account: %v", err)
	}
}

// TestPasswordLoginOff: with Config.NoPasswordLogin every password login
// fails with ErrPasswordLoginOff, the right password too.
func TestPasswordLoginOff(t *testing.T) {
	s, _ := newTestService(t, func(c *Config) { c.NoPasswordLogin = true })
	mustCreate(t, s, "admin2", "a long local password", RoleAdmin)
	if _, err := s.Login(context.Background(), "admin2", "a long local password", "192.0.2.1"); !errors.Is(err, ErrPasswordLoginOff) {
		t.Errorf("Login: %v", err)
	}
}

// TestExternalAccountPassword: an account that signs in through single
// sign-on has no password of Sigil's: changing it (through the API with a
// token, say) or setting it fails with ErrExternalAccount, never as a
// wrong password that counts towards a lockout, and leaves no password
// behind.
func TestExternalAccountPassword(t *testing.T) {
	s, _ := newTestService(t, func(c *Config) { c.Throttle = Throttle{Failures: 2, Lockout: time.Hour} })
	ctx := context.Background()
	if _, err := s.LoginExternal(ctx, "dana", "https://idp.example.com", RoleOperator, "192.0.2.1"); err != nil {
		t.Fatal(err)
	}
	p := Principal{User: "dana", Role: RoleOperator, Method: MethodToken}
	for range 3 {
		if _, err := s.ChangeOwnPassword(ctx, p, "anything at all", "a long new password", "192.0.2.1"); !errors.Is(err, ErrExternalAccount) {
			t.Fatalf("ChangeOwnPassword of an external account: %v", err)
		}
	}
	if err := s.SetPassword(ctx, "dana", "a long new password"); !errors.Is(err, ErrExternalAccount) {
		t.Errorf("SetPassword of an external account: %v", err)
	}
	if _, err := s.Login(ctx, "dana", "a long new password", "192.0.2.1"); !errors.Is(err, ErrInvalidCredentials) {
		t.Errorf("password login after the attempts: %v", err)
	}
	if _, err := s.LoginExternal(ctx, "dana", "https://idp.example.com", RoleOperator, "192.0.2.1"); err != nil {
		t.Errorf("single sign-on after the attempts (nothing counted against dana): %v", err)
	}
}
