// Package groupcommit shares fsyncs between concurrent bbolt writes.
//
// A lone write runs at once in its own transaction (no added latency).
// Writes that arrive while another is in flight go through bolt's Batch,
// which folds them into one transaction and one fsync after a short
// delay. Functions passed to Write may therefore run more than once (Batch
// retries the others when one fails): they must be idempotent, reading
// what they change from the transaction.
package groupcommit

import (
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
)

// MaxDelay is how long a batched write waits for others to join it.
const MaxDelay = time.Millisecond

// Writer writes to one database.
type Writer struct {
	db       *bolt.DB
	inflight atomic.Int64
}

// New returns a Writer for db and sets db's batch delay to MaxDelay.
func New(db *bolt.DB) *Writer {
	db.MaxBatchDelay = MaxDelay
	return &Writer{db: db}
}

// Write runs fn in a read-write transaction, alone or batched with
// concurrent writes.
func (w *Writer) Write(fn func(*bolt.Tx) error) error {
	n := w.inflight.Add(1)
	defer w.inflight.Add(-1)
	if n > 1 {
		return w.db.Batch(fn)
	}
	return w.db.Update(fn)
}

// InFlight reports how many writes are in Write now: running, or waiting
// to join or commit a batch.
func (w *Writer) InFlight() int { return int(w.inflight.Load()) }
