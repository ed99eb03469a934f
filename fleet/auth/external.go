package auth

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"

	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/storage/kv"
)

// LoginExternal starts a session for a person an identity provider has
// authenticated (single sign-on, fleet/sso): the caller has verified the
// provider's ID token and mapped the person's groups to role. issuer names
// the provider (User.External).
//
// The account name is created on first login as an external account (no
// password) with role; at later logins its role is set to role again and a
// disabled account is enabled (the provider, not an administrator of the
// fleet, decides who holds which role). A local account of that name, or
// one managed by another issuer, is never taken over: ErrNotExternal. An
// invalid name or role fails with ErrInvalid.
func (s *Service) LoginExternal(ctx context.Context, name, issuer string, role Role, source string) (Session, error) {
	name = normalizeName(name)
	if !validName(name) {
		return Session{}, fmt.Errorf("%w: user name %q", ErrInvalid, name)
	}
	if !role.Valid() || issuer == "" {
		return Session{}, fmt.Errorf("%w: role %q or empty issuer", ErrInvalid, role)
	}
	now := s.cfg.Now()
	raw := make([]byte, sessionIDLen)
	if _, err := io.ReadFull(s.cfg.Rand, raw); err != nil {
		return Session{}, fmt.Errorf("auth: session entropy: %w", err)
	}
	key := sha256.Sum256(raw)
	err := s.db.Update(ctx, func(tx kv.Tx) error {
		cur, err := getUser(tx, name)
		switch {
		case errors.Is(err, ErrNotFound):
			cur = &userRecord{User: User{Name: name, Role: role, Created: now, Changed: now, External: issuer}, Generation: 1}
		case err != nil:
			return err
		case cur.External != issuer:
			return fmt.Errorf("%w: %q", ErrNotExternal, name)
		case cur.Role != role || cur.Disabled:
			cur.Role, cur.Disabled, cur.Changed = role, false, now
		}
		return startSession(tx, key, name, cur, source, now)
	})
	if err != nil {
		return Session{}, err
	}
	s.log.Info("login", "user", name, "role", role, "source", source, "issuer", issuer)
	return Session{
		ID:        base64.RawURLEncoding.EncodeToString(raw),
		User:      name,
		Role:      role,
		CSRFToken: csrfToken(raw),
		Created:   now,
		Expires:   now.Add(s.cfg.MaxSessionAge),
	}, nil
}

// SyncExternal sets the role of an external account of issuer to what its
// provider now says. An empty role disables the account and ends its
// sessions: its next request is refused, and so are its API tokens. It
// reports whether anything changed; a local account, or one of another
// issuer, fails with ErrNotExternal.
func (s *Service) SyncExternal(ctx context.Context, name, issuer string, role Role) (bool, error) {
	name = normalizeName(name)
	if role != "" && !role.Valid() {
		return false, fmt.Errorf("%w: role %q", ErrInvalid, role)
	}
	changed := false
	err := s.db.Update(ctx, func(tx kv.Tx) error {
		changed = false // a transaction may run again
		cur, err := getUser(tx, name)
		if err != nil {
			return err
		}
		if cur.External != issuer || issuer == "" {
			return fmt.Errorf("%w: %q", ErrNotExternal, name)
		}
		now := s.cfg.Now()
		switch {
		case role == "" && !cur.Disabled:
			cur.Disabled, changed = true, true
		case role != "" && (cur.Role != role || cur.Disabled):
			cur.Role, cur.Disabled, cur.Changed, changed = role, false, now, true
		}
		if role == "" {
			if err := deleteSessionsOf(tx, name); err != nil {
				return err
			}
		}
		if !changed {
			return nil
		}
		return put(tx.Bucket(bucketUsers), []byte(name), cur)
	})
	if err != nil {
		return false, err
	}
	if changed {
		s.log.Info("external account synchronized", "user", name, "role", role, "disabled", role == "", "issuer", issuer)
		s.record(ctx, audit.New(audit.System("sso"), "user.sync", name).With("role", string(role)).With("disabled", fmt.Sprint(role == "")))
	}
	return changed, nil
}

// ExternalState returns what SetExternalState last stored for an external
// account of issuer (nil if nothing). A local account, or one of another
// issuer, fails with ErrNotExternal; an unknown one with ErrNotFound.
func (s *Service) ExternalState(ctx context.Context, name, issuer string) ([]byte, error) {
	rec, err := s.getUserRecord(ctx, normalizeName(name))
	if err != nil {
		return nil, err
	}
	if rec.External != issuer || issuer == "" {
		return nil, fmt.Errorf("%w: %q", ErrNotExternal, name)
	}
	return rec.ExternalState, nil
}

// SetExternalState stores state (nil clears it) with an external account
// of issuer, for the single sign-on of every replica sharing the store. The
// caller seals it: it may hold the provider's tokens. Errors as
// ExternalState.
func (s *Service) SetExternalState(ctx context.Context, name, issuer string, state []byte) error {
	name = normalizeName(name)
	return s.db.Update(ctx, func(tx kv.Tx) error {
		cur, err := getUser(tx, name)
		if err != nil {
			return err
		}
		if cur.External != issuer || issuer == "" {
			return fmt.Errorf("%w: %q", ErrNotExternal, name)
		}
		cur.ExternalState = state
		return put(tx.Bucket(bucketUsers), []byte(name), cur)
	})
}

// SSOLoginPath returns where the console's login page links for single
// sign-on (Config.SSOLoginPath); empty when there is none.
func (s *Service) SSOLoginPath() string { return s.cfg.SSOLoginPath }

// PasswordLoginOff reports whether password logins are turned off
// (Config.NoPasswordLogin).
func (s *Service) PasswordLoginOff() bool { return s.cfg.NoPasswordLogin }
