// Package inventory keeps the fleet's devices, enrollment tokens and
// per-device lifecycle events, in a bbolt file (Open, the default) or in
// PostgreSQL (OpenPostgres).
//
// Every method runs in one transaction, so a crash leaves either the
// whole change or none of it; PostgreSQL's transactions are serializable,
// as bbolt's single writer is. Records are JSON with a version number,
// the same in both backends. Both pass one conformance suite,
// inventorytest.Run.
//
// A device's state follows one lifecycle (State), enforced on every write;
// its certificates are kept until they expire (Device.Certs), so that the
// broker admits only a serial issued to the device and still current, and
// quarantine and decommissioning revoke every one (Store.Quarantine,
// Store.Decommission) in the transaction that changes the state. Every
// other revocation of a device revokes every one too (Store.RevokeDevice);
// only a renewal revokes some: the serials it superseded
// (Store.RevokeSuperseded).
//
// Pending approvals are devices in StatePending: list them with
// ListDevices(Filter{State: StatePending}).
package inventory

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/sigil-iot/sigil/fleet/internal/record"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// Trust paths: how a device's EK came to be trusted.
const (
	TrustEKCA      = "ek-ca"     // EK certificate chains to a manufacturer CA
	TrustAllowlist = "allowlist" // EK fingerprint on an allow-list
	TrustToken     = "token"     // enrollment token
	TrustApproval  = "approval"  // operator approval
)

// Device is an inventory record.
type Device struct {
	ID            string    `json:"id"`
	EKFingerprint string    `json:"ek_fingerprint,omitempty"` // identity.Fingerprint, 64 lowercase hex
	Model         string    `json:"model,omitempty"`          // assigned by the fleet (token, operator), never claimed
	Firmware      string    `json:"firmware,omitempty"`
	Owner         string    `json:"owner,omitempty"`
	Purpose       string    `json:"purpose,omitempty"` // why the device exists (governance assignment)
	Serial        string    `json:"serial,omitempty"`
	State         State     `json:"state"`
	TrustPath     string    `json:"trust_path,omitempty"`
	CertSerial    string    `json:"cert_serial,omitempty"` // hex
	CertExpiry    time.Time `json:"cert_expiry,omitzero"`
	CertIssued    time.Time `json:"cert_issued,omitzero"` // NotBefore of the current certificate
	FirstSeen     time.Time `json:"first_seen,omitzero"`
	LastSeen      time.Time `json:"last_seen,omitzero"`
	EnrolledAt    time.Time `json:"enrolled_at,omitzero"`
	Connected     bool      `json:"connected,omitempty"`
	Flags         []string  `json:"flags,omitempty"` // e.g. "clone-suspect"
	AKName        []byte    `json:"ak_name,omitempty"`
	EKPublic      []byte    `json:"ek_public,omitempty"` // TPMT_PUBLIC
	AKPublic      []byte    `json:"ak_public,omitempty"` // TPMT_PUBLIC
	Group         string    `json:"group,omitempty"`     // policy and secret group; assigned like Model
	// Tags are operator labels (e.g. "site:plant-7", "canary"); at most
	// MaxTags of ValidTag. Campaigns can target a set of them.
	Tags []string `json:"tags,omitempty"`
	// Certs lists every certificate the fleet issued to the device that
	// has not expired (and the current one always), oldest first, each
	// with whether it is revoked. The broker admits only these, unrevoked
	// (Admits); quarantine, decommissioning and revocation revoke every
	// one. An entry leaves only once its certificate expired. Records
	// written before Certs existed have none: Certificates derives them.
	Certs []Cert `json:"certs,omitempty"`
	// CertDER is the current certificate (CertSerial), DER, kept for
	// export (IssuedCertificate); empty for a certificate issued before
	// the fleet kept them, until the device renews.
	CertDER []byte `json:"cert_der,omitempty"`
	// Revoked lists revoked serials (hex) that Certs does not hold: those
	// of records written before Certs existed, or a serial never issued
	// to the device (Device.RevokeSerial). Never trimmed.
	Revoked []string `json:"revoked,omitempty"`
	// Superseded is read from records written before Certs existed
	// (serials a renewal replaced and not yet revoked); Certificates takes
	// them over and nothing writes it any more.
	Superseded []string `json:"superseded,omitempty"`
	// Quarantine lists why the device is quarantined, one entry per cause,
	// while it is (Store.Quarantine); empty otherwise.
	Quarantine []Cause `json:"quarantine,omitempty"`
	// Attestation is the last verdict: "pass", "fail" or "" (never).
	Attestation  string    `json:"attestation,omitempty"`
	LastAttested time.Time `json:"last_attested,omitzero"`
	// ClaimedModel is the model the device said it is when it last
	// enrolled: shown to operators, never used to target anything.
	ClaimedModel string `json:"claimed_model,omitempty"`
	// Protocol is the wire protocol version the device last spoke (its
	// enrollment proof, then each hello); the fleet speaks it to the
	// device (Store.Protocol). Claimed, never trusted: it decides only
	// what the fleet can say to the device, no check. 0 in a record
	// written before the fleet kept it.
	Protocol int `json:"protocol,omitempty"`
}

