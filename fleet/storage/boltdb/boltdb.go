// Package boltdb opens the fleet's bbolt files, the embedded default
// backend of its stores: one way to open and lock a file, to create its
// buckets, to check and migrate its schema version, and one group-commit
// writer (DB.Write).
//
// Each store keeps its own file and layout (buckets, records); this
// package knows none of them. A store describes its layout with a Schema
// and opens its file with Open:
//
//	db, err := boltdb.Open(path, boltdb.Schema{
//		Buckets: [][]byte{[]byte("devices")},
//		Version: 2,
//		Steps:   []boltdb.Step{{Version: 2, Apply: buildIndexes}},
//	}, boltdb.Options{Name: "inventory", Locked: ErrLocked})
//
// The schema version lives in the bucket "meta" under the key "schema", as
// 8 bytes big-endian (Schema.ByteVersion: one byte, the audit log's
// format), so files written before this package existed open unchanged.
package boltdb

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Errors. Compare with errors.Is.
var (
	// ErrLocked: another process holds the file (Options.Locked replaces
	// it with the store's own sentinel).
	ErrLocked = errors.New("boltdb: file locked by another process")
	// ErrSchema: the file's schema version is newer than the build reads,
	// malformed, or older with no migration to this build's version.
	ErrSchema = errors.New("boltdb: unsupported schema version")
)

var (
	bucketMeta = []byte("meta")
	keySchema  = []byte("schema")
)

// Options configures Open.
type Options struct {
	// Name starts the errors Open returns ("inventory: open …"); default
	// "boltdb".
	Name string
	// Timeout bounds the wait for the file lock; zero means 1 second.
	Timeout time.Duration
	// NoSync skips fsync on commit: faster, and a power loss may lose
	// recent commits (never consistency). For tests and benchmarks.
	NoSync bool
	// Locked is the error Open wraps when another process holds the file
	// (nil: ErrLocked).
	Locked error
}

// Schema describes a file's layout to Open.
type Schema struct {
	// Buckets are created when missing.
	Buckets [][]byte
	// Version is the schema version this build writes, kept in the bucket
	// "meta" (created with it); 0 when the file records none.
	Version uint64
	// ByteVersion stores the version as one byte instead of 8 big-endian.
	ByteVersion bool
	// Steps migrate a file written by an older schema, in order: each
	// step whose Version is above the file's runs (every step for a file
	// that records no version yet: a new file, or one from before
	// versions), then the file records Version. A file that records an
	// older version than a step between it and Version covers is refused
	// (ErrSchema).
	Steps []Step
	// Init, when set, runs last in the opening transaction (a check of
	// the file's content, a conversion that needs no version).
	Init func(tx *bolt.Tx) error
}

// Step is one schema migration.
type Step struct {
	Version uint64 // the version the file has once Apply ran
	Apply   func(tx *bolt.Tx) error
}

// MaxDelay is how long a batched write waits for others to join it
// (DB.Write).
const MaxDelay = time.Millisecond

// DB is an open bbolt file: the bbolt handle itself (View, Update, Batch)
// and the group-commit writer. A file opened with Open is listed for Held
// until Close.
type DB struct {
	*bolt.DB
	inflight atomic.Int64 // writes in Write
}

// Open opens or creates the file at path (mode 0600), creates the
// schema's buckets and brings its version up to date, in one transaction.
func Open(path string, s Schema, o Options) (*DB, error) {
	if o.Name == "" {
		o.Name = "boltdb"
	}
	if o.Timeout <= 0 {
		o.Timeout = time.Second
	}
	if o.Locked == nil {
		o.Locked = ErrLocked
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: o.Timeout, NoSync: o.NoSync})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("%w: %s", o.Locked, path)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: open %s: %w", o.Name, path, err)
	}
	if err := db.Update(s.apply); err != nil {
		db.Close()
		return nil, fmt.Errorf("%s: initialize %s: %w", o.Name, path, err)
	}
	db.MaxBatchDelay = MaxDelay
	h := &DB{DB: db}
	hold(h, path)
	return h, nil
}

// apply creates the buckets and migrates.
func (s Schema) apply(tx *bolt.Tx) error {
	for _, name := range s.Buckets {
		if _, err := tx.CreateBucketIfNotExists(name); err != nil {
			return err
		}
	}
	if s.Version > 0 {
		if err := s.migrate(tx); err != nil {
			return err
		}
	}
	if s.Init != nil {
		return s.Init(tx)
	}
	return nil
}

func (s Schema) migrate(tx *bolt.Tx) error {
	meta, err := tx.CreateBucketIfNotExists(bucketMeta)
	if err != nil {
		return err
	}
	v := meta.Get(keySchema)
	stored, recorded := uint64(0), v != nil
	if recorded {
		if stored, err = s.decode(v); err != nil {
			return err
		}
	}
	switch {
	case stored > s.Version:
		return fmt.Errorf("%w %d (this build reads up to %d)", ErrSchema, stored, s.Version)
	case stored == s.Version:
		return nil
	}
	at := stored
	for _, st := range s.Steps {
		if st.Version <= stored {
			continue
		}
		if recorded && st.Version > at+1 {
			return fmt.Errorf("%w %d: no migration to %d", ErrSchema, at, at+1)
		}
		if err := st.Apply(tx); err != nil {
			return fmt.Errorf("migrate to schema %d: %w", st.Version, err)
		}
		at = st.Version
	}
	if recorded && at != s.Version {
		return fmt.Errorf("%w %d: no migration to %d", ErrSchema, at, s.Version)
	}
	return meta.Put(keySchema, s.encode(s.Version))
}

func (s Schema) decode(v []byte) (uint64, error) {
	switch {
	case s.ByteVersion && len(v) == 1:
		return uint64(v[0]), nil
	case !s.ByteVersion && len(v) == 8:
		return binary.BigEndian.Uint64(v), nil
	}
	return 0, fmt.Errorf("%w %x", ErrSchema, v)
}

func (s Schema) encode(n uint64) []byte {
	if s.ByteVersion {
		return []byte{byte(n)}
	}
	return binary.BigEndian.AppendUint64(nil, n)
}

// VersionOf returns the schema version the file records (0 for none),
// read with s's encoding.
func (s Schema) VersionOf(tx *bolt.Tx) (uint64, error) {
	meta := tx.Bucket(bucketMeta)
	if meta == nil {
		return 0, nil
	}
	v := meta.Get(keySchema)
	if v == nil {
		return 0, nil
	}
	return s.decode(v)
}

// OpenReadOnly opens the existing file at path for reading only (View),
// sharing its lock with other readers: it fails with o.Locked while a
// process holds the file for writing (a running fleet), and with an
// error wrapping fs.ErrNotExist when there is no file.
func OpenReadOnly(path string, o Options) (*DB, error) {
	if o.Name == "" {
		o.Name = "boltdb"
	}
	if o.Timeout <= 0 {
		o.Timeout = time.Second
	}
	if o.Locked == nil {
		o.Locked = ErrLocked
	}
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("%s: open %s: %w", o.Name, path, err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: o.Timeout, ReadOnly: true})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("%w: %s", o.Locked, path)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: open %s: %w", o.Name, path, err)
	}
	return &DB{DB: db}, nil
}
