package boltdb

import (
	bolt "go.etcd.io/bbolt"

	"github.com/sigil-iot/sigil/fleet/storage/internal/batch"
)

// Write runs fn in a read-write transaction, sharing fsyncs between
// concurrent writes (group commit): a lone write runs at once in its own
// transaction (no added latency); writes that arrive while another is in
// flight go through bbolt's Batch, which folds them into one transaction
// and one fsync after at most MaxDelay. fn may therefore run more than
// once (Batch retries the others when one fails): it must be idempotent,
// reading what it changes from the transaction.
func (db *DB) Write(fn func(*bolt.Tx) error) error {
	n := db.inflight.Add(1)
	defer db.inflight.Add(-1)
	if n > 1 {
		return db.Batch(fn)
	}
	return db.Update(fn)
}

// WriteAll runs fns, in order, in one read-write transaction — one commit
// and one fsync for all of them — and returns each one's error (nil for
// those that landed). A function that fails is left out and the others
// run again in a new transaction, so that each lands or fails on its own,
// as if written alone; as with Write, fns must therefore be idempotent. A
// failed commit fails every function it carried. For writes that a caller
// gathers on purpose (such as the verdicts of attestations judged within
// a few milliseconds of each other), where Write batches only writes that
// happen to overlap.
func (db *DB) WriteAll(fns []func(*bolt.Tx) error) []error {
	db.inflight.Add(1)
	defer db.inflight.Add(-1)
	return batch.Each(db.Update, fns)
}

// InFlight reports how many writes are in Write now: running, or waiting
// to join or commit a batch.
func (db *DB) InFlight() int { return int(db.inflight.Load()) }
