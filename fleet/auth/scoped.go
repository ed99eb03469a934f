package auth

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sigil-iot/sigil/fleet/storage/kv"
)

// What a principal may do to users and API tokens. A credential never
// grants more than its own scope: the effective permissions of a request
// are those its credential's scope and its user's current role both grant
// (Principal.Can), and every method here that creates, changes or revokes
// a user or a token on a principal's behalf checks them, in the
// transaction that makes the change:
//
//   - a role handed out (a new user's, a user's new role, a token's scope)
//     must be covered by the principal (Principal.Covers);
//   - a user is managed (role, disabled, deleted) only by a principal
//     holding PermUsersAdmin whose permissions cover the user's current
//     role;
//   - a token is revoked by itself, or by its owner or a holder of
//     PermUsersAdmin whose permissions cover what the token may do
//     (its scope within its owner's current role): a viewer-scoped token
//     cannot revoke its owner's admin token;
//   - a token issued by a token never outlives it.
//
// Refusals are ErrForbidden, except that a token of another user is
// ErrNotFound to a principal without PermUsersAdmin (its existence is
// none of their business).

// checkManage fails with ErrForbidden unless p may manage a user whose
// role is role (or hand role out to one).
func (p Principal) checkManage(role Role) error {
	switch {
	case !p.Can(PermUsersAdmin):
		return fmt.Errorf("%w: managing users needs %s", ErrForbidden, PermUsersAdmin)
	case !p.Covers(role):
		return fmt.Errorf("%w: role %s exceeds what this credential may do", ErrForbidden, role)
	}
	return nil
}

// NewUser describes a user for CreateUserAs.
type NewUser struct {
	Name     string
	Password string // at least MinPasswordLen characters
	Role     Role
	// Disabled creates the account disabled: under the two-person rule a
	// new account is enabled only once a second person approves.
	Disabled bool
}

// CreateUserAs adds a user on p's behalf: p must hold PermUsersAdmin and
// cover the new user's role (ErrForbidden).
func (s *Service) CreateUserAs(ctx context.Context, p Principal, u NewUser) (User, error) {
	return s.createUser(ctx, u, &p)
}

// UserChange is a change to a user for ChangeUserAs; nil fields stay as
// they are.
type UserChange struct {
	Role     *Role
	Disabled *bool
}

// ChangeUserAs changes a user's role and whether they are disabled, on p's
// behalf: p must hold PermUsersAdmin and cover both the user's current
// role and the new one (ErrForbidden). Disabling ends the user's sessions;
// a change that leaves no enabled admin fails with ErrLastAdmin.
func (s *Service) ChangeUserAs(ctx context.Context, p Principal, name string, c UserChange) (User, error) {
	if c.Role != nil && !c.Role.Valid() {
		return User{}, fmt.Errorf("%w: role %q", ErrInvalid, *c.Role)
	}
	u, err := s.updateUser(ctx, name, func(tx kv.Tx, rec *userRecord) error {
		if err := p.checkChange(rec, c); err != nil {
			return err
		}
		if c.Role != nil {
			s.setRole(rec, *c.Role)
		}
		if c.Disabled != nil {
			return s.setDisabled(tx, rec, *c.Disabled)
		}
		return nil
	})
	if err == nil {
		s.log.Info("user changed", "user", u.Name, "role", u.Role, "disabled", u.Disabled, "by", p)
	}
	return u, err
}

// CheckChangeUserAs reports whether p may make change c to user name now
// (the errors of ChangeUserAs but ErrLastAdmin), changing nothing: a
// change held for approval is refused at once when its requester could
// not make it.
func (s *Service) CheckChangeUserAs(ctx context.Context, p Principal, name string, c UserChange) error {
	if c.Role != nil && !c.Role.Valid() {
		return fmt.Errorf("%w: role %q", ErrInvalid, *c.Role)
	}
	return s.db.View(ctx, func(tx kv.Tx) error {
		rec, err := getUser(tx, normalizeName(name))
		if err != nil {
			return err
		}
		return p.checkChange(rec, c)
	})
}

// checkChange fails unless p may make change c to rec: manage its current
// role and hand out the new one.
func (p Principal) checkChange(rec *userRecord, c UserChange) error {
	if err := p.checkManage(rec.Role); err != nil {
		return err
	}
	if c.Role != nil {
		return p.checkManage(*c.Role)
	}
	return nil
}

// DeleteUserAs removes a user, their sessions and their API tokens on p's
// behalf: p must hold PermUsersAdmin and cover the user's role
// (ErrForbidden).
func (s *Service) DeleteUserAs(ctx context.Context, p Principal, name string) error {
	return s.deleteUser(ctx, name, &p)
}

// TokenSpec describes an API token for CreateTokenAs.
type TokenSpec struct {
	Name string
	Role Role // the token's scope
	// TTL is the token's lifetime, at most Config.MaxTokenTTL; a token
	// created with an API token ends no later than that token.
	TTL time.Duration
	// Pending creates a token that authenticates only once ActivateTokenAs
	// is called: under the two-person rule, a token that may approve is
	// held for a second person's approval.
	Pending bool
}

// CreateTokenAs makes an API token for p's user, scoped to spec.Role,
// which p must cover (ErrForbidden; the owner's current role must cover it
// too). A token created with an API token expires no later than that
// token. The secret is returned once and never stored.
func (s *Service) CreateTokenAs(ctx context.Context, p Principal, spec TokenSpec) (string, Token, error) {
	if !spec.Role.Valid() {
		return "", Token{}, fmt.Errorf("%w: role %q", ErrInvalid, spec.Role)
	}
	if !p.Covers(spec.Role) {
		return "", Token{}, fmt.Errorf("%w: scope %s exceeds what this credential may do", ErrForbidden, spec.Role)
	}
	var notAfter time.Time
	if p.Method == MethodToken {
		notAfter = p.Expires
	}
	return s.createToken(ctx, p.User, spec, notAfter)
}

