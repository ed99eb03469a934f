package auth

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/storage/kv"
)

// Session is a login. ID is the secret the session cookie carries: it is
// returned once, by Login, and only its SHA-256 is stored.
type Session struct {
	ID        string
	User      string
	Role      Role
	CSRFToken string    // what state-changing requests must carry
	Created   time.Time // login time
	Expires   time.Time // absolute expiry; idle expiry comes sooner if unused
}

// String omits the ID and the CSRF token.
func (s Session) String() string {
	return fmt.Sprintf("session of %s until %s", s.User, s.Expires.UTC())
}

// GoString omits the ID and the CSRF token.
func (s Session) GoString() string { return s.String() }

// LogValue implements slog.LogValuer without the ID and the CSRF token.
func (s Session) LogValue() slog.Value {
	return slog.GroupValue(slog.String("user", s.User), slog.String("role", string(s.Role)), slog.Time("expires", s.Expires))
}

// sessionRecord is a stored session, keyed by the SHA-256 of its ID.
type sessionRecord struct {
	User       string    `json:"user"`
	Generation uint64    `json:"generation"` // the user's, at login
	Created    time.Time `json:"created"`
	LastSeen   time.Time `json:"last_seen"`
	Source     string    `json:"source,omitempty"` // ClientAddr at login
}

const sessionIDLen = 32 // bytes: 256 bits

// Login checks a user name and password and starts a session. source is
// the client's address (ClientAddr) for throttling.
//
// Unknown users, wrong passwords and disabled users all fail with
// ErrInvalidCredentials after the same work. Too many failures fail with a
// *ThrottleError (ErrThrottled) without checking the password. A stored
// hash made with other parameters than Config.Params is replaced.
func (s *Service) Login(ctx context.Context, name, password, source string) (Session, error) {
	name = normalizeName(name)
	if len(name) > maxNameLen {
		name = name[:maxNameLen] // the throttle key; no such user exists
	}
	now := s.cfg.Now()
	if s.cfg.NoPasswordLogin {
		s.log.Warn("password login refused: turned off", "user", name, "source", source)
		s.record(ctx, audit.New(audit.System("auth"), "auth.login", "").Deny("password login is turned off").With("source", source))
		return Session{}, ErrPasswordLoginOff
	}
	rec, h, err := s.checkPassword(ctx, name, password, source, now)
	var wrong *wrongPassword
	switch {
	case errors.As(err, &wrong):
		s.auditFailedLogin(ctx, name, source, wrong.rec, wrong.locked, now)
		return Session{}, ErrInvalidCredentials
	case errors.Is(err, ErrThrottled):
		s.log.Warn("login throttled", "source", source, "err", err)
		return Session{}, err
	case err != nil:
		return Session{}, err
	}

	rehash := ""
	if h.NeedsRehash(s.cfg.Params) {
		if rehash, err = s.hash(ctx, password); err != nil {
			return Session{}, err
		}
	}
	raw := make([]byte, sessionIDLen)
	if _, err := io.ReadFull(s.cfg.Rand, raw); err != nil {
		return Session{}, fmt.Errorf("auth: session entropy: %w", err)
	}
	key := sha256.Sum256(raw)
	err = s.db.Update(ctx, func(tx kv.Tx) error {
		cur, err := getUser(tx, name)
		if err != nil {
			return err
		}
		if cur.Generation != rec.Generation || cur.Disabled {
			return ErrInvalidCredentials // the password changed or the user was disabled meanwhile
		}
		if rehash != "" {
			cur.Hash = rehash
		}
		return startSession(tx, key, name, cur, source, now)
	})
	if err != nil {
		return Session{}, err
	}
	if rehash != "" {
		s.log.Info("password hash upgraded to the configured parameters", "user", name)
	}
	s.log.Info("login", "user", name, "source", source)
	s.record(ctx, audit.New(audit.User(name), "auth.login", name).With("source", source))
	return Session{
		ID:        base64.RawURLEncoding.EncodeToString(raw),
		User:      name,
		Role:      rec.Role,
		CSRFToken: csrfToken(raw),
		Created:   now,
		Expires:   now.Add(s.cfg.MaxSessionAge),
	}, nil
}

