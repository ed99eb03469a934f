package firmware

import (
	"bytes"
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/sigil-iot/sigil/firmware/manifest"
	"github.com/sigil-iot/sigil/firmware/verify"
	"github.com/sigil-iot/sigil/fleet/storage/boltdb"
	"github.com/sigil-iot/sigil/fleet/storage/kv"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// DataDir is the store's directory (Config.Dir) in the fleet's data
// directory.
const DataDir = "firmware"

// Names inside Config.Dir.
const (
	DBFile    = "firmware.db" // bbolt file with the release records
	ImagesDir = "images"      // images, each named by its SHA-256 in hex
)

// DefaultMaxImageSize is Config.MaxImageSize's default.
const DefaultMaxImageSize = 4 << 30

// Errors. Compare with errors.Is. Signature and expiry refusals wrap
// verify.ErrSignature and verify.ErrExpired (as *wire.Error values).
var (
	ErrNotFound        = errors.New("firmware: release not found")
	ErrExists          = errors.New("firmware: release already uploaded")
	ErrInvalid         = errors.New("firmware: invalid request")
	ErrNoImage         = errors.New("firmware: image required: the store does not hold it yet")
	ErrTooLarge        = errors.New("firmware: image larger than the store accepts")
	ErrSelfApproval    = errors.New("firmware: the uploader of a release cannot approve it")
	ErrAlreadyApproved = errors.New("firmware: approver already approved this release")
	ErrNotApproved     = errors.New("firmware: release not approved")
	ErrWithdrawn       = errors.New("firmware: release withdrawn")
	ErrAudit           = errors.New("firmware: the audit log did not record the change; nothing was changed")
	ErrLocked          = errors.New("firmware: store file locked by another process")
)

// State is a release's state.
type State string

// Release states.
const (
	StateUploaded  State = "uploaded"  // verified and stored; waiting for approvals
	StateApproved  State = "approved"  // released: campaigns may offer it
	StateWithdrawn State = "withdrawn" // never offered again
)

// Audit actions and outcomes passed to the Auditor.
const (
	ActionUpload   = "firmware.upload"
	ActionApprove  = "firmware.approve"
	ActionWithdraw = "firmware.withdraw"

	OutcomeOK     = "ok"     // done
	OutcomeDenied = "denied" // refused by verification or the two-person rule
	OutcomeFailed = "failed" // attempted and failed (storage)
)

// Auditor records operator actions on releases. fleet/audit's log can stand
// behind it through AuditorFunc. Record returns once the entry is durable;
// for accepted changes an error aborts the change.
type Auditor interface {
	Record(ctx context.Context, actor, action, target, outcome, reason string) error
}

// AuditorFunc adapts a function to Auditor.
type AuditorFunc func(ctx context.Context, actor, action, target, outcome, reason string) error

// Record calls f.
func (f AuditorFunc) Record(ctx context.Context, actor, action, target, outcome, reason string) error {
	return f(ctx, actor, action, target, outcome, reason)
}

var _ Auditor = AuditorFunc(nil)

// Config configures Open.
type Config struct {
	// Dir holds DBFile and ImagesDir; created with mode 0700 if missing.
	// Required.
	Dir string
	// Trust is the fleet's release trust set: the keys and threshold that
	// uploads and offers are checked against. Required.
	Trust *verify.TrustSet
	// Approvals is how many distinct people other than the uploader must
	// approve a release before it is offered. 0 means 1.
	Approvals int
	// MaxImageSize bounds the image of an upload. 0 means
	// DefaultMaxImageSize (4 GiB).
	MaxImageSize int64
	// Now is the clock for expiry checks and record times. Nil means
	// time.Now.
	Now func() time.Time
	// Auditor records uploads, approvals and withdrawals, refused ones
	// included. Nil records nothing.
	Auditor Auditor
	// Logger receives events (release IDs, names, versions, actors; never
	// key material). Nil discards them.
	Logger *slog.Logger
	// NoSync skips fsync of the database and the images: faster, and a
	// power loss may lose recent changes. For tests.
	NoSync bool
}

// Approval is one person's approval of a release.
type Approval struct {
	By string    `json:"by"`
	At time.Time `json:"at"`
}

// Release is a stored release.
type Release struct {
	ID string `json:"id"`
	// Manifest is parsed from ManifestJSON, the signed bytes. Hand devices
	// ManifestJSON as it is: a JSON encoder (the API's) may escape
	// characters inside it, which breaks the signature.
	Manifest     *manifest.Manifest `json:"-"`
	ManifestJSON json.RawMessage    `json:"manifest"`
	// Bundles are the signature bundles as uploaded; devices verify them
	// against their own trust set.
	Bundles [][]byte `json:"bundles"`
	// Signers are the IDs of the trusted keys whose signatures counted at
	// upload.
	Signers        []string   `json:"signers"`
	State          State      `json:"state"`
	UploadedBy     string     `json:"uploaded_by"`
	UploadedAt     time.Time  `json:"uploaded_at"`
	Approvals      []Approval `json:"approvals,omitempty"`
	ApprovedAt     time.Time  `json:"approved_at,omitzero"` // when the last required approval came
	WithdrawnBy    string     `json:"withdrawn_by,omitempty"`
	WithdrawnAt    time.Time  `json:"withdrawn_at,omitzero"`
	WithdrawReason string     `json:"withdraw_reason,omitempty"`
}

// ImageDigest returns the image's SHA-256 in lowercase hex, the name of its
// file and of its download URL.
func (r *Release) ImageDigest() string { return hex.EncodeToString(r.Manifest.SHA256[:]) }

// Store is the release store: records in a bbolt file (Open) or in
// PostgreSQL (OpenPostgres), images in files. Its methods are safe for
// concurrent use.
type Store struct {
	db        kv.DB
	dir       string
	trust     atomic.Pointer[verify.TrustSet]
	approvals int
	maxImage  int64
	now       func() time.Time
	audit     Auditor
	log       *slog.Logger
	noSync    bool
}

var (
	bucketMeta     = []byte("meta")
	bucketReleases = []byte("releases") // release ID -> record
	bucketByImage  = []byte("byimage")  // image SHA-256 (32 bytes) || release ID -> empty
)

// Table is the PostgreSQL table holding the records' buckets
// (kv.Postgres).
const Table = "firmware_kv"

// Buckets are the records' buckets, in the bbolt file and in PostgreSQL:
// what sigil migrate copies.
var Buckets = [][]byte{bucketReleases, bucketByImage}

// migrations are the records' tables in PostgreSQL (component
// "firmware" in schema_migrations).
//
//go:embed migrations/*.sql
var migrations embed.FS

const (
	schemaVersion = 1
	recordVersion = 1
	tmpPrefix     = ".tmp-"
	maxActor      = 256
	maxReason     = 1024
)

// Open opens or creates the store in cfg.Dir and removes temporary image
// files a crash left behind.
func Open(cfg Config) (*Store, error) {
	s, err := newStore(cfg)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(cfg.Dir, DBFile)
	db, err := boltdb.Open(path, boltdb.Schema{
		Buckets: [][]byte{bucketMeta, bucketReleases, bucketByImage},
		Version: schemaVersion,
	}, boltdb.Options{Name: "firmware", NoSync: cfg.NoSync, Locked: ErrLocked})
	if err != nil {
		return nil, err
	}
	s.db = kv.Bolt(db)
	return s, nil
}

// OpenPostgres opens the release records in the PostgreSQL database db,
// bringing its tables up to date first; the images stay in cfg.Dir's
// ImagesDir, which replicas sharing db must share too (a network file
// system), or each holds the images uploaded through it only. Changes
// run one at a time across the replicas, each exactly once
// (kv.Options.Serialized): a change records its audit entry in its
// transaction. cfg.NoSync applies to the images. Close leaves db open.
func OpenPostgres(ctx context.Context, db *postgres.DB, cfg Config) (*Store, error) {
	s, err := newStore(cfg)
	if err != nil {
		return nil, err
	}
	if s.db, err = PostgresBuckets(ctx, db); err != nil {
		return nil, err
	}
	return s, nil
}

// PostgresBuckets brings the records' tables in db up to date and
// returns their buckets (sigil migrate copies into them).
func PostgresBuckets(ctx context.Context, db *postgres.DB) (kv.DB, error) {
	return kv.PostgresMigrated(ctx, db, "firmware", migrations, Table, kv.Options{Serialized: true})
}

// newStore checks cfg, applies its defaults, and prepares the images
// directory.
func newStore(cfg Config) (*Store, error) {
	if cfg.Dir == "" {
		return nil, errors.New("firmware: open: no directory")
	}
	if cfg.Trust == nil {
		return nil, errors.New("firmware: open: no release trust set")
	}
	s := &Store{dir: cfg.Dir, approvals: cfg.Approvals, maxImage: cfg.MaxImageSize,
		now: cfg.Now, audit: cfg.Auditor, log: cfg.Logger, noSync: cfg.NoSync}
	s.trust.Store(cfg.Trust)
	if s.approvals <= 0 {
		s.approvals = 1
	}
	if s.maxImage <= 0 {
		s.maxImage = DefaultMaxImageSize
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.audit == nil {
		s.audit = AuditorFunc(func(context.Context, string, string, string, string, string) error { return nil })
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	images := filepath.Join(cfg.Dir, ImagesDir)
	if err := os.MkdirAll(images, 0o700); err != nil {
		return nil, fmt.Errorf("firmware: open: %w", err)
	}
	if err := removeTemps(images); err != nil {
		return nil, err
	}
	return s, nil
}

func removeTemps(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("firmware: open: %w", err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), tmpPrefix) {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
				return fmt.Errorf("firmware: open: remove leftover %s: %w", e.Name(), err)
			}
		}
	}
	return nil
}

