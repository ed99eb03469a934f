package auth

import (
	"context"
	"crypto/rand"
	"embed"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/internal/loglimit"
	"github.com/sigil-iot/sigil/fleet/internal/record"
	"github.com/sigil-iot/sigil/fleet/storage/boltdb"
	"github.com/sigil-iot/sigil/fleet/storage/kv"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
)

// File is the operators' bbolt file (users, sessions, API tokens) in
// the fleet's data directory.
const File = "operators.db"

// Errors. Compare with errors.Is. The ones a client may see are named in
// the doc of Require and the handlers.
var (
	// ErrNoCredentials: the request carries neither a bearer token nor a
	// session cookie.
	ErrNoCredentials = errors.New("auth: no credentials")
	// ErrInvalidCredentials: the user name or password is wrong, or the
	// user is disabled. One error for all three, so that answers do not
	// reveal which names exist.
	ErrInvalidCredentials = errors.New("auth: invalid user name or password")
	// ErrThrottled: too many failed logins; a *ThrottleError says how long
	// to wait.
	ErrThrottled = errors.New("auth: too many failed logins")
	// ErrSessionInvalid: the session cookie names no live session (unknown,
	// logged out, or ended by a password change or a disabled user).
	ErrSessionInvalid = errors.New("auth: session invalid")
	// ErrSessionExpired: the session was idle too long or reached its
	// absolute lifetime.
	ErrSessionExpired = errors.New("auth: session expired")
	// ErrTokenInvalid: the bearer token is malformed, unknown, revoked, or
	// its owner is disabled or gone.
	ErrTokenInvalid = errors.New("auth: API token invalid")
	// ErrTokenExpired: the bearer token is past its expiry.
	ErrTokenExpired = errors.New("auth: API token expired")
	// ErrCSRF: a state-changing request with a session cookie lacks the
	// right CSRF token, or came from another site.
	ErrCSRF = errors.New("auth: cross-site request refused")
	// ErrForbidden: the principal lacks a permission.
	ErrForbidden = errors.New("auth: permission denied")
	// ErrNotFound: no such user or token.
	ErrNotFound = errors.New("auth: not found")
	// ErrExists: a user with that name exists.
	ErrExists = errors.New("auth: already exists")
	// ErrInvalid: a malformed name, role, password, lifetime or similar.
	ErrInvalid = errors.New("auth: invalid")
	// ErrLastAdmin: the change would leave no enabled admin.
	ErrLastAdmin = errors.New("auth: the last enabled admin cannot be removed, disabled or demoted")
	// ErrPasswordLoginOff: password logins are turned off
	// (Config.NoPasswordLogin); operators log in through single sign-on.
	ErrPasswordLoginOff = errors.New("auth: password login is turned off")
	// ErrNotExternal: a single sign-on login names a local account, or one
	// managed by another identity provider.
	ErrNotExternal = errors.New("auth: the account is not managed by this identity provider")
	// ErrExternalAccount: the account signs in through single sign-on
	// (User.External) and has no password of Sigil's to change or set.
	ErrExternalAccount = errors.New("auth: the account signs in through single sign-on; its password is the identity provider's")
	// ErrLocked: the database file is held by another process.
	ErrLocked = errors.New("auth: database locked by another process")
)

// ThrottleError is ErrThrottled with the wait before the next attempt.
type ThrottleError struct {
	RetryAfter time.Duration
}

func (e *ThrottleError) Error() string {
	return fmt.Sprintf("%v: retry in %s", ErrThrottled, e.RetryAfter.Round(time.Second))
}

// Unwrap returns ErrThrottled.
func (e *ThrottleError) Unwrap() error { return ErrThrottled }