// HasFlag reports whether the device carries flag f.
func (d *Device) HasFlag(f string) bool {
	for _, x := range d.Flags {
		if x == f {
			return true
		}
	}
	return false
}

// Grant is what an enrollment token assigns to the device that enrolls
// with it: its model and group, which secrets and policies target ("" for
// none). Minting a token that grants either is a secret-level action.
type Grant struct {
	Model string `json:"model,omitempty"`
	Group string `json:"group,omitempty"`
}

// Token is an enrollment token. Its secret is shown once, at creation, and
// only its SHA-256 is kept. Model and Group are what it grants (Grant); a
// device that claims another model than Model is refused.
type Token struct {
	ID      string    `json:"id"`   // public handle
	Hash    []byte    `json:"hash"` // SHA-256 of the secret
	Model   string    `json:"model,omitempty"`
	Owner   string    `json:"owner,omitempty"`
	Expires time.Time `json:"expires"`
	Created time.Time `json:"created"`
	UsedBy  string    `json:"used_by,omitempty"`
	UsedAt  time.Time `json:"used_at,omitzero"`
	Group   string    `json:"group,omitempty"`
	// Pending: created under the two-person rule (CreatePendingToken), the
	// token is refused (ErrTokenPending) until a second person approved
	// it (ActivateToken).
	Pending bool `json:"pending,omitempty"`
}

// Event is a lifecycle event of a device (enrolled, refused-clone,
// approved, connected, ...). Only the newest events of each device are kept.
type Event struct {
	Time     time.Time `json:"time"`
	DeviceID string    `json:"device_id"`
	Kind     string    `json:"kind"`
	Detail   string    `json:"detail,omitempty"`
	// Anonymous marks an event recorded on the word of a client that did
	// not prove who it is (a failed enrollment with the device's public
	// EK). Anonymous events are kept apart, at most MaxAnonymousEvents per
	// device, so that they never push the device's other events out.
	Anonymous bool `json:"anonymous,omitempty"`
}

// MaxAnonymousEvents bounds the anonymous events kept per device.
const MaxAnonymousEvents = 16

// Filter selects devices for ListDevices.
type Filter struct {
	State State  // "" for any
	Model string // "" for any
	After string // cursor: list IDs after this one ("" from the start)
	Limit int    // page size; default 100, at most 1000
}

// Errors. Compare with errors.Is.
var (
	ErrNotFound     = errors.New("inventory: not found")
	ErrEKConflict   = errors.New("inventory: EK fingerprint conflict")
	ErrInvalid      = errors.New("inventory: invalid record")
	ErrTokenInvalid = errors.New("inventory: enrollment token invalid")
	ErrTokenExpired = errors.New("inventory: enrollment token expired")
	ErrTokenUsed    = errors.New("inventory: enrollment token already used")
	ErrTokenBinding = errors.New("inventory: enrollment token bound to another model")
	// ErrTokenPending: the token was created pending and no second person
	// approved it yet (Token.Pending).
	ErrTokenPending = errors.New("inventory: enrollment token awaits approval")
	ErrLocked       = errors.New("inventory: database locked by another process")
	// ErrNotQuarantined is returned by Release and AutoRelease for a
	// device that is not quarantined.
	ErrNotQuarantined = errors.New("inventory: device is not quarantined")
	// ErrOtherCause is returned by AutoRelease when the device is also
	// quarantined for a cause other than the releasing policy's verdict.
	ErrOtherCause = errors.New("inventory: quarantined for another cause")
)