// Close closes the database (a PostgreSQL store leaves it open).
func (s *Store) Close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("firmware: close: %w", err)
	}
	return nil
}

// SetTrust replaces the release trust set, after the fleet's release keys
// were rotated (verify.Rotate). From then on uploads, approvals, Offerable
// and downloads check signatures against t.
func (s *Store) SetTrust(t *verify.TrustSet) error {
	if t == nil {
		return errors.New("firmware: SetTrust: nil trust set")
	}
	s.trust.Store(t)
	s.log.Info("firmware: release trust set replaced", "sequence", t.Sequence(), "threshold", t.Threshold(), "keys", len(t.KeyIDs()))
	return nil
}

// ReleaseID returns the ID of the release whose manifest is raw.
func ReleaseID(raw []byte) string {
	sum := sha256.Sum256(raw)
	return hex.EncodeToString(sum[:16])
}

// Upload verifies and stores a release that actor uploads (and so requests).
// It checks, before storing anything: the bundles against the trust set
// (verify.Manifest: threshold of distinct trusted keys over exactly
// manifestJSON, a valid canonical manifest), that the metadata has not
// expired, the image size against Config.MaxImageSize, and that the release
// is new. Then it writes the image, unless the store already holds an
// image with that digest (image may then be nil), and refuses it when its
// size or SHA-256 differs from the manifest's (verify.ErrImage). The new
// release is in StateUploaded.
func (s *Store) Upload(ctx context.Context, actor string, manifestJSON []byte, bundles [][]byte, image io.Reader) (*Release, error) {
	id := ReleaseID(manifestJSON)
	deny := func(err error) (*Release, error) {
		s.record(ctx, actor, ActionUpload, id, OutcomeDenied, err)
		s.log.Info("firmware: upload refused", "release", id, "actor", actor, "err", err)
		return nil, err
	}
	if err := validActor(actor); err != nil {
		return deny(err)
	}
	v, err := verify.Manifest(manifestJSON, bundles, s.trust.Load())
	if err != nil {
		return deny(err)
	}
	m := v.Manifest
	if err := s.checkExpiry(m); err != nil {
		return deny(err)
	}
	if m.Size > s.maxImage {
		return deny(fmt.Errorf("%w: %d bytes, at most %d", ErrTooLarge, m.Size, s.maxImage))
	}
	if _, err := s.Release(ctx, id); err == nil {
		return deny(fmt.Errorf("%w: %s", ErrExists, id))
	}
	digest := hex.EncodeToString(m.SHA256[:])
	if !s.hasImage(digest) {
		if image == nil {
			return deny(fmt.Errorf("%w: %s", ErrNoImage, digest))
		}
		if err := s.writeImage(m, image); err != nil {
			if errors.Is(err, verify.ErrImage) {
				return deny(err)
			}
			s.record(ctx, actor, ActionUpload, id, OutcomeFailed, err)
			return nil, err
		}
	}
	if err := s.ensureIndex(m); err != nil {
		if errors.Is(err, ErrBlockIndex) {
			return deny(err)
		}
		s.record(ctx, actor, ActionUpload, id, OutcomeFailed, err)
		return nil, err
	}
	r := &Release{
		ID: id, Manifest: m, ManifestJSON: manifestJSON, Bundles: bundles, Signers: v.Signers,
		State: StateUploaded, UploadedBy: actor, UploadedAt: s.now().UTC(),
	}
	err = s.db.Update(ctx, func(tx kv.Tx) error {
		if tx.Bucket(bucketReleases).Get([]byte(id)) != nil {
			return fmt.Errorf("%w: %s", ErrExists, id)
		}
		if err := putRelease(tx, r); err != nil {
			return err
		}
		if err := tx.Bucket(bucketByImage).Put(append(m.SHA256[:], id...), nil); err != nil {
			return err
		}
		return s.recordChange(ctx, actor, ActionUpload, id, fmt.Sprintf("%s %s, signed by %d key(s)", m.Name, m.Version, len(v.Signers)))
	})
	if err != nil {
		if errors.Is(err, ErrExists) {
			return deny(err)
		}
		return nil, err
	}
	s.log.Info("firmware: release uploaded", "release", id, "name", m.Name, "version", m.Version,
		"security_version", m.SecurityVersion, "actor", actor, "signers", len(v.Signers))
	return r, nil
}