// Config configures Open.
type Config struct {
	// Path is the bbolt file for users, sessions and API tokens (created
	// with mode 0600). Required.
	Path string
	// Params are the argon2id parameters for new password hashes; a stored
	// hash made with others is replaced at the user's next login. Zero
	// means DefaultParams().
	Params Params
	// MaxConcurrentHashes bounds the password hashes computed at once
	// (each takes Params.Memory); further logins wait. Zero means 4.
	MaxConcurrentHashes int
	// IdleTimeout ends a session not used for this long. Zero means 30
	// minutes.
	IdleTimeout time.Duration
	// MaxSessionAge ends a session this long after login, used or not.
	// Zero means 12 hours.
	MaxSessionAge time.Duration
	// CookieName names the session cookie. Empty means "__Host-sigil-session"
	// (the __Host- prefix makes browsers insist on Secure, Path=/ and no
	// Domain).
	CookieName string
	// Origins are the origins the console is served from, e.g.
	// "https://fleet.example.com:8443". A state-changing request with a
	// session whose Origin header is none of them is refused. Empty means
	// "https://" + the request's Host.
	Origins []string
	// Throttle configures login throttling and lockout; zero fields take
	// the defaults its doc states.
	Throttle Throttle
	// Audit records logins, failed logins and lockouts (user names and
	// source addresses, never passwords; the name tried is left out when
	// no such user exists, as it may be a mistyped password). Nil records
	// nothing.
	Audit audit.Recorder
	// Anonymous records the failed logins of user names that do not exist:
	// anyone can cause them, so it should bound what they add (an
	// audit.Sampler). Nil means Audit.
	Anonymous audit.Recorder
	// NoPasswordLogin refuses every password login (ErrPasswordLoginOff)
	// when operators log in through single sign-on; API tokens keep
	// working. False (the default) keeps local accounts usable: the
	// break-glass way in when the identity provider is down.
	NoPasswordLogin bool
	// SSOLoginPath is where the console's login page links for single
	// sign-on (fleet/sso); empty shows no such link.
	SSOLoginPath string
	// MaxTokenTTL is the longest lifetime of an API token. Zero means 365
	// days.
	MaxTokenTTL time.Duration
	// PruneInterval is how often Run deletes expired sessions. Zero means 10
	// minutes.
	PruneInterval time.Duration
	// Now is the clock for expiries, throttling and timestamps. Nil means
	// time.Now.
	Now func() time.Time
	// Rand supplies salts, session IDs, CSRF tokens, API tokens and
	// generated passwords. Nil means crypto/rand.
	Rand io.Reader
	// Logger receives logins, lockouts and changes (user names and IDs,
	// never passwords, session IDs or token secrets). Nil discards them.
	Logger *slog.Logger
	// LockTimeout bounds the wait for the file lock; a file held by another
	// process then fails with ErrLocked. Zero means 1 second.
	LockTimeout time.Duration
	// NoSync skips fsync on commit: faster, and a power loss may lose recent
	// commits. For tests.
	NoSync bool
}

// Service keeps users, sessions and API tokens and authenticates requests.
// Its methods are safe for concurrent use.
type Service struct {
	cfg      Config
	db       kv.DB
	log      *slog.Logger
	throttle throttler
	hashSem  chan struct{}
	// anonLog rate-limits the lines failed logins of unknown names write:
	// anyone can cause them.
	anonLog *loglimit.Limiter

	bootstrapMu sync.Mutex // serializes EnsureAdmin

	dummyOnce sync.Once
	dummy     string // a hash to verify against for unknown users
	dummyErr  error
}

// User is a user without their password hash.
type User struct {
	Name            string    `json:"name"`
	Role            Role      `json:"role"`
	Disabled        bool      `json:"disabled,omitempty"`
	Created         time.Time `json:"created"`
	PasswordChanged time.Time `json:"password_changed"`
	LastLogin       time.Time `json:"last_login,omitzero"`
	// External is the issuer of the identity provider that manages the
	// account (single sign-on, fleet/sso); empty for a local account. An
	// external account has no password: it logs in only through its
	// provider, which also sets its role (LoginExternal, SyncExternal).
	External string `json:"external,omitempty"`
	// Changed is when the account last gained authority or changed hands:
	// its creation, a change of role, being enabled again, or a password
	// set by an administrator (not one the user changed themselves). Zero
	// in records written before it existed (Since then uses Created).
	Changed time.Time `json:"changed,omitzero"`
}