// auditFailedLogin logs and audits a failed login and the lockouts it
// caused. The name tried is recorded only when such a user exists: an
// unknown name may be a password typed in the wrong field.
func (s *Service) auditFailedLogin(ctx context.Context, name, source string, rec *userRecord, locked lockouts, now time.Time) {
	attrs := []any{"source", source, "known_user", rec != nil}
	target := ""
	if rec != nil {
		attrs = append(attrs, "user", name, "disabled", rec.Disabled)
		target = name
	}
	e := audit.New(audit.System("auth"), "auth.login", target).Deny("wrong user name or password").
		With("source", source).With("known_user", strconv.FormatBool(rec != nil))
	if rec == nil {
		// Anyone can try names that do not exist: a few lines per source
		// and a sample in the audit log, the rest counted.
		s.anonLog.Log(ctx, slog.LevelWarn, "login/"+source, "login failed", attrs...)
		if err := s.cfg.Anonymous.Record(context.WithoutCancel(ctx), e); err != nil {
			s.log.Error("audit: recording a login event failed", "action", e.Action, "err", err)
		}
	} else {
		s.log.Warn("login failed", attrs...)
		if rec.Disabled {
			e = e.With("disabled", "true")
		}
		s.record(ctx, e)
	}
	s.auditLockouts(ctx, target, source, locked, now)
}

// auditLockouts logs and audits the lockouts and slow-downs a failed
// password check (a login, or the current password of a change) caused.
func (s *Service) auditLockouts(ctx context.Context, target, source string, locked lockouts, now time.Time) {
	until := now.Add(s.cfg.Throttle.Lockout).UTC().Format(time.RFC3339)
	lockout := func(scope, reason string) {
		s.record(ctx, audit.New(audit.System("auth"), "auth.lockout", target).Because(reason).
			With("source", source).With("scope", scope).With("until", until))
	}
	if locked.pair {
		s.log.Warn("user locked out from a source address", "user", target, "source", source, "for", s.cfg.Throttle.Lockout)
		lockout("user-source", fmt.Sprintf("%d failed logins for this user from this address", s.cfg.Throttle.Failures))
	}
	if locked.addr {
		s.log.Warn("source address locked out", "source", source, "for", s.cfg.Throttle.Lockout)
		lockout("source", fmt.Sprintf("%d failed logins from this address", s.cfg.Throttle.AddrFailures))
	}
	if locked.name {
		s.log.Warn("user's logins from unfamiliar addresses slowed down", "user", target, "every", s.cfg.Throttle.UserDelay)
		s.record(ctx, audit.New(audit.System("auth"), "auth.slowdown", target).
			Because(fmt.Sprintf("%d failed logins for this user from all addresses", s.cfg.Throttle.UserFailures)).
			With("every", s.cfg.Throttle.UserDelay.String()))
	}
}

// record appends an entry to the audit log; a failure is logged (the
// answer to the login does not depend on it).
func (s *Service) record(ctx context.Context, e audit.Entry) {
	if err := s.cfg.Audit.Record(context.WithoutCancel(ctx), e); err != nil {
		s.log.Error("audit: recording a login event failed", "action", e.Action, "err", err)
	}
}

// csrfToken derives a session's synchronizer token from its ID: it is
// bound to the session and reveals nothing about the ID.
func csrfToken(rawID []byte) string {
	h := sha256.New()
	h.Write([]byte("sigil csrf token\x00"))
	h.Write(rawID)
	return base64.RawURLEncoding.EncodeToString(h.Sum(nil))
}

// parseSessionID decodes a cookie value; it fails for anything but
// sessionIDLen bytes of unpadded base64url.
func parseSessionID(v string) ([]byte, bool) {
	if len(v) != base64.RawURLEncoding.EncodedLen(sessionIDLen) {
		return nil, false
	}
	raw, err := base64.RawURLEncoding.Strict().DecodeString(v)
	if err != nil || len(raw) != sessionIDLen {
		return nil, false
	}
	return raw, true
}

// touchEvery is how stale LastSeen may get before a request rewrites it:
// a session may therefore idle out up to this much early.
func (s *Service) touchEvery() time.Duration {
	return min(time.Minute, s.cfg.IdleTimeout/10)
}

