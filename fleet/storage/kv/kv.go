// Package kv is the storage engine of the fleet's stores that keep
// records under byte keys in named buckets (users, sessions, tokens,
// approvals, the audit log, …): ordered buckets read and written in
// transactions, with two backends behind one interface.
//
//   - Bolt keeps the buckets in a bbolt file opened with
//     fleet/storage/boltdb: the store's file and layout are exactly the
//     ones it had before this package (a bucket is a bbolt bucket).
//   - Postgres keeps them in a table of a PostgreSQL database
//     (fleet/storage/postgres): one row per key, (bucket, key) as primary
//     key, keys ordered bytewise as bbolt orders them, bucket sequences in
//     a second table. A transaction is one serializable PostgreSQL
//     transaction, retried when it fails to serialize.
//
// A store written against Tx therefore keeps, on PostgreSQL, the
// atomicity it had in one bbolt transaction. Functions given to Update
// and Write may run more than once (a retried PostgreSQL transaction, a
// bbolt batch): they must read what they change from the transaction and
// keep no state between runs other than what they overwrite.
//
// Buckets nest (Bucket.Bucket): in bbolt a nested bucket is a bbolt
// bucket in its parent, listed by the parent's ForEach and cursors as a
// key with a nil value; in PostgreSQL its rows are kept under its path
// (the names joined with a 0 byte), and its parent's ForEach and cursors
// do not list it. A store therefore keeps keys and nested buckets in
// different buckets, and bucket names hold no 0 byte.
//
// The store's PostgreSQL tables come from its own migrations (Schema
// gives the statements every kv table needs).
package kv

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"slices"
	"time"

	"github.com/sigil-iot/sigil/fleet/storage/internal/batch"
)

// DB is a store's buckets.
type DB interface {
	// View runs fn in a read-only transaction that sees one snapshot.
	View(ctx context.Context, fn func(Tx) error) error
	// Update runs fn in a read-write transaction and commits it when fn
	// returns nil.
	Update(ctx context.Context, fn func(Tx) error) error
	// Write is Update for frequent small writes: bbolt shares one
	// transaction and fsync between concurrent ones (group commit).
	Write(ctx context.Context, fn func(Tx) error) error
	// Close releases what the DB holds (the bbolt file; a PostgreSQL DB
	// leaves the shared pool open).
	Close() error
}

// Tx is one transaction.
type Tx interface {
	// Bucket returns the bucket name; nil when a bbolt file has no such
	// bucket (PostgreSQL buckets always exist, empty until written).
	Bucket(name []byte) Bucket
	// CreateBucketIfNotExists returns the bucket name, creating it in a
	// bbolt file.
	CreateBucketIfNotExists(name []byte) (Bucket, error)
	// ForEachBucket calls fn with the name of every bucket, in order (in
	// PostgreSQL: every bucket holding a key or a sequence).
	ForEachBucket(fn func(name []byte) error) error
	// Lock holds the lock name until the transaction ends: transactions
	// taking the same lock run one after the other across every process
	// sharing the database (an advisory lock). bbolt has one writer: it
	// is a no-op there.
	Lock(name string) error
}

// Bucket is an ordered map of byte keys to byte values. Values returned
// are valid until the transaction ends; a nil value means no key.
type Bucket interface {
	Get(key []byte) []byte
	Put(key, value []byte) error
	Delete(key []byte) error
	// ForEach calls fn for every key in order; fn must not change the
	// bucket.
	ForEach(fn func(k, v []byte) error) error
	Cursor() Cursor
	// Len returns how many keys the bucket holds.
	Len() int
	// NextSequence increments and returns the bucket's sequence.
	NextSequence() (uint64, error)
	// Sequence returns the bucket's sequence.
	Sequence() uint64
	// SetSequence sets it (sigil migrate).
	SetSequence(uint64) error

	// Bucket returns the nested bucket name; nil when a bbolt bucket
	// holds no such bucket (in PostgreSQL a nested bucket always exists,
	// empty until written).
	Bucket(name []byte) Bucket
	// CreateBucketIfNotExists returns the nested bucket name, creating it
	// in a bbolt file.
	CreateBucketIfNotExists(name []byte) (Bucket, error)
	// DeleteBucket deletes the nested bucket name with its keys and the
	// buckets nested in it (bbolt: an error when there is none).
	DeleteBucket(name []byte) error
	// ForEachBucket calls fn with the name of every nested bucket, in
	// order (in PostgreSQL: every one holding a key or a sequence).
	ForEachBucket(fn func(name []byte) error) error
}