// Since returns when the account last gained authority or changed hands
// (Changed, or Created for older records). The two-person rule refuses an
// approval by an account changed after the request was filed: a person
// cannot create or take over a second account to approve their own
// request.
func (u User) Since() time.Time {
	if u.Changed.IsZero() {
		return u.Created
	}
	return u.Changed
}

// userRecord is a stored user.
type userRecord struct {
	User
	Hash string `json:"hash"` // argon2id PHC string
	// Generation changes when the password changes; sessions made under
	// another generation are void.
	Generation uint64 `json:"generation"`
	// ExternalState is what single sign-on keeps of an external account
	// (SetExternalState), opaque here: sealed by its owner, never in User.
	ExternalState []byte `json:"external_state,omitempty"`
}

const (
	schemaVersion = 1
	recordVersion = 1
	maxNameLen    = 64
)

// Buckets are the buckets holding the store's records, in its bbolt file
// and in PostgreSQL: what sigil migrate copies (the bbolt file's "meta"
// has its schema version; PostgreSQL's "throttle" the shared login
// counters).
var Buckets = [][]byte{bucketUsers, bucketSessions, bucketTokens, bucketTokHash}

var (
	bucketMeta     = []byte("meta")
	bucketUsers    = []byte("users")     // name -> userRecord
	bucketSessions = []byte("sessions")  // SHA-256 of session ID -> sessionRecord
	bucketTokens   = []byte("tokens")    // token ID -> Token
	bucketTokHash  = []byte("tokenhash") // SHA-256 of secret -> token ID
	// bucketThrottle holds the login throttle's counters in PostgreSQL
	// (shared by replicas); with bbolt they stay in memory and the
	// bucket stays empty.
	bucketThrottle = []byte("throttle")
)

// Open opens or creates the database at cfg.Path.
func Open(cfg Config) (*Service, error) {
	if cfg.Path == "" {
		return nil, fmt.Errorf("%w: Config.Path is required", ErrInvalid)
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	db, err := boltdb.Open(cfg.Path, boltdb.Schema{
		Buckets: append([][]byte{bucketMeta}, Buckets...),
		Version: schemaVersion,
	}, boltdb.Options{Name: "auth", Timeout: cfg.LockTimeout, NoSync: cfg.NoSync, Locked: ErrLocked})
	if err != nil {
		return nil, err
	}
	return newService(cfg, kv.Bolt(db), memThrottle{newThrottle(cfg.Throttle)}), nil
}

// migrations are the tables of users, sessions, API tokens and login
// throttling in PostgreSQL (component "auth" in schema_migrations).
//
//go:embed migrations/*.sql
var migrations embed.FS

// Table is the PostgreSQL table holding the buckets (kv.Postgres).
const Table = "auth_kv"

// OpenPostgres opens users, sessions and API tokens in the PostgreSQL
// database db, bringing its tables up to date first (cfg.Path, LockTimeout
// and NoSync are unused). Replicas sharing db share them, and the login
// throttle's counters too. Close leaves db open.
func OpenPostgres(ctx context.Context, db *postgres.DB, cfg Config) (*Service, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	k, err := kv.PostgresMigrated(ctx, db, "auth", migrations, Table)
	if err != nil {
		return nil, err
	}
	return newService(cfg, k, &sharedThrottle{cfg: cfg.Throttle, db: k}), nil
}

// withDefaults checks cfg and fills in its defaults.
func (cfg Config) withDefaults() (Config, error) {
	if cfg.Params == (Params{}) {
		cfg.Params = DefaultParams()
	}
	if err := cfg.Params.validate(); err != nil {
		return cfg, fmt.Errorf("%w: argon2id parameters: %w", ErrInvalid, err)
	}
	if cfg.MaxConcurrentHashes <= 0 {
		cfg.MaxConcurrentHashes = 4
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 30 * time.Minute
	}
	if cfg.MaxSessionAge <= 0 {
		cfg.MaxSessionAge = 12 * time.Hour
	}
	if cfg.CookieName == "" {
		cfg.CookieName = "__Host-sigil-session"
	}
	if cfg.MaxTokenTTL <= 0 {
		cfg.MaxTokenTTL = 365 * 24 * time.Hour
	}
	if cfg.PruneInterval <= 0 {
		cfg.PruneInterval = 10 * time.Minute
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Audit == nil {
		cfg.Audit = audit.Discard{}
	}
	if cfg.Anonymous == nil {
		cfg.Anonymous = cfg.Audit
	}
	if cfg.LockTimeout <= 0 {
		cfg.LockTimeout = time.Second
	}
	cfg.Throttle = cfg.Throttle.withDefaults()
	cfg.Origins = slices.Clone(cfg.Origins)
	return cfg, nil
}

func newService(cfg Config, db kv.DB, t throttler) *Service {
	return &Service{
		cfg:      cfg,
		db:       db,
		log:      cfg.Logger,
		throttle: t,
		hashSem:  make(chan struct{}, cfg.MaxConcurrentHashes),
		anonLog:  loglimit.New(cfg.Logger, loglimit.Config{Now: cfg.Now}),
	}
}

// Close closes the database.
func (s *Service) Close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("auth: close: %w", err)
	}
	return nil
}