// session resolves a session cookie's value to its principal. It ends a
// session found expired, runs check (if not nil) on the raw session ID, and
// only then refreshes LastSeen.
func (s *Service) session(ctx context.Context, value string, check func(rawID []byte) error) (Principal, error) {
	raw, ok := parseSessionID(value)
	if !ok {
		return Principal{}, ErrSessionInvalid
	}
	key := sha256.Sum256(raw)
	now := s.cfg.Now()
	var (
		rec  *sessionRecord
		user *userRecord
	)
	err := s.db.View(ctx, func(tx kv.Tx) error {
		v := tx.Bucket(bucketSessions).Get(key[:])
		if v == nil {
			return ErrSessionInvalid
		}
		var err error
		if rec, err = decode[sessionRecord](v); err != nil {
			return err
		}
		user, err = getUser(tx, rec.User)
		if errors.Is(err, ErrNotFound) {
			return fmt.Errorf("%w: its user is gone", ErrSessionInvalid)
		}
		return err
	})
	if err != nil {
		return Principal{}, err
	}
	var expired error
	switch {
	case !now.Before(rec.Created.Add(s.cfg.MaxSessionAge)):
		expired = fmt.Errorf("%w: older than %s", ErrSessionExpired, s.cfg.MaxSessionAge)
	case !now.Before(rec.LastSeen.Add(s.cfg.IdleTimeout)):
		expired = fmt.Errorf("%w: idle for %s", ErrSessionExpired, s.cfg.IdleTimeout)
	case user.Generation != rec.Generation:
		expired = fmt.Errorf("%w: the password changed", ErrSessionInvalid)
	case user.Disabled:
		return Principal{}, fmt.Errorf("%w: user disabled", ErrSessionInvalid)
	}
	if expired != nil {
		if err := s.deleteSession(ctx, key[:]); err != nil {
			return Principal{}, err
		}
		return Principal{}, expired
	}
	if check != nil {
		if err := check(raw); err != nil {
			return Principal{}, err
		}
	}
	if now.Sub(rec.LastSeen) >= s.touchEvery() {
		err := s.db.Update(ctx, func(tx kv.Tx) error {
			b := tx.Bucket(bucketSessions)
			v := b.Get(key[:])
			if v == nil {
				return ErrSessionInvalid // logged out meanwhile
			}
			cur, err := decode[sessionRecord](v)
			if err != nil {
				return err
			}
			if now.After(cur.LastSeen) {
				cur.LastSeen = now
			}
			return put(b, key[:], cur)
		})
		if err != nil {
			return Principal{}, err
		}
	}
	return Principal{
		User:      user.Name,
		Role:      user.Role,
		Method:    MethodSession,
		CSRFToken: csrfToken(raw),
		External:  user.External,
		Expires:   minTime(rec.Created.Add(s.cfg.MaxSessionAge), now.Add(s.cfg.IdleTimeout)),
		since:     user.Since(),
	}, nil
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func (s *Service) deleteSession(ctx context.Context, key []byte) error {
	return s.db.Update(ctx, func(tx kv.Tx) error { return tx.Bucket(bucketSessions).Delete(key) })
}

// Logout ends the session whose cookie r carries, if any; the caller
// should also send ClearCookie.
func (s *Service) Logout(r *http.Request) error {
	ctx := r.Context()
	c, err := r.Cookie(s.cfg.CookieName)
	if err != nil {
		return ErrNoCredentials
	}
	raw, ok := parseSessionID(c.Value)
	if !ok {
		return ErrSessionInvalid
	}
	key := sha256.Sum256(raw)
	return s.deleteSession(ctx, key[:])
}

// EndSessions ends every session of a user (API tokens stay).
func (s *Service) EndSessions(ctx context.Context, name string) error {
	return s.db.Update(ctx, func(tx kv.Tx) error { return deleteSessionsOf(tx, normalizeName(name)) })
}

func deleteSessionsOf(tx kv.Tx, name string) error {
	b := tx.Bucket(bucketSessions)
	var keys [][]byte
	err := b.ForEach(func(k, v []byte) error {
		rec, err := decode[sessionRecord](v)
		if err != nil || rec.User == name {
			keys = append(keys, k) // an undecodable session is dead anyway
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, k := range keys {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// Cookie returns the session cookie for sess: HttpOnly, Secure,
// SameSite=Strict, Path=/, expiring with the session's absolute lifetime.
func (s *Service) Cookie(sess Session) *http.Cookie {
	return &http.Cookie{
		Name:     s.cfg.CookieName,
		Value:    sess.ID,
		Path:     "/",
		Expires:  sess.Expires,
		MaxAge:   max(1, int(sess.Expires.Sub(s.cfg.Now())/time.Second)),
		Secure:   true,
		HttpOnly: true,
		SameSite: http.SameSiteStrictMode,
	}
}

// ClearCookie returns a cookie that makes the browser drop the session
// cookie.
func (s *Service) ClearCookie() *http.Cookie {
	return &http.Cookie{
		Name:     s.cfg.CookieName,
		Value:    "",
		Path:     "/",
		MaxAge:   -1,
		Secure:   true,
		HttpOnly: true,
		SameSite: http.SameSiteStrictMode,
	}
}

// Prune deletes expired sessions and returns how many; on PostgreSQL it
// also forgets the login throttle's stale counters.
func (s *Service) Prune(ctx context.Context) (int, error) {
	now := s.cfg.Now()
	n := 0
	err := s.db.Update(ctx, func(tx kv.Tx) error {
		b := tx.Bucket(bucketSessions)
		var dead [][]byte
		err := b.ForEach(func(k, v []byte) error {
			rec, err := decode[sessionRecord](v)
			if err != nil || !now.Before(rec.Created.Add(s.cfg.MaxSessionAge)) || !now.Before(rec.LastSeen.Add(s.cfg.IdleTimeout)) {
				dead = append(dead, k)
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range dead {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		n = len(dead)
		return nil
	})
	if err != nil {
		return n, err
	}
	// The shared login throttle's stale counters go too.
	return n, s.throttle.prune(ctx, now)
}

// Run prunes expired sessions every Config.PruneInterval until ctx ends;
// it returns nil then.
func (s *Service) Run(ctx context.Context) error {
	t := time.NewTicker(s.cfg.PruneInterval)
	defer t.Stop()
	logs := make(chan error, 1)
	go func() { logs <- s.anonLog.Run(ctx) }()
	defer func() { <-logs }()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if n, err := s.Prune(ctx); err != nil {
				s.log.Error("pruning sessions", "err", err)
			} else if n > 0 {
				s.log.Debug("pruned sessions", "count", n)
			}
		}
	}
}

// wrongPassword is checkPassword's answer to a wrong password (or an
// unknown or disabled user): the record, if the user exists, and the
// lockouts the failure caused. It is ErrInvalidCredentials.
type wrongPassword struct {
	rec    *userRecord
	locked lockouts
}

func (*wrongPassword) Error() string { return ErrInvalidCredentials.Error() }
func (*wrongPassword) Unwrap() error { return ErrInvalidCredentials }

// checkPassword checks name's password under the login throttle, in the
// same time whether the user exists or not (an unknown name is checked
// against a dummy hash): a *ThrottleError before any check while the
// throttle holds name or source back; a *wrongPassword when the password is
// wrong, the user unknown or disabled (the failure counted); otherwise the
// user's record and its verified hash (the success counted). Login and a
// password change share it, so a stolen session guesses no faster than a
// login could.
func (s *Service) checkPassword(ctx context.Context, name, password, source string, now time.Time) (*userRecord, Hash, error) {
	wait, ok, err := s.throttle.begin(ctx, name, source, now)
	if err != nil {
		return nil, Hash{}, err
	}
	if !ok {
		return nil, Hash{}, &ThrottleError{RetryAfter: wait}
	}
	fail := func() lockouts {
		l, err := s.throttle.fail(ctx, name, source, now)
		if err != nil {
			s.log.Error("login throttle: counting a failure failed", "user", name, "source", source, "err", err)
		}
		return l
	}
	rec, err := s.getUserRecord(ctx, name)
	if err != nil && !errors.Is(err, ErrNotFound) {
		fail()
		return nil, Hash{}, err
	}
	encoded := ""
	if rec != nil && rec.External == "" {
		encoded = rec.Hash
	} else if encoded, err = s.dummyHash(ctx); err != nil { // unknown, or external (no password)
		fail()
		return nil, Hash{}, err
	}
	ok, h, err := s.verify(ctx, password, encoded)
	if err != nil && !errors.Is(err, ErrBadHash) {
		fail()
		return nil, Hash{}, err
	}
	if err != nil {
		s.log.Error("stored password hash is malformed", "user", name, "err", err)
	}
	if rec == nil || rec.Disabled || rec.External != "" || !ok {
		return nil, Hash{}, &wrongPassword{rec: rec, locked: fail()}
	}
	if err := s.throttle.succeed(ctx, name, source, now); err != nil {
		s.log.Error("login throttle: counting a success failed", "user", name, "source", source, "err", err)
	}
	return rec, h, nil
}

// startSession stores user name's record cur with its last login at now,
// and a new session of it under key (the SHA-256 of the session ID), in
// tx: a password login and a single sign-on end the same way.
func startSession(tx kv.Tx, key [32]byte, name string, cur *userRecord, source string, now time.Time) error {
	cur.LastLogin = now
	if err := put(tx.Bucket(bucketUsers), []byte(name), cur); err != nil {
		return err
	}
	sessions := tx.Bucket(bucketSessions)
	if sessions.Get(key[:]) != nil {
		return errors.New("auth: session ID collision (broken entropy source?)")
	}
	return put(sessions, key[:], &sessionRecord{User: name, Generation: cur.Generation, Created: now, LastSeen: now, Source: source})
}