// Cursor moves over a bucket's keys in order. Each move returns the key
// and value it lands on, nil when there is none.
type Cursor interface {
	First() (k, v []byte)
	Last() (k, v []byte)
	Next() (k, v []byte)
	Prev() (k, v []byte)
	// Seek moves to key, or the first key after it.
	Seek(key []byte) (k, v []byte)
	// Delete removes the key the cursor is on.
	Delete() error
}

// Now returns the database's clock in tx when the backend is shared
// between processes (PostgreSQL: the time of the statement it runs,
// UTC), so that stores whose records compare times written by several
// replicas compare them on one clock whatever each replica's clock says;
// ok is false for bbolt, whose one process uses its own clock.
func Now(tx Tx) (now time.Time, ok bool, err error) {
	c, ok := tx.(interface{ clock() (time.Time, error) })
	if !ok {
		return time.Time{}, false, nil
	}
	now, err = c.clock()
	return now, err == nil, err
}

// WriteAll runs fns, in order, in one read-write transaction of db (one
// commit and one fsync for all of them in a bbolt file) and returns each
// one's error (nil for those that landed). A function that fails is left
// out and the others run again in a new transaction, so that each lands
// or fails on its own, as if written alone; like those given to Write,
// fns may run more than once. A failed commit fails every function it
// carried. For writes that a caller gathers on purpose (the verdicts of
// attestations judged within a few milliseconds of each other), where
// Write batches only writes that happen to overlap.
func WriteAll(ctx context.Context, db DB, fns []func(Tx) error) []error {
	return batch.Each(func(fn func(Tx) error) error { return db.Update(ctx, fn) }, fns)
}

// Schema returns the statements that create the tables of a kv store in
// PostgreSQL, for the store's first migration: table (keys) and
// table_seq (sequences). Stores keep the statements in their own
// migration files (their tests check that they match).
func Schema(table string) string {
	return fmt.Sprintf(`CREATE TABLE %[1]s (
	bucket bytea NOT NULL,
	key    bytea NOT NULL,
	value  bytea NOT NULL,
	PRIMARY KEY (bucket, key)
);
CREATE TABLE %[1]s_seq (
	bucket bytea PRIMARY KEY,
	seq    bigint NOT NULL
);
`, table)
}

// Stats counts what Copy copied or Digest read.
type Stats struct {
	Keys   map[string]int // by bucket
	Digest [32]byte       // SHA-256 over the buckets' names, keys, values and sequences in order
}

