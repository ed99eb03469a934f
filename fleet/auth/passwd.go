package auth

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/storage/kv"
)

// ErrSamePassword: a new password equal to the current one.
var ErrSamePassword = fmt.Errorf("%w: the new password is the current one", ErrInvalid)

// PasswordChange is what ChangeOwnPassword did.
type PasswordChange struct {
	// Session replaces the session the change was made with: the same
	// user, a new ID (and so a new CSRF token), set with Cookie. Zero when
	// the change was made with an API token.
	Session Session
	// SessionsEnded counts the user's sessions that ended, the one the
	// change was made with included (it lives on as Session).
	SessionsEnded int
}

// ChangeOwnPassword changes the password of p's own user to password,
// once current proves that the person knows the password now. source is
// the client's address (ClientAddr).
//
// In order:
//
//  1. password must meet the rules CreateUser applies (at least
//     MinPasswordLen characters; ErrInvalid) and differ from current
//     (ErrSamePassword);
//  2. the attempt is throttled exactly like a login of p's user from
//     source, on the same counters (a *ThrottleError, ErrThrottled): a
//     stolen session or token cannot guess the password faster than a
//     login could, and each wrong guess counts against logins too;
//  3. current must be the user's password, and the user must exist and
//     be enabled (ErrInvalidCredentials, audited as a denied
//     auth.password);
//  4. in one transaction, if the password did not change meanwhile
//     (ErrInvalidCredentials otherwise): the new password is stored as an
//     argon2id hash under Config.Params, every session of the user ends,
//     and when p is a session (MethodSession) a new session replaces it
//     (PasswordChange.Session: the browser that made the change stays
//     logged in, under a new ID).
//
// API tokens are not affected: they are credentials of their own, revoked
// on their own (RevokeTokenAs). A change of one's own password is not a
// change of hands (User.Changed stays). The change is audited as
// auth.password with the number of sessions ended; no password is ever
// logged.
func (s *Service) ChangeOwnPassword(ctx context.Context, p Principal, current, password, source string) (PasswordChange, error) {
	name := normalizeName(p.User)
	if err := validPassword(password); err != nil {
		return PasswordChange{}, err
	}
	if password == current {
		return PasswordChange{}, ErrSamePassword
	}
	if rec, err := s.getUserRecord(ctx, name); err == nil && rec.External != "" {
		return PasswordChange{}, ErrExternalAccount // not a wrong password: nothing to count
	}
	now := s.cfg.Now()
	rec, _, err := s.checkPassword(ctx, name, current, source, now)
	var wrong *wrongPassword
	switch {
	case errors.As(err, &wrong):
		s.log.Warn("password change refused: wrong current password", "user", name, "source", source, "method", p.Method)
		s.record(ctx, audit.New(audit.User(name), "auth.password", name).Deny("wrong current password").
			With("source", source).With("method", string(p.Method)))
		s.auditLockouts(ctx, name, source, wrong.locked, now)
		return PasswordChange{}, ErrInvalidCredentials
	case errors.Is(err, ErrThrottled):
		s.log.Warn("password change throttled", "user", name, "source", source, "err", err)
		return PasswordChange{}, err
	case err != nil:
		return PasswordChange{}, err
	}

	h, err := s.hash(ctx, password)
	if err != nil {
		return PasswordChange{}, err
	}
	var (
		out PasswordChange
		raw []byte
	)
	if p.Method == MethodSession {
		raw = make([]byte, sessionIDLen)
		if _, err := io.ReadFull(s.cfg.Rand, raw); err != nil {
			return PasswordChange{}, fmt.Errorf("auth: session entropy: %w", err)
		}
	}
	err = s.db.Update(ctx, func(tx kv.Tx) error {
		cur, err := getUser(tx, name)
		if err != nil {
			return err
		}
		if cur.Generation != rec.Generation || cur.Disabled {
			return ErrInvalidCredentials // changed or disabled meanwhile
		}
		cur.Hash, cur.PasswordChanged = h, now
		cur.Generation++
		if err := put(tx.Bucket(bucketUsers), []byte(name), cur); err != nil {
			return err
		}
		n, err := s.liveSessionsOf(tx, name, rec.Generation, now)
		if err != nil {
			return err
		}
		out.SessionsEnded = n
		if err := deleteSessionsOf(tx, name); err != nil {
			return err
		}
		if raw == nil {
			return nil
		}
		key := sha256.Sum256(raw)
		sessions := tx.Bucket(bucketSessions)
		if sessions.Get(key[:]) != nil {
			return errors.New("auth: session ID collision (broken entropy source?)")
		}
		return put(sessions, key[:], &sessionRecord{User: name, Generation: cur.Generation, Created: now, LastSeen: now, Source: source})
	})
	if err != nil {
		return PasswordChange{}, err
	}
	if raw != nil {
		out.Session = Session{
			ID:        base64.RawURLEncoding.EncodeToString(raw),
			User:      name,
			Role:      rec.Role,
			CSRFToken: csrfToken(raw),
			Created:   now,
			Expires:   now.Add(s.cfg.MaxSessionAge),
		}
	}
	s.log.Info("password changed", "user", name, "source", source, "method", p.Method, "sessions_ended", out.SessionsEnded)
	s.record(ctx, audit.New(audit.User(name), "auth.password", name).With("source", source).
		With("method", string(p.Method)).With("sessions_ended", strconv.Itoa(out.SessionsEnded)))
	return out, nil
}

// liveSessionsOf counts the sessions of a user that are live at now
// under the user's password generation gen.
func (s *Service) liveSessionsOf(tx kv.Tx, name string, gen uint64, now time.Time) (int, error) {
	n := 0
	err := tx.Bucket(bucketSessions).ForEach(func(_, v []byte) error {
		rec, err := decode[sessionRecord](v)
		if err == nil && rec.User == name && rec.Generation == gen &&
			now.Before(rec.Created.Add(s.cfg.MaxSessionAge)) && now.Before(rec.LastSeen.Add(s.cfg.IdleTimeout)) {
			n++
		}
		return nil
	})
	return n, err
}
