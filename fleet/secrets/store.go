package secrets

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	cryptorand "crypto/rand"
	"crypto/sha256"
	"embed"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/sigil-iot/sigil/fleet/storage/boltdb"
	"github.com/sigil-iot/sigil/fleet/storage/kv"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
	"github.com/sigil-iot/sigil/pkg/config"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// Files Open creates in Config.Dir.
const (
	DBFile  = "secrets.db"  // bbolt file with the encrypted secrets
	KeyFile = "secrets.key" // AES-256 key, mode 0600; losing it loses every secret
)

// Errors of the store.
var (
	ErrNotFound = errors.New("secrets: not found")                                           // no such secret or version
	ErrCorrupt  = errors.New("secrets: stored secret does not decrypt (corrupt or foreign)") // authentication failed
	ErrLocked   = errors.New("secrets: store file locked by another process")
)

// Config configures Open.
type Config struct {
	// Dir holds DBFile and KeyFile (the fleet data directory). Required; it
	// is created with mode 0700 if missing.
	Dir string
	// Rand supplies the key (at first start) and the GCM nonces. Nil means
	// crypto/rand.
	Rand io.Reader
	// Now stamps new versions. Nil means time.Now.
	Now func() time.Time
	// Logger receives events (names and versions, never values). Nil
	// discards them.
	Logger *slog.Logger
	// NoSync skips fsync on commit: faster, and a power loss may lose recent
	// commits. For tests.
	NoSync bool
}

// Target says which devices receive a secret. Empty fields match any
// device; at least one field must be set.
type Target struct {
	Device string `json:"device,omitempty"` // device ID
	Group  string `json:"group,omitempty"`
	Model  string `json:"model,omitempty"`
}

// Matches reports whether a device with this ID, group and model is a
// target.
func (t Target) Matches(device, group, model string) bool {
	return (t.Device == "" || t.Device == device) && (t.Group == "" || t.Group == group) && (t.Model == "" || t.Model == model)
}

func (t Target) validate() error {
	if t == (Target{}) {
		return errors.New("target names no device, group or model")
	}
	for _, s := range []string{t.Device, t.Group, t.Model} {
		if s != "" && !wire.ValidID(s) {
			return fmt.Errorf("target %q is not a valid ID", s)
		}
	}
	return nil
}

// Info describes a version of a secret without its value.
type Info struct {
	Name     string    `json:"name"`
	Version  int       `json:"version"`
	Target   Target    `json:"target"`
	PCRBound bool      `json:"pcr_bound"` // deliver bound to the device's reference PCR values
	Created  time.Time `json:"created"`
	// Grace is how long the version this one replaced stays valid (from
	// the secret's rotation schedule when it was stored).
	Grace config.Duration `json:"grace,omitempty"`
}

// Secret is a version of a secret with its value. It never prints or logs
// its value: String and LogValue redact it.
type Secret struct {
	Info
	Value []byte
}

// String implements fmt.Stringer without the value.
func (s Secret) String() string {
	return fmt.Sprintf("secret %s v%d (%d bytes)", s.Name, s.Version, len(s.Value))
}

// GoString implements fmt.GoStringer without the value.
func (s Secret) GoString() string { return s.String() }

// LogValue implements slog.LogValuer without the value.
func (s Secret) LogValue() slog.Value {
	return slog.GroupValue(slog.String("name", s.Name), slog.Int("version", s.Version), slog.Int("size", len(s.Value)))
}

// Listing is one secret in List: its latest version and the versions kept.
type Listing struct {
	Info
	Versions []int         `json:"versions"` // ascending
	History  []VersionInfo `json:"history"`  // each version's state, ascending
	Rotation *Rotation     `json:"rotation,omitempty"`
}