// TokenPrefix starts every token secret.
const TokenPrefix = "sgt_"

const (
	recordVersion    = 1
	defaultPageSize  = 100
	maxPageSize      = 1000
	defaultMaxEvents = 100
)

// Option configures Open and OpenPostgres.
type Option func(*options)

type options struct {
	timeout   time.Duration
	now       func() time.Time
	rand      io.Reader
	maxEvents int
	noSync    bool
	onEvent   func(Event)
	onRevoke  func()
	bus       Bus
}

// WithEventHook calls fn with every lifecycle event once AddEvent stored
// it (the fleet copies them to its audit log). fn runs on the caller's
// goroutine and must not call back into the store.
func WithEventHook(fn func(Event)) Option { return func(o *options) { o.onEvent = fn } }

// WithRevocationHook calls fn on this process once a transaction that
// recorded a revocation (a certificate for the CRL) committed, whatever
// the change was (a revocation, a quarantine, a renewal, a
// re-enrollment): the fleet's CRL publisher signs again and wakes the
// brokers' syncs waiting for it. fn must not block or call back into the
// store. With PostgreSQL the transaction also sends TopicRevocations
// (fleet/storage/notify), which tells every replica listening.
func WithRevocationHook(fn func()) Option { return func(o *options) { o.onRevoke = fn } }

// TopicRevocations is the notification (fleet/storage/notify) a
// PostgreSQL transaction that recorded a revocation sends on commit.
const TopicRevocations = "revocations"

// WithTimeout bounds the wait for the file lock (default 1s); a file held
// by another process then fails with ErrLocked. bbolt only.
func WithTimeout(d time.Duration) Option { return func(o *options) { o.timeout = d } }

// WithClock sets the clock for token creation and event times (default time.Now).
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// WithRand sets the entropy for token secrets and IDs (default crypto/rand).
func WithRand(r io.Reader) Option { return func(o *options) { o.rand = r } }

// WithMaxEvents sets how many events are kept per device (default 100).
func WithMaxEvents(n int) Option { return func(o *options) { o.maxEvents = n } }

// WithNoSync skips fsync on commit: faster, and a power loss may lose
// recent commits (never consistency). For tests and benchmarks; bbolt
// only.
func WithNoSync() Option { return func(o *options) { o.noSync = true } }

// Store is the inventory. Its methods are safe for concurrent use and
// take a context: a call whose context ends first fails with its error
// (PostgreSQL stops waiting; bbolt checks it before it starts).
//
// The rules live here (validation, the lifecycle, the CRL bookkeeping,
// token checks), the storage in an engine (bbolt: Open; PostgreSQL:
// OpenPostgres), so that both backends enforce the same rules in one
// transaction each.
type Store struct {
	e      engine
	opts   options
	protos *protocols // nil: Protocol reads the record every time
}

func newStore(opts []Option) options {
	o := options{timeout: time.Second, now: time.Now, rand: rand.Reader, maxEvents: defaultMaxEvents}
	for _, f := range opts {
		f(&o)
	}
	if o.maxEvents <= 0 {
		o.maxEvents = defaultMaxEvents
	}
	return o
}

// Close closes the file or the database connections the store holds.
func (s *Store) Close() error {
	if err := s.e.close(); err != nil {
		return fmt.Errorf("inventory: close: %w", err)
	}
	return nil
}

func encode[T any](v *T) ([]byte, error) {
	b, err := record.Encode(recordVersion, v)
	if err != nil {
		return nil, fmt.Errorf("inventory: encode: %w", err)
	}
	return b, nil
}

