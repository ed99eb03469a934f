package auth

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/sigil-iot/sigil/fleet/storage/kv"
)

// TokenPrefix starts every API token secret.
const TokenPrefix = "sga_"

const (
	tokenSecretLen = 32 // bytes
	maxTokenName   = 128
)

// Token is an API token without its secret, which only CreateToken ever
// returns.
type Token struct {
	ID       string    `json:"id"`   // public handle, "apt_" + 16 hex digits
	Name     string    `json:"name"` // what it is for
	Owner    string    `json:"owner"`
	Role     Role      `json:"role"` // its scope: never more than the owner's role
	Created  time.Time `json:"created"`
	Expires  time.Time `json:"expires"`
	LastUsed time.Time `json:"last_used,omitzero"` // refreshed at most once a minute
	Revoked  time.Time `json:"revoked,omitzero"`
	// Pending: created under the two-person rule, the token authenticates
	// only once a second person approved it (Service.ActivateTokenAs).
	Pending bool `json:"pending,omitempty"`
}

// Active reports whether t is neither revoked, expired nor pending at now.
func (t Token) Active(now time.Time) bool {
	return t.Revoked.IsZero() && !t.Pending && now.Before(t.Expires)
}

// tokenRecord is a stored token.
type tokenRecord struct {
	Token
	Hash []byte `json:"hash"` // SHA-256 of the secret
}

// CreateToken makes an API token for owner, scoped to role (which owner's
// own role must cover) and valid for ttl (at most Config.MaxTokenTTL). The
// secret ("sga_" + 32 random bytes in base64url) is returned once and never
// stored. It checks no credential's scope: CreateTokenAs does, for
// requests.
func (s *Service) CreateToken(ctx context.Context, owner, name string, role Role, ttl time.Duration) (string, Token, error) {
	return s.createToken(ctx, owner, TokenSpec{Name: name, Role: role, TTL: ttl}, time.Time{})
}

// createToken makes a token for owner as spec says, expiring no later than
// notAfter (unless zero).
func (s *Service) createToken(ctx context.Context, owner string, spec TokenSpec, notAfter time.Time) (string, Token, error) {
	owner = normalizeName(owner)
	name, role, ttl := spec.Name, spec.Role, spec.TTL
	switch {
	case ttl <= 0 || ttl > s.cfg.MaxTokenTTL:
		return "", Token{}, fmt.Errorf("%w: token lifetime must be positive and at most %s", ErrInvalid, s.cfg.MaxTokenTTL)
	case !role.Valid():
		return "", Token{}, fmt.Errorf("%w: role %q", ErrInvalid, role)
	case !validTokenName(name):
		return "", Token{}, fmt.Errorf("%w: token name must be 1 to %d printable characters", ErrInvalid, maxTokenName)
	}
	raw := make([]byte, tokenSecretLen+8)
	if _, err := io.ReadFull(s.cfg.Rand, raw); err != nil {
		return "", Token{}, fmt.Errorf("auth: token entropy: %w", err)
	}
	secret := TokenPrefix + base64.RawURLEncoding.EncodeToString(raw[:tokenSecretLen])
	sum := sha256.Sum256([]byte(secret))
	now := s.cfg.Now()
	rec := &tokenRecord{
		Token: Token{ID: "apt_" + hex.EncodeToString(raw[tokenSecretLen:]), Name: name, Owner: owner, Role: role,
			Created: now, Expires: now.Add(ttl), Pending: spec.Pending},
		Hash: sum[:],
	}
	if !notAfter.IsZero() && rec.Expires.After(notAfter) {
		rec.Expires = notAfter
	}
	err := s.db.Update(ctx, func(tx kv.Tx) error {
		u, err := getUser(tx, owner)
		if err != nil {
			return err
		}
		if u.Disabled {
			return fmt.Errorf("%w: user %q is disabled", ErrInvalid, owner)
		}
		if !u.Role.Covers(role) {
			return fmt.Errorf("%w: role %s exceeds the owner's role %s", ErrForbidden, role, u.Role)
		}
		if tx.Bucket(bucketTokens).Get([]byte(rec.ID)) != nil || tx.Bucket(bucketTokHash).Get(rec.Hash) != nil {
			return errors.New("auth: token collision (broken entropy source?)")
		}
		if err := put(tx.Bucket(bucketTokens), []byte(rec.ID), rec); err != nil {
			return err
		}
		return tx.Bucket(bucketTokHash).Put(rec.Hash, []byte(rec.ID))
	})
	if err != nil {
		return "", Token{}, err
	}
	s.log.Info("API token created", "token_id", rec.ID, "owner", owner, "role", role, "expires", rec.Expires, "pending", rec.Pending)
	return secret, rec.Token, nil
}