// Approve records actor's approval of release id. It refuses the uploader
// (ErrSelfApproval), a second approval by the same person
// (ErrAlreadyApproved), a withdrawn or already approved release, and a
// release that is no longer signed by the current trust set or has
// expired. With Config.Approvals approvals the release becomes
// StateApproved.
func (s *Store) Approve(ctx context.Context, actor, id string) (*Release, error) {
	var out *Release
	err := s.db.Update(ctx, func(tx kv.Tx) error {
		r, err := getRelease(tx, id)
		if err != nil {
			return err
		}
		if err := validActor(actor); err != nil {
			return err
		}
		switch {
		case r.State == StateWithdrawn:
			return fmt.Errorf("%w: %s", ErrWithdrawn, id)
		case r.State == StateApproved:
			return fmt.Errorf("%w: %s is already approved", ErrInvalid, id)
		case actor == r.UploadedBy:
			return fmt.Errorf("%w: %s uploaded %s", ErrSelfApproval, actor, id)
		case slices.ContainsFunc(r.Approvals, func(a Approval) bool { return a.By == actor }):
			return fmt.Errorf("%w: %s, %s", ErrAlreadyApproved, actor, id)
		}
		if _, err := verify.Manifest(r.ManifestJSON, r.Bundles, s.trust.Load()); err != nil {
			return err
		}
		if err := s.checkExpiry(r.Manifest); err != nil {
			return err
		}
		now := s.now().UTC()
		r.Approvals = append(r.Approvals, Approval{By: actor, At: now})
		if len(r.Approvals) >= s.approvals {
			r.State, r.ApprovedAt = StateApproved, now
		}
		if err := putRelease(tx, r); err != nil {
			return err
		}
		out = r
		return s.recordChange(ctx, actor, ActionApprove, id, fmt.Sprintf("approval %d of %d", len(r.Approvals), s.approvals))
	})
	if err != nil {
		if !errors.Is(err, ErrAudit) && !errors.Is(err, ErrNotFound) {
			s.record(ctx, actor, ActionApprove, id, OutcomeDenied, err)
		}
		s.log.Info("firmware: approval refused", "release", id, "actor", actor, "err", err)
		return nil, err
	}
	s.log.Info("firmware: release approved", "release", id, "actor", actor, "approvals", len(out.Approvals), "state", out.State)
	return out, nil
}

