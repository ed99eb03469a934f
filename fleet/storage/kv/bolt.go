package kv

import (
	"context"

	bolt "go.etcd.io/bbolt"

	"github.com/sigil-iot/sigil/fleet/storage/boltdb"
)

// Bolt returns db as a DB; Close closes the file. bbolt transactions
// cannot be canceled: the contexts are ignored, as the stores ignored
// them before.
func Bolt(db *boltdb.DB) DB { return boltDB{db} }

type boltDB struct{ db *boltdb.DB }

func (b boltDB) View(_ context.Context, fn func(Tx) error) error {
	return b.db.View(func(tx *bolt.Tx) error { return fn(boltTx{tx}) })
}

func (b boltDB) Update(_ context.Context, fn func(Tx) error) error {
	return b.db.Update(func(tx *bolt.Tx) error { return fn(boltTx{tx}) })
}

func (b boltDB) Write(_ context.Context, fn func(Tx) error) error {
	return b.db.Write(func(tx *bolt.Tx) error { return fn(boltTx{tx}) })
}

func (b boltDB) Close() error { return b.db.Close() }

type boltTx struct{ tx *bolt.Tx }

func (t boltTx) Bucket(name []byte) Bucket {
	b := t.tx.Bucket(name)
	if b == nil {
		return nil
	}
	return boltBucket{b}
}

func (boltTx) Lock(string) error { return nil }

func (t boltTx) CreateBucketIfNotExists(name []byte) (Bucket, error) {
	b, err := t.tx.CreateBucketIfNotExists(name)
	if err != nil {
		return nil, err
	}
	return boltBucket{b}, nil
}

func (t boltTx) ForEachBucket(fn func(name []byte) error) error {
	return t.tx.ForEach(func(name []byte, _ *bolt.Bucket) error { return fn(name) })
}

type boltBucket struct{ b *bolt.Bucket }

func (b boltBucket) Get(key []byte) []byte                    { return b.b.Get(key) }
func (b boltBucket) Put(key, value []byte) error              { return b.b.Put(key, value) }
func (b boltBucket) Delete(key []byte) error                  { return b.b.Delete(key) }
func (b boltBucket) ForEach(fn func(k, v []byte) error) error { return b.b.ForEach(fn) }
func (b boltBucket) Cursor() Cursor                           { return b.b.Cursor() }
func (b boltBucket) Len() int                                 { return b.b.Stats().KeyN }
func (b boltBucket) NextSequence() (uint64, error)            { return b.b.NextSequence() }
func (b boltBucket) Sequence() uint64                         { return b.b.Sequence() }
func (b boltBucket) SetSequence(n uint64) error               { return b.b.SetSequence(n) }
func (b boltBucket) DeleteBucket(name []byte) error           { return b.b.DeleteBucket(name) }

func (b boltBucket) ForEachBucket(fn func(name []byte) error) error {
	return b.b.ForEachBucket(fn)
}

func (b boltBucket) Bucket(name []byte) Bucket {
	n := b.b.Bucket(name)
	if n == nil {
		return nil
	}
	return boltBucket{n}
}

func (b boltBucket) CreateBucketIfNotExists(name []byte) (Bucket, error) {
	n, err := b.b.CreateBucketIfNotExists(name)
	if err != nil {
		return nil, err
	}
	return boltBucket{n}, nil
}