// Store keeps every version of every named secret in a bbolt file (Open)
// or in PostgreSQL (OpenPostgres), encrypted with AES-256-GCM under the
// key in KeyFile, which never leaves the data directory. Its methods are
// safe for concurrent use.
//
// Layout: bucket "secrets" holds a bucket per name whose keys are
// big-endian version numbers and whose values are JSON records (metadata
// in clear, value as nonce and ciphertext); bucket "versions" holds the
// last version issued per name, which survives Delete so that a version
// number is never reused; bucket "meta" holds the schema version and a key
// check (a constant encrypted under the key) that detects a wrong key
// file. In PostgreSQL the same buckets are rows of the table Table
// (fleet/storage/kv).
type Store struct {
	db   kv.DB
	aead cipher.AEAD
	rand io.Reader
	now  func() time.Time
	log  *slog.Logger
}

var (
	bucketSecrets  = []byte("secrets")
	bucketVersions = []byte("versions")
	bucketMeta     = []byte("meta")
	keyCheck       = []byte("keycheck")
)

// Table is the PostgreSQL table holding the secrets' buckets (kv.Postgres).
const Table = "secrets_kv"

// Buckets are the secrets' buckets, in the bbolt file and in PostgreSQL
// (with the buckets nested in them): what sigil migrate copies. "meta"
// holds the key check, so that the database refuses another key file
// than the one its secrets are sealed with.
var Buckets = [][]byte{bucketMeta, bucketSecrets, bucketVersions, bucketRotation}

// migrations are the secrets' tables in PostgreSQL (component "secrets"
// in schema_migrations).
//
//go:embed migrations/*.sql
var migrations embed.FS

const (
	schemaVersion = 1
	keySize       = 32
	checkText     = "sigil secrets key check"
)

// record is a stored version.
type record struct {
	Target     Target          `json:"target"`
	PCRBound   bool            `json:"pcr_bound,omitempty"`
	Grace      config.Duration `json:"grace,omitempty"`
	Created    time.Time       `json:"created"`
	Nonce      []byte          `json:"nonce"`
	Ciphertext []byte          `json:"ciphertext"`
}

// Open opens or creates the store in cfg.Dir. At first start it creates
// KeyFile (mode 0600) with a new random key. It refuses a key file that
// group or others can read, a key file that is not the one the store was
// created with, and a missing key file when the store already holds
// secrets.
func Open(cfg Config) (*Store, error) {
	if cfg.Dir == "" {
		return nil, errors.New("secrets: open: no directory")
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("secrets: open: %w", err)
	}
	s := newStore(cfg)
	path := filepath.Join(cfg.Dir, DBFile)
	keyPath := filepath.Join(cfg.Dir, KeyFile)
	db, err := boltdb.Open(path, boltdb.Schema{
		Buckets: [][]byte{bucketMeta, bucketSecrets, bucketVersions},
		Version: schemaVersion,
		Init:    func(tx *bolt.Tx) error { return s.initKey(kv.BoltTx(tx), keyPath) },
	}, boltdb.Options{Name: "secrets", NoSync: cfg.NoSync, Locked: ErrLocked})
	if err != nil {
		return nil, err
	}
	s.db = kv.Bolt(db)
	return s, nil
}

// OpenPostgres opens the secrets in the PostgreSQL database db, bringing
// its tables up to date first; the key stays in cfg.Dir's KeyFile, as
// with Open (replicas sharing db each need a copy of that file: a
// replica with another key is refused). Writes run one at a time across
// the replicas (kv.Options.Serialized), so that a scheduled rotation
// that is due is done by one of them (RotateDue). cfg.NoSync is unused.
// Close leaves db open.
func OpenPostgres(ctx context.Context, db *postgres.DB, cfg Config) (*Store, error) {
	if cfg.Dir == "" {
		return nil, errors.New("secrets: open: no directory for the key file")
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("secrets: open: %w", err)
	}
	k, err := PostgresBuckets(ctx, db)
	if err != nil {
		return nil, err
	}
	return newStore(cfg).start(ctx, k, filepath.Join(cfg.Dir, KeyFile), "database")
}