// Withdraw takes release id out of circulation for good: it is never
// offered again. Anyone may withdraw (stopping a release needs one person);
// reason is kept on the release and in the audit record.
func (s *Store) Withdraw(ctx context.Context, actor, id, reason string) (*Release, error) {
	var out *Release
	err := s.db.Update(ctx, func(tx kv.Tx) error {
		r, err := getRelease(tx, id)
		if err != nil {
			return err
		}
		if err := validActor(actor); err != nil {
			return err
		}
		if len(reason) > maxReason {
			return fmt.Errorf("%w: reason longer than %d bytes", ErrInvalid, maxReason)
		}
		if r.State == StateWithdrawn {
			return fmt.Errorf("%w: %s", ErrWithdrawn, id)
		}
		r.State, r.WithdrawnBy, r.WithdrawnAt, r.WithdrawReason = StateWithdrawn, actor, s.now().UTC(), reason
		if err := putRelease(tx, r); err != nil {
			return err
		}
		out = r
		return s.recordChange(ctx, actor, ActionWithdraw, id, reason)
	})
	if err != nil {
		if !errors.Is(err, ErrAudit) && !errors.Is(err, ErrNotFound) {
			s.record(ctx, actor, ActionWithdraw, id, OutcomeDenied, err)
		}
		return nil, err
	}
	s.log.Info("firmware: release withdrawn", "release", id, "actor", actor)
	return out, nil
}