func decode[T any](b []byte) (*T, error) {
	v, err := record.Decode[T](recordVersion, b)
	if err != nil {
		return nil, fmt.Errorf("inventory: decode: %w", err)
	}
	return v, nil
}

// Device returns a device by ID.
func (s *Store) Device(ctx context.Context, id string) (*Device, error) {
	var d *Device
	err := s.e.view(ctx, func(tx tx) error {
		var err error
		d, err = tx.device(id)
		return err
	})
	return d, err
}

// State returns a device's lifecycle state, decoding nothing else of its
// record: for the checks on every message a device sends.
func (s *Store) State(ctx context.Context, id string) (State, error) {
	st, err := s.brief(ctx, id)
	return st.State, err
}

// brief reads the part of a device record State and Protocol decode.
func (s *Store) brief(ctx context.Context, id string) (stateOnly, error) {
	var st stateOnly
	err := s.e.view(ctx, func(tx tx) error {
		var err error
		st, err = tx.state(id)
		return err
	})
	return st, err
}

// stateOnly is the part of a device record State and Protocol decode.
type stateOnly struct {
	State    State `json:"state"`
	Protocol int   `json:"protocol,omitempty"`
}

// DeviceByEK returns the device with an EK fingerprint.
func (s *Store) DeviceByEK(ctx context.Context, fingerprint string) (*Device, error) {
	var d *Device
	err := s.e.view(ctx, func(tx tx) error {
		id, err := tx.ekHolder(fingerprint)
		if err != nil {
			return err
		}
		if id == "" {
			return fmt.Errorf("%w: EK %q", ErrNotFound, fingerprint)
		}
		d, err = tx.device(id)
		return err
	})
	return d, err
}

// ListDevices returns devices in ID order that match f, and the cursor for
// the next page ("" when there is none). State and model filters are
// served by the indexes (Query); the model is compared exactly.
func (s *Store) ListDevices(ctx context.Context, f Filter) ([]Device, string, error) {
	q := Query{Where: map[Field]string{FieldState: string(f.State), FieldModel: f.Model}, After: f.After, Limit: f.Limit, Budget: math.MaxInt}
	if f.Model != "" {
		q.Match = func(d *Device) bool { return d.Model == f.Model }
	}
	if f.State != "" {
		st := f.State
		prev := q.Match
		q.Match = func(d *Device) bool { return d.State == st && (prev == nil || prev(d)) }
	}
	p, err := s.Query(ctx, q)
	if err != nil {
		return nil, "", err
	}
	return p.Devices, p.Next, nil
}

// PutDevice inserts or replaces a device and maintains the EK index. A
// fingerprint held by another device, or a different fingerprint for an
// existing device, fails with ErrEKConflict. A new record may be in any
// state (an import or a restore); replacing one changes its state only as
// the lifecycle allows (*TransitionError otherwise).
func (s *Store) PutDevice(ctx context.Context, d *Device) error {
	if err := validDevice(d); err != nil {
		return err
	}
	return s.e.write(ctx, func(tx tx) error {
		old, err := tx.device(d.ID)
		if err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
		return putDevice(tx, old, d, s.opts.now())
	})
}

// Update reads a device, applies fn and writes the result, in one
// transaction. fn's error aborts and is returned as is. fn may not change
// the ID, nor an EK fingerprint already set, and may change the state only
// as the lifecycle allows (State.CanMove; *TransitionError otherwise).
//
// Concurrent writes share one transaction and fsync (bbolt's group
// commit), and PostgreSQL runs again a transaction that failed to
// serialize, so fn may run more than once: it must only change the device
// it is given.
func (s *Store) Update(ctx context.Context, id string, fn func(*Device) error) error {
	return s.e.write(ctx, func(tx tx) error { return s.update(tx, id, fn) })
}

// Change is one device's update for UpdateAll: Fn applied to device ID,
// as Update applies it.
type Change struct {
	ID string
	Fn func(*Device) error
}