func encode[T any](v *T) ([]byte, error) {
	b, err := record.Encode(recordVersion, v)
	if err != nil {
		return nil, fmt.Errorf("auth: encode: %w", err)
	}
	return b, nil
}

func decode[T any](b []byte) (*T, error) {
	v, err := record.Decode[T](recordVersion, b)
	if err != nil {
		return nil, fmt.Errorf("auth: decode: %w", err)
	}
	return v, nil
}

func put[T any](b kv.Bucket, key []byte, v *T) error {
	data, err := encode(v)
	if err != nil {
		return err
	}
	return b.Put(key, data)
}

// normalizeName lower-cases a user name; validName checks the result.
func normalizeName(name string) string { return strings.ToLower(name) }

// validName reports whether name is 1 to 64 characters of a-z, 0-9, and
// . _ @ - not starting with punctuation.
func validName(name string) bool {
	if name == "" || len(name) > maxNameLen {
		return false
	}
	for i, c := range []byte(name) {
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case i > 0 && (c == '.' || c == '_' || c == '@' || c == '-'):
		default:
			return false
		}
	}
	return true
}

func validPassword(pw string) error {
	switch {
	case len([]rune(pw)) < MinPasswordLen:
		return fmt.Errorf("%w: password shorter than %d characters", ErrInvalid, MinPasswordLen)
	case len(pw) > maxPassword:
		return fmt.Errorf("%w: password longer than %d bytes", ErrInvalid, maxPassword)
	}
	return nil
}

// hash hashes a password under the configured parameters, waiting for a
// hashing slot.
func (s *Service) hash(ctx context.Context, password string) (string, error) {
	if err := s.acquire(ctx); err != nil {
		return "", err
	}
	defer s.release()
	return HashPassword(password, s.cfg.Params, s.cfg.Rand)
}

// verify checks a password against a stored hash, waiting for a hashing
// slot.
func (s *Service) verify(ctx context.Context, password, encoded string) (bool, Hash, error) {
	if err := s.acquire(ctx); err != nil {
		return false, Hash{}, err
	}
	defer s.release()
	return VerifyPassword(password, encoded)
}

func (s *Service) acquire(ctx context.Context) error {
	select {
	case s.hashSem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("auth: waiting to hash a password: %w", ctx.Err())
	}
}

func (s *Service) release() { <-s.hashSem }

// dummyHash returns a hash of a random password under the configured
// parameters: unknown users are verified against it so that they cost the
// same time as known ones.
func (s *Service) dummyHash(ctx context.Context) (string, error) {
	s.dummyOnce.Do(func() {
		pw := make([]byte, 16)
		if _, err := io.ReadFull(s.cfg.Rand, pw); err != nil {
			s.dummyErr = fmt.Errorf("auth: entropy: %w", err)
			return
		}
		s.dummy, s.dummyErr = s.hash(ctx, string(pw))
	})
	return s.dummy, s.dummyErr
}