// PostgresBuckets brings the secrets' tables in db up to date and returns
// their buckets (sigil migrate copies into them).
func PostgresBuckets(ctx context.Context, db *postgres.DB) (kv.DB, error) {
	return kv.PostgresMigrated(ctx, db, "secrets", migrations, Table, kv.Options{Serialized: true})
}

func newStore(cfg Config) *Store {
	s := &Store{rand: cfg.Rand, now: cfg.Now, log: cfg.Logger}
	if s.rand == nil {
		s.rand = cryptorand.Reader
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	return s
}

// start checks the key against the store's key check (writing one in a
// new store) and returns the store on db.
func (s *Store) start(ctx context.Context, db kv.DB, keyPath, where string) (*Store, error) {
	if err := db.Update(ctx, func(tx kv.Tx) error { return s.initKey(tx, keyPath) }); err != nil {
		db.Close()
		return nil, fmt.Errorf("secrets: initialize %s: %w", where, err)
	}
	s.db = db
	return s, nil
}

// initKey loads the key (creating it with a new store) and checks it
// against the store's key check.
func (s *Store) initKey(tx kv.Tx, keyPath string) error {
	meta, err := tx.CreateBucketIfNotExists(bucketMeta)
	if err != nil {
		return err
	}
	check := meta.Get(keyCheck)
	key, err := loadKey(keyPath, check == nil, s.rand)
	if err != nil {
		return err
	}
	block, err := aes.NewCipher(key)
	clear(key)
	if err != nil {
		return fmt.Errorf("secrets: key: %w", err)
	}
	if s.aead, err = cipher.NewGCM(block); err != nil {
		return fmt.Errorf("secrets: key: %w", err)
	}
	if check != nil {
		if _, err := s.open(check, []byte(checkText)); err != nil {
			return fmt.Errorf("secrets: %s is not the key this store was created with", keyPath)
		}
		return nil
	}
	sealed, err := s.seal([]byte(checkText), []byte(checkText))
	if err != nil {
		return err
	}
	return meta.Put(keyCheck, sealed)
}

// DerivedKey returns a 32-byte key for purpose derived (HKDF-SHA256) from
// the secrets key in dir, created there if missing: for what the fleet's
// replicas must seal alike, with the one key file they all hold (a
// replica with another key file is refused by the store).
func DerivedKey(dir, purpose string) ([]byte, error) {
	key, err := loadKey(filepath.Join(dir, KeyFile), true, cryptorand.Reader)
	if err != nil {
		return nil, err
	}
	k, err := hkdf.Key(sha256.New, key, nil, "sigil secrets key: "+purpose, 32)
	if err != nil {
		return nil, fmt.Errorf("secrets: derive key: %w", err)
	}
	return k, nil
}

// loadKey reads the key file, or creates it when create is set (a new
// store) and it does not exist.
func loadKey(path string, create bool, rand io.Reader) ([]byte, error) {
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		if !create {
			return nil, fmt.Errorf("secrets: key file %s is missing and the store holds secrets encrypted with it", path)
		}
		return createKey(path, rand)
	}
	if err != nil {
		return nil, fmt.Errorf("secrets: key file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("secrets: key file %s has mode %v: group or others can access it (want 0600)", path, fi.Mode().Perm())
	}
	key, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("secrets: key file: %w", err)
	}
	if len(key) != keySize {
		return nil, fmt.Errorf("secrets: key file %s holds %d bytes, want %d", path, len(key), keySize)
	}
	return key, nil
}

func createKey(path string, rand io.Reader) ([]byte, error) {
	key := make([]byte, keySize)
	if _, err := io.ReadFull(rand, key); err != nil {
		return nil, fmt.Errorf("secrets: create key: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("secrets: create key: %w", err)
	}
	_, err = f.Write(key)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("secrets: create key: %w", err)
	}
	return key, nil
}