// UpdateAll applies changes in order, each as Update would, and returns
// each change's error (nil for those written). bbolt writes them in one
// transaction and one fsync when none fails; a change that fails is left
// out without keeping the others from being written. Every Fn may
// therefore run more than once, and must only change the device it is
// given. For updates that a caller gathers on purpose, such as the
// verdicts of attestations judged within a few milliseconds of each
// other.
func (s *Store) UpdateAll(ctx context.Context, changes []Change) []error {
	fns := make([]func(tx) error, len(changes))
	for i, c := range changes {
		fns[i] = func(tx tx) error { return s.update(tx, c.ID, c.Fn) }
	}
	return s.e.writeAll(ctx, fns)
}

// update is Update's transaction.
func (s *Store) update(tx tx, id string, fn func(*Device) error) error {
	old, err := tx.device(id)
	if err != nil {
		return err
	}
	prev := old.snapshot() // putDevice compares with the stored record
	d := old
	if err := fn(d); err != nil {
		return err
	}
	if d.ID != id {
		return fmt.Errorf("%w: Update may not change the device ID", ErrInvalid)
	}
	if err := validDevice(d); err != nil {
		return err
	}
	return putDevice(tx, &prev, d, s.opts.now())
}

// putDevice writes d over old (nil for a new record). It is the one place
// every device write goes through, so it enforces what holds for all of
// them: the EK index, the lifecycle (a state changes only as CanMove
// allows), the CRL (every certificate d newly marks revoked is recorded
// in the revocation list in the same transaction) and the expiry of
// certificate bookkeeping (entries of certificates expired by now leave).
func putDevice(tx tx, old, d *Device, now time.Time) error {
	if old != nil && old.EKFingerprint != "" && old.EKFingerprint != d.EKFingerprint {
		return fmt.Errorf("%w: device %q already has another EK", ErrEKConflict, d.ID)
	}
	if old != nil && !old.State.CanMove(d.State) {
		return &TransitionError{DeviceID: d.ID, From: old.State, To: d.State}
	}
	if err := recordRevocations(tx, old, d, now); err != nil {
		return err
	}
	d.pruneCerts(now)
	if d.EKFingerprint != "" {
		holder, err := tx.ekHolder(d.EKFingerprint)
		if err != nil {
			return err
		}
		if holder != "" && holder != d.ID {
			return fmt.Errorf("%w: EK already belongs to device %q", ErrEKConflict, holder)
		}
	}
	if old == nil || old.Protocol != d.Protocol {
		if err := tx.protocolChanged(d.ID); err != nil {
			return err
		}
	}
	return tx.putDevice(old, d)
}

func validDevice(d *Device) error {
	var errs []error
	if d == nil {
		return fmt.Errorf("%w: nil device", ErrInvalid)
	}
	if !wire.ValidID(d.ID) {
		errs = append(errs, fmt.Errorf("device ID %q", d.ID))
	}
	if !d.State.Valid() {
		errs = append(errs, fmt.Errorf("state %q", d.State))
	}
	if fp := d.EKFingerprint; fp != "" {
		if _, err := hex.DecodeString(fp); err != nil || len(fp) != 64 || strings.ToLower(fp) != fp {
			errs = append(errs, fmt.Errorf("EK fingerprint %q is not 64 lowercase hex digits", fp))
		}
	}
	if len(d.Tags) > MaxTags {
		errs = append(errs, fmt.Errorf("%d tags, at most %d", len(d.Tags), MaxTags))
	}
	for _, t := range d.Tags {
		if !ValidTag(t) {
			errs = append(errs, fmt.Errorf("tag %q", t))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrInvalid, errors.Join(errs...))
	}
	return nil
}

// MaxTags bounds Device.Tags.
const MaxTags = 32

// ValidTag accepts 1 to 64 characters of a-z, 0-9 and "._:-=", starting
// with a letter or digit.
func ValidTag(t string) bool {
	if t == "" || len(t) > 64 {
		return false
	}
	for i, c := range []byte(t) {
		alnum := c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || !strings.ContainsRune("._:-=", rune(c))) {
			return false
		}
	}
	return true
}

// HasTags reports whether d carries every tag in want.
func (d *Device) HasTags(want []string) bool {
	for _, t := range want {
		if !slices.Contains(d.Tags, t) {
			return false
		}
	}
	return true
}