// Offerable returns release id if campaigns may offer it to devices at now:
// it is approved (ErrNotApproved), not withdrawn (ErrWithdrawn), still
// signed by the threshold of the current trust set (verify.ErrSignature)
// and not expired (verify.ErrExpired).
func (s *Store) Offerable(ctx context.Context, id string, now time.Time) (*Release, error) {
	r, err := s.Release(ctx, id)
	if err != nil {
		return nil, err
	}
	return r, s.offerable(r, now)
}

func (s *Store) offerable(r *Release, now time.Time) error {
	switch r.State {
	case StateWithdrawn:
		return fmt.Errorf("%w: %s", ErrWithdrawn, r.ID)
	case StateApproved:
	default:
		return fmt.Errorf("%w: %s has %d of %d approvals", ErrNotApproved, r.ID, len(r.Approvals), s.approvals)
	}
	if _, err := verify.Manifest(r.ManifestJSON, r.Bundles, s.trust.Load()); err != nil {
		return err
	}
	return expiry(r.Manifest, now)
}

// Release returns release id.
func (s *Store) Release(ctx context.Context, id string) (*Release, error) {
	var r *Release
	err := s.db.View(ctx, func(tx kv.Tx) error {
		var err error
		r, err = getRelease(tx, id)
		return err
	})
	return r, err
}

