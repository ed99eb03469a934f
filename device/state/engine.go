package state

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Engine is the storage under a Store: buckets of keys in byte order,
// nested buckets, and transactions, as bbolt provides them. Every record
// the Store keeps, and all of its logic, sits above this interface, so an
// engine decides only where the bytes live.
//
// Open uses bbolt, the file format sigild has always written. A simulator
// running thousands of devices in one process gives New an engine in
// memory instead (package sim/memstate), so that a device costs kilobytes
// rather than a file and its open descriptor.
type Engine interface {
	// View runs fn in a read-only transaction: Tx.CreateBucketIfNotExists
	// and every write fail in it.
	View(fn func(Tx) error) error
	// Update runs fn in a read-write transaction. When fn returns nil the
	// transaction is committed (durably, for an engine on disk, before
	// Update returns); when it returns an error nothing it wrote remains,
	// and Update returns that error.
	Update(fn func(Tx) error) error
	// Close releases the engine. Transactions fail afterwards.
	Close() error
}

// Tx is a transaction's view of the top-level buckets.
type Tx interface {
	// Bucket returns the top-level bucket name, or nil when it does not
	// exist.
	Bucket(name []byte) Bucket
	// CreateBucketIfNotExists returns the top-level bucket name, creating
	// it first if needed (read-write transactions only).
	CreateBucketIfNotExists(name []byte) (Bucket, error)
}

// Bucket holds keys in byte order, each with a value or a nested bucket.
// Slices it returns are valid only during the transaction and must not be
// modified; a value given to Put must not be modified during it.
type Bucket interface {
	// Get returns the value of key, or nil when key holds no value.
	Get(key []byte) []byte
	// Put sets the value of key (not empty).
	Put(key, value []byte) error
	// Delete removes the value of key; a key that holds none is not an
	// error.
	Delete(key []byte) error
	// First returns the lowest key holding a value, and that value; nil,
	// nil when there is none.
	First() (key, value []byte)
	// Ascend calls fn for each key holding a value from the lowest key at
	// or after from (nil: the first), in order, until fn returns false or
	// an error; it returns that error. fn must not change the bucket.
	Ascend(from []byte, fn func(key, value []byte) (more bool, err error)) error
	// Bucket returns the nested bucket name, or nil when it does not
	// exist.
	Bucket(name []byte) Bucket
	// CreateBucketIfNotExists returns the nested bucket name, creating it
	// first if needed (read-write transactions only).
	CreateBucketIfNotExists(name []byte) (Bucket, error)
}

// ErrLocked is returned when another process holds the store.
var ErrLocked = errors.New("state: store is locked by another process (is sigild running?)")

// Options for Open.
type Options struct {
	ReadOnly bool
	Timeout  time.Duration // how long to wait for the file lock; 0 means 1s
}

// Open opens or creates the store in a bbolt file at path (mode 0600,
// parent 0700): New over OpenBolt.
func Open(path string, opts Options) (*Store, error) {
	e, err := OpenBolt(path, opts)
	if err != nil {
		return nil, err
	}
	s := New(e)
	if !opts.ReadOnly {
		if err := s.init(); err != nil {
			e.Close()
			return nil, err
		}
	}
	return s, nil
}

// OpenBolt opens or creates the bbolt file at path (mode 0600, parent
// 0700) as an Engine; the file is locked while it is open (ErrLocked when
// another process holds it past opts.Timeout).
func OpenBolt(path string, opts Options) (Engine, error) {
	if opts.Timeout == 0 {
		opts.Timeout = time.Second
	}
	if !opts.ReadOnly {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, fmt.Errorf("state: %w", err)
		}
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: opts.Timeout, ReadOnly: opts.ReadOnly})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, ErrLocked
		}
		return nil, fmt.Errorf("state: open %s: %w", path, err)
	}
	return boltEngine{db}, nil
}

// boltEngine is the Engine on a bbolt file.
type boltEngine struct{ db *bolt.DB }

func (e boltEngine) View(fn func(Tx) error) error {
	return e.db.View(func(tx *bolt.Tx) error { return fn(boltTx{tx}) })
}

func (e boltEngine) Update(fn func(Tx) error) error {
	return e.db.Update(func(tx *bolt.Tx) error { return fn(boltTx{tx}) })
}

func (e boltEngine) Close() error { return e.db.Close() }

type boltTx struct{ tx *bolt.Tx }

func (t boltTx) Bucket(name []byte) Bucket { return wrapBucket(t.tx.Bucket(name)) }

func (t boltTx) CreateBucketIfNotExists(name []byte) (Bucket, error) {
	b, err := t.tx.CreateBucketIfNotExists(name)
	if err != nil {
		return nil, err
	}
	return boltBucket{b}, nil
}

type boltBucket struct{ b *bolt.Bucket }

// wrapBucket keeps a missing bucket a nil interface.
func wrapBucket(b *bolt.Bucket) Bucket {
	if b == nil {
		return nil
	}
	return boltBucket{b}
}

func (b boltBucket) Get(key []byte) []byte       { return b.b.Get(key) }
func (b boltBucket) Put(key, value []byte) error { return b.b.Put(key, value) }
func (b boltBucket) Delete(key []byte) error     { return b.b.Delete(key) }
func (b boltBucket) Bucket(name []byte) Bucket   { return wrapBucket(b.b.Bucket(name)) }

func (b boltBucket) CreateBucketIfNotExists(name []byte) (Bucket, error) {
	nb, err := b.b.CreateBucketIfNotExists(name)
	if err != nil {
		return nil, err
	}
	return boltBucket{nb}, nil
}

func (b boltBucket) First() (key, value []byte) {
	c := b.b.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if v != nil { // nil: a nested bucket
			return k, v
		}
	}
	return nil, nil
}

func (b boltBucket) Ascend(from []byte, fn func(key, value []byte) (bool, error)) error {
	c := b.b.Cursor()
	var k, v []byte
	if from == nil {
		k, v = c.First()
	} else {
		k, v = c.Seek(from)
	}
	for ; k != nil; k, v = c.Next() {
		if v == nil {
			continue // a nested bucket
		}
		more, err := fn(k, v)
		if err != nil || !more {
			return err
		}
	}
	return nil
}
