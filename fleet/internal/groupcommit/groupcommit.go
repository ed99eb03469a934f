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
	"slices"
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

// WriteAll runs fns, in order, in one read-write transaction — one commit
// and one fsync for all of them — and returns each one's error (nil for
// those that landed). A function that fails is left out and the others
// run again in a new transaction, so that each lands or fails on its own,
// as if written alone; as with Write, fns must therefore be idempotent. A
// failed commit fails every function it carried. For writes that a caller
// gathers on purpose (such as the verdicts of attestations judged within
// a few milliseconds of each other), where Write batches only writes that
// happen to overlap.
func (w *Writer) WriteAll(fns []func(*bolt.Tx) error) []error {
	w.inflight.Add(1)
	defer w.inflight.Add(-1)
	errs := make([]error, len(fns))
	todo := make([]int, len(fns))
	for i := range todo {
		todo[i] = i
	}
	for len(todo) > 0 {
		failed := -1
		err := w.db.Update(func(tx *bolt.Tx) error {
			for k, i := range todo {
				if err := fns[i](tx); err != nil {
					failed, errs[i] = k, err
					return err
				}
			}
			return nil
		})
		if failed >= 0 {
			todo = slices.Delete(todo, failed, failed+1)
			continue
		}
		for _, i := range todo {
			errs[i] = err
		}
		break
	}
	return errs
}

// InFlight reports how many writes are in Write now: running, or waiting
// to join or commit a batch.
func (w *Writer) InFlight() int { return int(w.inflight.Load()) }