// RevokeTokenAs revokes a token on p's behalf: a token may revoke itself;
// otherwise p must be its owner or hold PermUsersAdmin (else ErrNotFound),
// and cover what the token may do: its scope within its owner's current
// role (else ErrForbidden). Revoking it again changes nothing.
func (s *Service) RevokeTokenAs(ctx context.Context, p Principal, id string) (Token, error) {
	return s.revokeToken(ctx, id, func(tx kv.Tx, rec *tokenRecord) error {
		if p.Method == MethodToken && rec.ID == p.TokenID {
			return nil
		}
		if rec.Owner != p.User && !p.Can(PermUsersAdmin) {
			return fmt.Errorf("%w: token %q", ErrNotFound, id)
		}
		owner, err := getUser(tx, rec.Owner)
		if err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
		if !p.coversAll(effective(rec.Role, owner)) {
			return fmt.Errorf("%w: token %s may do more than this credential", ErrForbidden, id)
		}
		return nil
	})
}

// effective returns the permissions a token of scope role holds while its
// owner's role is what owner says (all of role's without an owner).
func effective(role Role, owner *userRecord) []Permission {
	if owner == nil {
		return role.Permissions()
	}
	var out []Permission
	for _, perm := range role.Permissions() {
		if owner.Role.Has(perm) {
			out = append(out, perm)
		}
	}
	return out
}

// ActivateTokenAs lets a token created pending (TokenSpec.Pending)
// authenticate, on p's behalf: p must be the token's owner and cover its
// scope (ErrForbidden), and the token must be pending and not revoked
// (ErrInvalid). The two-person rule calls it, as the token's requester,
// once a second person approved.
func (s *Service) ActivateTokenAs(ctx context.Context, p Principal, id string) (Token, error) {
	var out Token
	err := s.db.Update(ctx, func(tx kv.Tx) error {
		rec, err := getToken(tx, id)
		if err != nil {
			return err
		}
		switch {
		case rec.Owner != p.User:
			return fmt.Errorf("%w: token %s is not %s's", ErrForbidden, id, p.User)
		case !p.Covers(rec.Role):
			return fmt.Errorf("%w: scope %s exceeds what the requester may now do", ErrForbidden, rec.Role)
		case !rec.Revoked.IsZero():
			return fmt.Errorf("%w: token %s is revoked", ErrInvalid, id)
		case !rec.Pending:
			return fmt.Errorf("%w: token %s is not awaiting approval", ErrInvalid, id)
		}
		rec.Pending = false
		out = rec.Token
		return put(tx.Bucket(bucketTokens), []byte(rec.ID), rec)
	})
	if err == nil {
		s.log.Info("API token activated", "token_id", id, "owner", out.Owner, "role", out.Role)
	}
	return out, err
}

// ErrCredentialGone: Principal cannot establish a principal again: its
// user is gone or disabled, or its token revoked, expired, unapproved or
// gone.
var ErrCredentialGone = errors.New("auth: the credential no longer authenticates")

// Principal establishes the principal c names again, as its user and
// token are now: its permissions are what c's scope and the user's current
// role both grant (an API token's, its stored scope). It fails with
// ErrCredentialGone when the user is gone or disabled, or the token is
// revoked, expired, pending or not the user's; with ErrInvalid for a
// malformed credential. An approved request is carried out with the
// principal its requester's credential names then: if they have lost the
// permission it needs, it does not run.
func (s *Service) Principal(ctx context.Context, c Credential) (Principal, error) {
	name := normalizeName(c.User)
	now := s.cfg.Now()
	var (
		u   *userRecord
		tok *tokenRecord
	)
	err := s.db.View(ctx, func(tx kv.Tx) error {
		var err error
		if u, err = getUser(tx, name); err != nil {
			return err
		}
		if c.Method == MethodToken {
			tok, err = getToken(tx, c.TokenID)
		}
		return err
	})
	if errors.Is(err, ErrNotFound) {
		return Principal{}, fmt.Errorf("%w: %w", ErrCredentialGone, err)
	}
	if err != nil {
		return Principal{}, err
	}
	if u.Disabled {
		return Principal{}, fmt.Errorf("%w: user %q is disabled", ErrCredentialGone, name)
	}
	p := Principal{User: u.Name, Method: c.Method, ownerRole: u.Role, since: u.Since()}
	switch c.Method {
	case MethodToken:
		switch {
		case tok.Owner != u.Name:
			return Principal{}, fmt.Errorf("%w: token %s is not %s's", ErrCredentialGone, tok.ID, u.Name)
		case !tok.Revoked.IsZero():
			return Principal{}, fmt.Errorf("%w: token %s is revoked", ErrCredentialGone, tok.ID)
		case tok.Pending:
			return Principal{}, fmt.Errorf("%w: token %s awaits approval", ErrCredentialGone, tok.ID)
		case !now.Before(tok.Expires):
			return Principal{}, fmt.Errorf("%w: token %s expired", ErrCredentialGone, tok.ID)
		}
		p.Role, p.TokenID, p.Expires = tok.Role, tok.ID, tok.Expires
	case MethodSession:
		if !c.Scope.Valid() {
			return Principal{}, fmt.Errorf("%w: scope %q", ErrInvalid, c.Scope)
		}
		p.Role = c.Scope
	default:
		return Principal{}, fmt.Errorf("%w: method %q", ErrInvalid, c.Method)
	}
	return p, nil
}