// CreateUser adds a user with a password (at least MinPasswordLen
// characters) and a role. Names are lower-cased; ErrExists if taken. It
// checks no one's authority: CreateUserAs does, for requests.
func (s *Service) CreateUser(ctx context.Context, name, password string, role Role) (User, error) {
	return s.createUser(ctx, NewUser{Name: name, Password: password, Role: role}, nil)
}

// createUser adds u; with by set, only if by may hand out its role
// (checkManage, in the transaction that adds it).
func (s *Service) createUser(ctx context.Context, u NewUser, by *Principal) (User, error) {
	name, password, role := normalizeName(u.Name), u.Password, u.Role
	if !validName(name) {
		return User{}, fmt.Errorf("%w: user name %q (1-64 of a-z 0-9 . _ @ -)", ErrInvalid, name)
	}
	if !role.Valid() {
		return User{}, fmt.Errorf("%w: role %q", ErrInvalid, role)
	}
	if err := validPassword(password); err != nil {
		return User{}, err
	}
	h, err := s.hash(ctx, password)
	if err != nil {
		return User{}, err
	}
	now := s.cfg.Now()
	rec := &userRecord{User: User{Name: name, Role: role, Disabled: u.Disabled, Created: now, PasswordChanged: now, Changed: now}, Hash: h, Generation: 1}
	err = s.db.Update(ctx, func(tx kv.Tx) error {
		if by != nil {
			if err := by.checkManage(role); err != nil {
				return err
			}
		}
		b := tx.Bucket(bucketUsers)
		if b.Get([]byte(name)) != nil {
			return fmt.Errorf("%w: user %q", ErrExists, name)
		}
		return put(b, []byte(name), rec)
	})
	if err != nil {
		return User{}, err
	}
	s.log.Info("user created", "user", name, "role", role, "disabled", u.Disabled)
	return rec.User, nil
}

// User returns a user by name.
func (s *Service) User(ctx context.Context, name string) (User, error) {
	var u User
	err := s.db.View(ctx, func(tx kv.Tx) error {
		rec, err := getUser(tx, normalizeName(name))
		if err != nil {
			return err
		}
		u = rec.User
		return nil
	})
	return u, err
}

// Users returns every user in name order.
func (s *Service) Users(ctx context.Context) ([]User, error) {
	var out []User
	err := s.db.View(ctx, func(tx kv.Tx) error {
		out = nil // a transaction may run again
		return tx.Bucket(bucketUsers).ForEach(func(k, v []byte) error {
			rec, err := decode[userRecord](v)
			if err != nil {
				return fmt.Errorf("%w (user %q)", err, k)
			}
			out = append(out, rec.User)
			return nil
		})
	})
	return out, err
}

func getUser(tx kv.Tx, name string) (*userRecord, error) {
	v := tx.Bucket(bucketUsers).Get([]byte(name))
	if v == nil {
		return nil, fmt.Errorf("%w: user %q", ErrNotFound, name)
	}
	return decode[userRecord](v)
}

// updateUser applies fn to a user in one transaction, refusing a change
// that leaves no enabled admin.
func (s *Service) updateUser(ctx context.Context, name string, fn func(kv.Tx, *userRecord) error) (User, error) {
	name = normalizeName(name)
	var out User
	err := s.db.Update(ctx, func(tx kv.Tx) error {
		rec, err := getUser(tx, name)
		if err != nil {
			return err
		}
		wasAdmin := rec.Role == RoleAdmin && !rec.Disabled
		if err := fn(tx, rec); err != nil {
			return err
		}
		if wasAdmin && (rec.Role != RoleAdmin || rec.Disabled) {
			if err := requireOtherAdmin(tx, name); err != nil {
				return err
			}
		}
		out = rec.User
		return put(tx.Bucket(bucketUsers), []byte(name), rec)
	})
	return out, err
}

// requireOtherAdmin fails with ErrLastAdmin unless an enabled admin other
// than name exists.
func requireOtherAdmin(tx kv.Tx, name string) error {
	c := tx.Bucket(bucketUsers).Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if string(k) == name {
			continue
		}
		rec, err := decode[userRecord](v)
		if err != nil {
			return fmt.Errorf("%w (user %q)", err, k)
		}
		if rec.Role == RoleAdmin && !rec.Disabled {
			return nil
		}
	}
	return ErrLastAdmin
}