// Buckets returns the names of db's buckets (Tx.ForEachBucket).
func Buckets(ctx context.Context, db DB) ([][]byte, error) {
	var out [][]byte
	err := db.View(ctx, func(tx Tx) error {
		out = nil
		return tx.ForEachBucket(func(name []byte) error {
			out = append(out, bytes.Clone(name))
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("kv: buckets: %w", err)
	}
	return out, nil
}

// Digest reads buckets in one read transaction of db and returns their
// key counts (a bucket's count includes the keys of the buckets nested in
// it) and a digest of their contents, equal on both backends for equal
// contents.
func Digest(ctx context.Context, db DB, buckets [][]byte) (Stats, error) {
	st := Stats{Keys: map[string]int{}}
	h := sha256.New()
	field := func(b []byte) {
		h.Write(binary.BigEndian.AppendUint64(nil, uint64(len(b))))
		h.Write(b)
	}
	// visit digests the bucket b at path, then the buckets nested in it.
	var visit func(top string, path []byte, b Bucket) error
	visit = func(top string, path []byte, b Bucket) error {
		children, err := nested(b)
		if err != nil {
			return err
		}
		// A missing bucket, and an empty one whose sequence is 0, digest
		// as nothing: bbolt keeps empty buckets, PostgreSQL has no rows
		// for them.
		seq := b.Sequence()
		n := 0
		c := b.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if v == nil && children.has(k) {
				continue // a nested bucket (bbolt), digested below
			}
			if n == 0 {
				field(path)
			}
			n++
			field(k)
			field(v)
		}
		if n > 0 || seq != 0 {
			if n == 0 {
				field(path)
			}
			h.Write(binary.BigEndian.AppendUint64(nil, seq))
			st.Keys[top] += n
		}
		for _, name := range children {
			if sub := b.Bucket(name); sub != nil {
				if err := visit(top, append(append(bytes.Clone(path), 0), name...), sub); err != nil {
					return err
				}
			}
		}
		return nil
	}
	err := db.View(ctx, func(tx Tx) error {
		h.Reset()
		clear(st.Keys)
		for _, name := range buckets {
			b := tx.Bucket(name)
			if b == nil {
				continue
			}
			if err := visit(string(name), name, b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return Stats{}, fmt.Errorf("kv: digest: %w", err)
	}
	h.Sum(st.Digest[:0])
	return st, nil
}

// names are bucket names.
type names [][]byte

func (ns names) has(name []byte) bool {
	_, ok := slices.BinarySearchFunc(ns, name, bytes.Compare)
	return ok
}

// nested returns the names of the buckets nested in b, in order.
func nested(b Bucket) (names, error) {
	var out names
	err := b.ForEachBucket(func(name []byte) error {
		out = append(out, bytes.Clone(name))
		return nil
	})
	return out, err
}

// at returns the bucket at path (top-level name, then nested names) in
// tx, creating it when create is set; nil when it does not exist.
func at(tx Tx, path [][]byte, create bool) (Bucket, error) {
	var b Bucket
	for i, name := range path {
		var err error
		switch {
		case i == 0 && create:
			b, err = tx.CreateBucketIfNotExists(name)
		case i == 0:
			b = tx.Bucket(name)
		case create:
			b, err = b.CreateBucketIfNotExists(name)
		default:
			b = b.Bucket(name)
		}
		if err != nil || b == nil {
			return nil, err
		}
	}
	return b, nil
}

// Empty reports whether every one of buckets is empty (or missing) in db
// (buckets nil: every bucket of db), nested buckets included.
func Empty(ctx context.Context, db DB, buckets [][]byte) (bool, error) {
	if buckets == nil {
		var err error
		if buckets, err = Buckets(ctx, db); err != nil {
			return false, err
		}
	}
	empty := true
	err := db.View(ctx, func(tx Tx) error {
		for _, name := range buckets {
			b := tx.Bucket(name)
			if b == nil {
				continue
			}
			if k, _ := b.Cursor().First(); k != nil {
				empty = false
			}
			children, err := nested(b)
			if err != nil {
				return err
			}
			if len(children) > 0 {
				empty = false
			}
		}
		return nil
	})
	return empty, err
}

// copyBatch bounds the keys Copy writes per transaction.
const copyBatch = 1000

// Copy copies buckets from src to dst, with the buckets nested in them:
// every key, replacing what dst holds under the same key (what dst holds
// under other keys stays), and each bucket's sequence (dst's is set to
// src's). It returns the digest of what it read from src (Digest);
// compare it with Digest of dst to verify the copy.
//
// buckets nil copies every bucket of src (Buckets).
func Copy(ctx context.Context, dst, src DB, buckets [][]byte) (Stats, error) {
	if buckets == nil {
		var err error
		if buckets, err = Buckets(ctx, src); err != nil {
			return Stats{}, err
		}
	}
	for _, name := range buckets {
		if err := copyBucket(ctx, dst, src, [][]byte{name}); err != nil {
			return Stats{}, err
		}
	}
	return Digest(ctx, src, buckets)
}

// copyBucket copies the bucket at path, then the buckets nested in it.
func copyBucket(ctx context.Context, dst, src DB, path [][]byte) error {
	var after []byte
	var children names
	first := true
	for {
		type kvp struct{ k, v []byte }
		var page []kvp
		var seq uint64
		more := false
		err := src.View(ctx, func(tx Tx) error {
			page, more = page[:0], false
			b, err := at(tx, path, false)
			if err != nil || b == nil {
				return err
			}
			if first {
				if children, err = nested(b); err != nil {
					return err
				}
			}
			seq = b.Sequence()
			c := b.Cursor()
			var k, v []byte
			if first {
				k, v = c.First()
			} else if k, v = c.Seek(after); k != nil && bytes.Equal(k, after) {
				k, v = c.Next()
			}
			for read := 0; k != nil; k, v = c.Next() {
				if read == copyBatch {
					more = true
					break
				}
				read++
				after = bytes.Clone(k)
				if v == nil && children.has(k) {
					continue // a nested bucket (bbolt), copied below
				}
				page = append(page, kvp{bytes.Clone(k), bytes.Clone(v)})
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("kv: copy %s: read: %w", bytes.Join(path, []byte("/")), err)
		}
		err = dst.Update(ctx, func(tx Tx) error {
			b, err := at(tx, path, true)
			if err != nil {
				return err
			}
			for _, p := range page {
				v := p.v
				if v == nil {
					v = []byte{}
				}
				if err := b.Put(p.k, v); err != nil {
					return err
				}
			}
			if first && seq != b.Sequence() {
				return b.SetSequence(seq)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("kv: copy %s: write: %w", bytes.Join(path, []byte("/")), err)
		}
		first = false
		if !more {
			break
		}
	}
	for _, name := range children {
		if err := copyBucket(ctx, dst, src, append(slices.Clip(path), name)); err != nil {
			return err
		}
	}
	return nil
}

// DigestAll is Digest of every bucket of db.
func DigestAll(ctx context.Context, db DB) (Stats, error) {
	buckets, err := Buckets(ctx, db)
	if err != nil {
		return Stats{}, err
	}
	return Digest(ctx, db, buckets)
}

// Clear deletes every key and nested bucket of buckets in db (buckets
// nil: every bucket of db) and sets their sequences to 0, in transactions of copyBatch keys.
func Clear(ctx context.Context, db DB, buckets [][]byte) error {
	if buckets == nil {
		var err error
		if buckets, err = Buckets(ctx, db); err != nil {
			return err
		}
	}
	for _, name := range buckets {
		if err := db.Update(ctx, func(tx Tx) error {
			b := tx.Bucket(name)
			if b == nil {
				return nil
			}
			children, err := nested(b)
			if err != nil {
				return err
			}
			for _, c := range children {
				if err := b.DeleteBucket(c); err != nil {
					return err
				}
			}
			if b.Sequence() != 0 {
				return b.SetSequence(0)
			}
			return nil
		}); err != nil {
			return fmt.Errorf("kv: clear %s: %w", name, err)
		}
		for more := true; more; {
			err := db.Update(ctx, func(tx Tx) error {
				b := tx.Bucket(name)
				if b == nil {
					more = false
					return nil
				}
				var keys [][]byte
				c := b.Cursor()
				for k, _ := c.First(); k != nil && len(keys) < copyBatch; k, _ = c.Next() {
					keys = append(keys, bytes.Clone(k))
				}
				more = len(keys) == copyBatch
				for _, k := range keys {
					if err := b.Delete(k); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				return fmt.Errorf("kv: clear %s: %w", name, err)
			}
		}
	}
	return nil
}