// Close closes the file.
func (s *Store) Close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("secrets: close: %w", err)
	}
	return nil
}

// seal returns nonce || ciphertext.
func (s *Store) seal(plain, aad []byte) ([]byte, error) {
	nonce := make([]byte, s.aead.NonceSize())
	if _, err := io.ReadFull(s.rand, nonce); err != nil {
		return nil, fmt.Errorf("secrets: random: %w", err)
	}
	return s.aead.Seal(nonce, nonce, plain, aad), nil
}

func (s *Store) open(sealed, aad []byte) ([]byte, error) {
	n := s.aead.NonceSize()
	if len(sealed) < n+s.aead.Overhead() {
		return nil, ErrCorrupt
	}
	plain, err := s.aead.Open(nil, sealed[:n], sealed[n:], aad)
	if err != nil {
		return nil, ErrCorrupt
	}
	return plain, nil
}

// aad binds a ciphertext to its name and version.
func aad(name string, version int) []byte {
	b := append([]byte("sigil secret\x00"), name...)
	b = append(b, 0)
	return binary.BigEndian.AppendUint64(b, uint64(version))
}

func versionKey(v int) []byte { return binary.BigEndian.AppendUint64(nil, uint64(v)) }

// Put stores value (1 to MaxValue bytes) as a new version of the secret
// name (a wire.ValidID) for target, and returns the version: one more than
// the last version ever issued for name, so numbers are not reused after
// Delete.
func (s *Store) Put(ctx context.Context, name string, value []byte, target Target, pcrBound bool) (int, error) {
	if !wire.ValidID(name) {
		return 0, fmt.Errorf("secrets: put: name %q is not a valid ID", name)
	}
	if len(value) == 0 || len(value) > MaxValue {
		return 0, fmt.Errorf("secrets: put %s: value of %d bytes, want 1 to %d", name, len(value), MaxValue)
	}
	if err := target.validate(); err != nil {
		return 0, fmt.Errorf("secrets: put %s: %w", name, err)
	}
	var version int
	err := s.db.Update(ctx, func(tx kv.Tx) error {
		info, err := s.putTx(tx, name, value, target, pcrBound)
		if err == nil {
			version = info.Version
		}
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("secrets: put %s: %w", name, err)
	}
	s.log.Info("secrets: stored", "name", name, "version", version, "pcr_bound", pcrBound)
	return version, nil
}

// putTx stores value as the next version of name inside tx and returns
// what it stored (without the value).
func (s *Store) putTx(tx kv.Tx, name string, value []byte, target Target, pcrBound bool) (*Info, error) {
	seq := tx.Bucket(bucketVersions)
	version := 0
	if v := seq.Get([]byte(name)); len(v) == 8 {
		version = int(binary.BigEndian.Uint64(v))
	}
	version++
	sealed, err := s.seal(value, aad(name, version))
	if err != nil {
		return nil, err
	}
	n := s.aead.NonceSize()
	var grace config.Duration
	if r := rotationOf(tx, name); r != nil {
		grace = r.Grace
	}
	created := s.now().UTC()
	rec, err := json.Marshal(record{Target: target, PCRBound: pcrBound, Grace: grace, Created: created, Nonce: sealed[:n], Ciphertext: sealed[n:]})
	if err != nil {
		return nil, err
	}
	b, err := tx.Bucket(bucketSecrets).CreateBucketIfNotExists([]byte(name))
	if err != nil {
		return nil, err
	}
	if err := b.Put(versionKey(version), rec); err != nil {
		return nil, err
	}
	if err := seq.Put([]byte(name), versionKey(version)); err != nil {
		return nil, err
	}
	return &Info{Name: name, Version: version, Target: target, PCRBound: pcrBound, Created: created, Grace: grace}, nil
}

// Get returns the latest version of the secret name, or ErrNotFound.
func (s *Store) Get(ctx context.Context, name string) (*Secret, error) {
	return s.GetVersion(ctx, name, 0)
}

// GetVersion returns a version of the secret name (0: the latest), or
// ErrNotFound. A record that does not decrypt is refused with ErrCorrupt.
func (s *Store) GetVersion(ctx context.Context, name string, version int) (*Secret, error) {
	var out *Secret
	err := s.db.View(ctx, func(tx kv.Tx) error {
		b := tx.Bucket(bucketSecrets).Bucket([]byte(name))
		if b == nil {
			return ErrNotFound
		}
		var k, v []byte
		if version == 0 {
			k, v = b.Cursor().Last()
		} else {
			k, v = versionKey(version), b.Get(versionKey(version))
		}
		if v == nil {
			return ErrNotFound
		}
		info, rec, err := decodeRecord(name, k, v)
		if err != nil {
			return err
		}
		value, err := s.open(append(bytes.Clone(rec.Nonce), rec.Ciphertext...), aad(name, info.Version))
		if err != nil {
			return err
		}
		out = &Secret{Info: info, Value: value}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("secrets: get %s: %w", name, err)
	}
	return out, nil
}

func decodeRecord(name string, k, v []byte) (Info, *record, error) {
	var rec record
	if len(k) != 8 {
		return Info{}, nil, ErrCorrupt
	}
	if err := json.Unmarshal(v, &rec); err != nil {
		return Info{}, nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	return Info{Name: name, Version: int(binary.BigEndian.Uint64(k)), Target: rec.Target, PCRBound: rec.PCRBound, Created: rec.Created, Grace: rec.Grace}, &rec, nil
}

// List returns every secret's latest version and the versions kept,
// sorted by name. It never decrypts or returns values.
func (s *Store) List(ctx context.Context) ([]Listing, error) {
	var out []Listing
	err := s.db.View(ctx, func(tx kv.Tx) error {
		return tx.Bucket(bucketSecrets).ForEachBucket(func(name []byte) error {
			b := tx.Bucket(bucketSecrets).Bucket(name)
			var l Listing
			var infos []Info
			err := b.ForEach(func(k, v []byte) error {
				info, _, err := decodeRecord(string(name), k, v)
				if err != nil {
					return err
				}
				l.Info = info
				l.Versions = append(l.Versions, info.Version)
				infos = append(infos, info)
				return nil
			})
			if err != nil {
				return err
			}
			l.History = versionStates(infos, s.now())
			l.Rotation = rotationOf(tx, string(name))
			if len(l.Versions) > 0 {
				out = append(out, l)
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("secrets: list: %w", err)
	}
	slices.SortFunc(out, func(a, b Listing) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// Delete removes every version of the secret name, or returns ErrNotFound.
// Devices keep what they imported; the fleet stops delivering it.
func (s *Store) Delete(ctx context.Context, name string) error {
	err := s.db.Update(ctx, func(tx kv.Tx) error {
		root := tx.Bucket(bucketSecrets)
		if secretBucket(tx, name) == nil {
			return ErrNotFound
		}
		if b := tx.Bucket(bucketRotation); b != nil {
			if err := b.Delete([]byte(name)); err != nil {
				return err
			}
		}
		return root.DeleteBucket([]byte(name))
	})
	if err != nil {
		return fmt.Errorf("secrets: delete %s: %w", name, err)
	}
	s.log.Info("secrets: deleted", "name", name)
	return nil
}

// secretBucket returns the versions of name in tx, nil when there are
// none (PostgreSQL has no empty buckets: a missing one reads as empty).
func secretBucket(tx kv.Tx, name string) kv.Bucket {
	b := tx.Bucket(bucketSecrets).Bucket([]byte(name))
	if b == nil {
		return nil
	}
	if k, _ := b.Cursor().First(); k == nil {
		return nil
	}
	return b
}