// CreateToken makes an enrollment token that grants g (its model also
// binds the token: a device claiming another is refused), valid for ttl.
// The secret ("sgt_" + 32 random bytes, base64url) is returned once and
// never stored.
func (s *Store) CreateToken(ctx context.Context, g Grant, owner string, ttl time.Duration) (string, *Token, error) {
	return s.createToken(ctx, g, owner, ttl, false)
}

// CreatePendingToken makes a token as CreateToken does that no device can
// use (ErrTokenPending, at enrollment and at the bootstrap CONNECT) until
// ActivateToken lets it: under the two-person rule, a token that grants a
// model or group waits for a second person's approval. Its secret is
// returned now, once, and never stored.
func (s *Store) CreatePendingToken(ctx context.Context, g Grant, owner string, ttl time.Duration) (string, *Token, error) {
	return s.createToken(ctx, g, owner, ttl, true)
}

// ActivateToken lets the pending token id be used, once a second person
// approved it, and returns it. It must grant exactly g, what was approved
// (ErrInvalid otherwise), be pending (ErrInvalid: not pending, activated
// or used already) and not have expired (ErrTokenExpired); an unknown ID
// is ErrNotFound.
func (s *Store) ActivateToken(ctx context.Context, id string, g Grant) (*Token, error) {
	var tok *Token
	now := s.opts.now()
	err := s.e.update(ctx, func(tx tx) error {
		var err error
		if tok, err = tx.token(id); err != nil {
			return err
		}
		if tok == nil {
			return fmt.Errorf("%w: token %q", ErrNotFound, id)
		}
		switch {
		case !tok.Pending || tok.UsedBy != "":
			return fmt.Errorf("%w: token %s is not awaiting approval", ErrInvalid, id)
		case tok.Model != g.Model || tok.Group != g.Group:
			return fmt.Errorf("%w: token %s grants model %q, group %q, not what was approved", ErrInvalid, id, tok.Model, tok.Group)
		case !now.Before(tok.Expires):
			return fmt.Errorf("%w: token %s expired %s", ErrTokenExpired, id, tok.Expires.UTC().Format(time.RFC3339))
		}
		tok.Pending = false
		return tx.putToken(tok)
	})
	if err != nil {
		return nil, err
	}
	return tok, nil
}

// DeleteToken removes the pending token id (one whose approval could not
// be filed); a token that is not pending is ErrInvalid (a used one is
// kept: its device may present it again when it re-enrolls), an unknown
// one ErrNotFound.
func (s *Store) DeleteToken(ctx context.Context, id string) error {
	return s.e.update(ctx, func(tx tx) error {
		tok, err := tx.token(id)
		if err != nil {
			return err
		}
		if tok == nil {
			return fmt.Errorf("%w: token %q", ErrNotFound, id)
		}
		if !tok.Pending {
			return fmt.Errorf("%w: token %s is not pending", ErrInvalid, id)
		}
		return tx.deleteToken(tok)
	})
}

func (s *Store) createToken(ctx context.Context, g Grant, owner string, ttl time.Duration, pending bool) (string, *Token, error) {
	if ttl <= 0 {
		return "", nil, fmt.Errorf("%w: token lifetime must be positive", ErrInvalid)
	}
	raw := make([]byte, 32+8)
	if _, err := io.ReadFull(s.opts.rand, raw); err != nil {
		return "", nil, fmt.Errorf("inventory: token entropy: %w", err)
	}
	secret := TokenPrefix + base64.RawURLEncoding.EncodeToString(raw[:32])
	sum := sha256.Sum256([]byte(secret))
	now := s.opts.now()
	tok := &Token{
		ID:      "tok_" + hex.EncodeToString(raw[32:]),
		Hash:    sum[:],
		Model:   g.Model,
		Group:   g.Group,
		Owner:   owner,
		Created: now,
		Expires: now.Add(ttl),
		Pending: pending,
	}
	err := s.e.update(ctx, func(tx tx) error {
		byID, err := tx.token(tok.ID)
		if err != nil {
			return err
		}
		byHash, err := tx.tokenByHash(tok.Hash)
		if err != nil {
			return err
		}
		if byID != nil || byHash != nil {
			return fmt.Errorf("inventory: token collision (broken entropy source?)")
		}
		return tx.putToken(tok)
	})
	if err != nil {
		return "", nil, err
	}
	return secret, tok, nil
}