// SetPassword replaces a user's password (an administrator's reset, which
// counts as a change of hands: User.Changed). The user's sessions end (in
// the same transaction); their API tokens stay. ChangeOwnPassword is a
// person changing their own.
func (s *Service) SetPassword(ctx context.Context, name, password string) error {
	if err := validPassword(password); err != nil {
		return err
	}
	h, err := s.hash(ctx, password)
	if err != nil {
		return err
	}
	_, err = s.updateUser(ctx, name, func(tx kv.Tx, rec *userRecord) error {
		if rec.External != "" {
			return ErrExternalAccount
		}
		rec.Hash = h
		rec.Generation++
		rec.PasswordChanged = s.cfg.Now()
		rec.Changed = rec.PasswordChanged
		return deleteSessionsOf(tx, rec.Name)
	})
	if err == nil {
		s.log.Info("password set", "user", normalizeName(name))
	}
	return err
}

// SetRole changes a user's role; it takes effect on their next request.
func (s *Service) SetRole(ctx context.Context, name string, role Role) (User, error) {
	if !role.Valid() {
		return User{}, fmt.Errorf("%w: role %q", ErrInvalid, role)
	}
	u, err := s.updateUser(ctx, name, func(_ kv.Tx, rec *userRecord) error {
		s.setRole(rec, role)
		return nil
	})
	if err == nil {
		s.log.Info("role set", "user", u.Name, "role", role)
	}
	return u, err
}

func (s *Service) setRole(rec *userRecord, role Role) {
	if rec.Role != role {
		rec.Role, rec.Changed = role, s.cfg.Now()
	}
}

// setDisabled disables or enables rec in tx; enabling it again is a
// change (User.Changed).
func (s *Service) setDisabled(tx kv.Tx, rec *userRecord, disabled bool) error {
	if rec.Disabled && !disabled {
		rec.Changed = s.cfg.Now()
	}
	rec.Disabled = disabled
	if disabled {
		return deleteSessionsOf(tx, rec.Name)
	}
	return nil
}

// SetDisabled disables or enables a user. A disabled user cannot log in,
// their sessions end, and their API tokens stop working until they are
// enabled again.
func (s *Service) SetDisabled(ctx context.Context, name string, disabled bool) (User, error) {
	u, err := s.updateUser(ctx, name, func(tx kv.Tx, rec *userRecord) error {
		return s.setDisabled(tx, rec, disabled)
	})
	if err == nil {
		s.log.Info("user disabled", "user", u.Name, "disabled", disabled)
	}
	return u, err
}

// DeleteUser removes a user, their sessions and their API tokens.
func (s *Service) DeleteUser(ctx context.Context, name string) error {
	return s.deleteUser(ctx, name, nil)
}

// deleteUser removes a user; with by set, only if by may manage them.
func (s *Service) deleteUser(ctx context.Context, name string, by *Principal) error {
	name = normalizeName(name)
	err := s.db.Update(ctx, func(tx kv.Tx) error {
		rec, err := getUser(tx, name)
		if err != nil {
			return err
		}
		if by != nil {
			if err := by.checkManage(rec.Role); err != nil {
				return err
			}
		}
		if rec.Role == RoleAdmin && !rec.Disabled {
			if err := requireOtherAdmin(tx, name); err != nil {
				return err
			}
		}
		if err := deleteTokensOf(tx, name); err != nil {
			return err
		}
		if err := deleteSessionsOf(tx, name); err != nil {
			return err
		}
		return tx.Bucket(bucketUsers).Delete([]byte(name))
	})
	if err == nil {
		s.log.Info("user deleted", "user", name)
	}
	return err
}

func (s *Service) getUserRecord(ctx context.Context, name string) (*userRecord, error) {
	var rec *userRecord
	err := s.db.View(ctx, func(tx kv.Tx) error {
		var err error
		rec, err = getUser(tx, name)
		return err
	})
	return rec, err
}
