package boltdb

import bolt "go.etcd.io/bbolt"

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

// InFlight reports how many writes are in Write now: running, or waiting
// to join or commit a batch.
func (db *DB) InFlight() int { return int(db.inflight.Load()) }