// ConsumeToken checks a token secret as CheckToken does and marks it used
// by deviceID, atomically: of concurrent calls with one secret, one wins.
func (s *Store) ConsumeToken(ctx context.Context, secret, deviceID, model string, now time.Time) (*Token, error) {
	if deviceID == "" {
		return nil, fmt.Errorf("%w: device ID required", ErrInvalid)
	}
	var tok *Token
	err := s.e.update(ctx, func(tx tx) error {
		var err error
		tok, err = checkToken(tx, secret, model, now)
		if err != nil {
			return err
		}
		tok.UsedBy, tok.UsedAt = deviceID, now
		return tx.putToken(tok)
	})
	if err != nil {
		return nil, err
	}
	return tok, nil
}

// CheckToken reports whether a secret is a usable token for model at now:
// ErrTokenInvalid if unknown, ErrTokenExpired, ErrTokenUsed,
// ErrTokenPending if it awaits approval, or ErrTokenBinding if it is
// bound to another model, in that order.
func (s *Store) CheckToken(ctx context.Context, secret, model string, now time.Time) (*Token, error) {
	var tok *Token
	err := s.e.view(ctx, func(tx tx) error {
		var err error
		tok, err = checkToken(tx, secret, model, now)
		return err
	})
	return tok, err
}

// lookupToken returns the token whose secret is secret, or
// ErrTokenInvalid.
func lookupToken(tx tx, secret string) (*Token, error) {
	if !strings.HasPrefix(secret, TokenPrefix) || len(secret) > 128 {
		return nil, ErrTokenInvalid
	}
	sum := sha256.Sum256([]byte(secret))
	tok, err := tx.tokenByHash(sum[:])
	if err != nil {
		return nil, err
	}
	if tok == nil || subtle.ConstantTimeCompare(tok.Hash, sum[:]) != 1 {
		return nil, ErrTokenInvalid
	}
	return tok, nil
}

func checkToken(tx tx, secret, model string, now time.Time) (*Token, error) {
	tok, err := lookupToken(tx, secret)
	if err != nil {
		return nil, err
	}
	switch {
	case !now.Before(tok.Expires):
		return nil, fmt.Errorf("%w: token %s expired %s", ErrTokenExpired, tok.ID, tok.Expires.UTC().Format(time.RFC3339))
	case tok.UsedBy != "":
		return nil, fmt.Errorf("%w: token %s", ErrTokenUsed, tok.ID)
	case tok.Pending:
		return nil, fmt.Errorf("%w: token %s", ErrTokenPending, tok.ID)
	case tok.Model != "" && tok.Model != model:
		return nil, fmt.Errorf("%w: token %s", ErrTokenBinding, tok.ID)
	}
	return tok, nil
}

// AddEvent records a lifecycle event (Time defaults to now) and drops the
// device's oldest events beyond the limit (WithMaxEvents); an anonymous
// event drops only the oldest anonymous events beyond MaxAnonymousEvents.
func (s *Store) AddEvent(ctx context.Context, e Event) error {
	if !wire.ValidID(e.DeviceID) || e.Kind == "" {
		return fmt.Errorf("%w: event needs a device ID and a kind", ErrInvalid)
	}
	if e.Time.IsZero() {
		e.Time = s.opts.now()
	}
	limit := s.opts.maxEvents
	if e.Anonymous {
		limit = MaxAnonymousEvents
	}
	err := s.e.write(ctx, func(tx tx) error { return tx.addEvent(&e, limit) })
	if err == nil && s.opts.onEvent != nil {
		s.opts.onEvent(e)
	}
	return err
}

// Events returns a device's events, anonymous ones included, newest
// first; limit <= 0 returns all that are kept.
func (s *Store) Events(ctx context.Context, deviceID string, limit int) ([]Event, error) {
	return s.e.events(ctx, deviceID, limit)
}