func validTokenName(name string) bool {
	if name == "" || len(name) > maxTokenName || !utf8.ValidString(name) {
		return false
	}
	for _, r := range name {
		if !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

// Token returns a token by ID.
func (s *Service) Token(ctx context.Context, id string) (Token, error) {
	var t Token
	err := s.db.View(ctx, func(tx kv.Tx) error {
		rec, err := getToken(tx, id)
		if err != nil {
			return err
		}
		t = rec.Token
		return nil
	})
	return t, err
}

func getToken(tx kv.Tx, id string) (*tokenRecord, error) {
	v := tx.Bucket(bucketTokens).Get([]byte(id))
	if v == nil {
		return nil, fmt.Errorf("%w: token %q", ErrNotFound, id)
	}
	return decode[tokenRecord](v)
}

// Tokens returns the tokens of owner ("" for every owner), revoked and
// expired ones included, in ID order.
func (s *Service) Tokens(ctx context.Context, owner string) ([]Token, error) {
	owner = normalizeName(owner)
	var out []Token
	err := s.db.View(ctx, func(tx kv.Tx) error {
		out = nil // a transaction may run again
		return tx.Bucket(bucketTokens).ForEach(func(k, v []byte) error {
			rec, err := decode[tokenRecord](v)
			if err != nil {
				return fmt.Errorf("%w (token %q)", err, k)
			}
			if owner == "" || rec.Owner == owner {
				out = append(out, rec.Token)
			}
			return nil
		})
	})
	return out, err
}

// RevokeToken revokes a token at once; revoking it again changes nothing.
// It checks no credential's scope: RevokeTokenAs does, for requests.
func (s *Service) RevokeToken(ctx context.Context, id string) (Token, error) {
	return s.revokeToken(ctx, id, nil)
}

// revokeToken revokes a token if check (when not nil) allows, in the same
// transaction.
func (s *Service) revokeToken(ctx context.Context, id string, check func(kv.Tx, *tokenRecord) error) (Token, error) {
	var out Token
	err := s.db.Update(ctx, func(tx kv.Tx) error {
		rec, err := getToken(tx, id)
		if err != nil {
			return err
		}
		if check != nil {
			if err := check(tx, rec); err != nil {
				return err
			}
		}
		if rec.Revoked.IsZero() {
			rec.Revoked = s.cfg.Now()
			if err := put(tx.Bucket(bucketTokens), []byte(id), rec); err != nil {
				return err
			}
		}
		out = rec.Token
		return nil
	})
	if err == nil {
		s.log.Info("API token revoked", "token_id", id, "owner", out.Owner)
	}
	return out, err
}

// token resolves a bearer secret to its principal and refreshes LastUsed.
func (s *Service) token(ctx context.Context, secret string) (Principal, error) {
	if !strings.HasPrefix(secret, TokenPrefix) ||
		len(secret) != len(TokenPrefix)+base64.RawURLEncoding.EncodedLen(tokenSecretLen) {
		return Principal{}, ErrTokenInvalid
	}
	sum := sha256.Sum256([]byte(secret))
	now := s.cfg.Now()
	var (
		rec   *tokenRecord
		owner *userRecord
	)
	err := s.db.View(ctx, func(tx kv.Tx) error {
		id := tx.Bucket(bucketTokHash).Get(sum[:])
		if id == nil {
			return ErrTokenInvalid
		}
		var err error
		if rec, err = getToken(tx, string(id)); err != nil {
			if errors.Is(err, ErrNotFound) {
				return ErrTokenInvalid
			}
			return err
		}
		if subtle.ConstantTimeCompare(rec.Hash, sum[:]) != 1 {
			return ErrTokenInvalid
		}
		owner, err = getUser(tx, rec.Owner)
		if errors.Is(err, ErrNotFound) {
			return fmt.Errorf("%w: token %s: its owner is gone", ErrTokenInvalid, rec.ID)
		}
		return err
	})
	if err != nil {
		return Principal{}, err
	}
	switch {
	case !rec.Revoked.IsZero():
		return Principal{}, fmt.Errorf("%w: token %s revoked", ErrTokenInvalid, rec.ID)
	case rec.Pending:
		return Principal{}, fmt.Errorf("%w: token %s awaits approval", ErrTokenInvalid, rec.ID)
	case !now.Before(rec.Expires):
		return Principal{}, fmt.Errorf("%w: token %s expired %s", ErrTokenExpired, rec.ID, rec.Expires.UTC().Format(time.RFC3339))
	case owner.Disabled:
		return Principal{}, fmt.Errorf("%w: token %s: its owner is disabled", ErrTokenInvalid, rec.ID)
	}
	if now.Sub(rec.LastUsed) >= time.Minute {
		err := s.db.Update(ctx, func(tx kv.Tx) error {
			cur, err := getToken(tx, rec.ID)
			if err != nil {
				return err
			}
			if now.After(cur.LastUsed) {
				cur.LastUsed = now
			}
			return put(tx.Bucket(bucketTokens), []byte(rec.ID), cur)
		})
		if err != nil {
			return Principal{}, err
		}
	}
	return Principal{
		User:      owner.Name,
		Role:      rec.Role,
		Method:    MethodToken,
		TokenID:   rec.ID,
		Expires:   rec.Expires,
		ownerRole: owner.Role,
		since:     owner.Since(),
	}, nil
}

func deleteTokensOf(tx kv.Tx, name string) error {
	b := tx.Bucket(bucketTokens)
	var recs []*tokenRecord
	err := b.ForEach(func(k, v []byte) error {
		rec, err := decode[tokenRecord](v)
		if err != nil {
			return fmt.Errorf("%w (token %q)", err, k)
		}
		if rec.Owner == name {
			recs = append(recs, rec)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, rec := range recs {
		if err := b.Delete([]byte(rec.ID)); err != nil {
			return err
		}
		if err := tx.Bucket(bucketTokHash).Delete(rec.Hash); err != nil {
			return err
		}
	}
	return nil
}