// List returns every release, newest upload first.
func (s *Store) List(ctx context.Context) ([]*Release, error) {
	var out []*Release
	err := s.db.View(ctx, func(tx kv.Tx) error {
		return tx.Bucket(bucketReleases).ForEach(func(k, v []byte) error {
			r, err := decode(v)
			if err != nil {
				return fmt.Errorf("%w (release %q)", err, k)
			}
			out = append(out, r)
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b *Release) int {
		if c := b.UploadedAt.Compare(a.UploadedAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out, nil
}

// releasesOfImage returns the releases whose manifest names the image.
func (s *Store) releasesOfImage(ctx context.Context, digest [32]byte) ([]*Release, error) {
	var out []*Release
	err := s.db.View(ctx, func(tx kv.Tx) error {
		c := tx.Bucket(bucketByImage).Cursor()
		for k, _ := c.Seek(digest[:]); k != nil && bytes.HasPrefix(k, digest[:]); k, _ = c.Next() {
			r, err := getRelease(tx, string(k[len(digest):]))
			if err != nil {
				return err
			}
			out = append(out, r)
		}
		return nil
	})
	return out, err
}

// OpenImage opens the stored image with this SHA-256 (lowercase hex).
func (s *Store) OpenImage(digest string) (*os.File, error) {
	if !validDigest(digest) {
		return nil, fmt.Errorf("%w: image digest %q", ErrInvalid, digest)
	}
	f, err := os.Open(filepath.Join(s.dir, ImagesDir, digest))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: no image %s", ErrNotFound, digest)
	}
	if err != nil {
		return nil, fmt.Errorf("firmware: %w", err)
	}
	return f, nil
}

func (s *Store) hasImage(digest string) bool {
	_, err := os.Stat(filepath.Join(s.dir, ImagesDir, digest))
	return err == nil
}

// writeImage copies the image to a temporary file while checking it
// against m, then syncs and renames it to its digest and syncs the
// directory.
func (s *Store) writeImage(m *manifest.Manifest, image io.Reader) (err error) {
	dir := filepath.Join(s.dir, ImagesDir)
	f, err := os.CreateTemp(dir, tmpPrefix+"*")
	if err != nil {
		return fmt.Errorf("firmware: image: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	check := verify.NewImageCheck(m)
	if _, err := io.Copy(io.MultiWriter(f, check), io.LimitReader(image, m.Size+1)); err != nil {
		return fmt.Errorf("firmware: image: %w", err)
	}
	if err := check.Verify(); err != nil {
		return err
	}
	if !s.noSync {
		if err := f.Sync(); err != nil {
			return fmt.Errorf("firmware: image: sync: %w", err)
		}
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("firmware: image: %w", err)
	}
	if err := os.Rename(f.Name(), filepath.Join(dir, hex.EncodeToString(m.SHA256[:]))); err != nil {
		return fmt.Errorf("firmware: image: %w", err)
	}
	if s.noSync {
		return nil
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("firmware: image: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("firmware: image: sync directory: %w", err)
	}
	return nil
}

func (s *Store) checkExpiry(m *manifest.Manifest) error {
	return expiry(m, s.now())
}

// expiry refuses expired metadata the way a device does.
func expiry(m *manifest.Manifest, now time.Time) error {
	if m.Expired(now) {
		return wire.Refuse(wire.ReasonFirmwareExpired, "release metadata expired",
			fmt.Errorf("firmware: %w: %s %s expired at %s", verify.ErrExpired, m.Name, m.Version, m.Expires.UTC().Format(time.RFC3339)))
	}
	return nil
}

// recordChange audits an accepted change inside its transaction: when the
// audit log refuses, the transaction rolls back.
func (s *Store) recordChange(ctx context.Context, actor, action, target, detail string) error {
	if err := s.audit.Record(ctx, actor, action, target, OutcomeOK, detail); err != nil {
		return fmt.Errorf("%w: %w", ErrAudit, err)
	}
	return nil
}

// record audits a refused or failed attempt; an audit error is logged.
func (s *Store) record(ctx context.Context, actor, action, target, outcome string, cause error) {
	reason := cause.Error()
	if len(reason) > maxReason {
		reason = reason[:maxReason]
	}
	if err := s.audit.Record(ctx, actor, action, target, outcome, reason); err != nil {
		s.log.Error("firmware: audit record failed", "action", action, "release", target, "err", err)
	}
}

func validActor(actor string) error {
	if actor == "" || len(actor) > maxActor {
		return fmt.Errorf("%w: actor must be 1-%d bytes", ErrInvalid, maxActor)
	}
	for i := 0; i < len(actor); i++ {
		if actor[i] < 0x20 || actor[i] == 0x7f {
			return fmt.Errorf("%w: actor has control characters", ErrInvalid)
		}
	}
	return nil
}

func validDigest(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// record is the stored form of a release. The manifest is kept as bytes
// (base64) beside the release, whose own JSON field is left empty: JSON
// encoding would escape characters in it, and the signed bytes must come
// back exactly.
type record struct {
	V        int      `json:"v"`
	Release  *Release `json:"data"`
	Manifest []byte   `json:"manifest"`
}

func putRelease(tx kv.Tx, r *Release) error {
	rc := *r
	rc.ManifestJSON = nil
	b, err := json.Marshal(record{V: recordVersion, Release: &rc, Manifest: r.ManifestJSON})
	if err != nil {
		return fmt.Errorf("firmware: encode: %w", err)
	}
	return tx.Bucket(bucketReleases).Put([]byte(r.ID), b)
}

func getRelease(tx kv.Tx, id string) (*Release, error) {
	v := tx.Bucket(bucketReleases).Get([]byte(id))
	if v == nil {
		return nil, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	return decode(v)
}

func decode(v []byte) (*Release, error) {
	var rec record
	if err := json.Unmarshal(v, &rec); err != nil {
		return nil, fmt.Errorf("firmware: decode: %w", err)
	}
	if rec.V < 1 || rec.V > recordVersion || rec.Release == nil {
		return nil, fmt.Errorf("firmware: decode: unsupported record version %d", rec.V)
	}
	r := rec.Release
	r.ManifestJSON = rec.Manifest
	m, err := manifest.Parse(rec.Manifest)
	if err != nil {
		return nil, fmt.Errorf("firmware: decode release %s: %w", r.ID, err)
	}
	r.Manifest = m
	return r, nil
}
