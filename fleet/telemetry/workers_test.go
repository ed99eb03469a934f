package telemetry

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// barrierCursors holds every SetCursor until n of them are in flight at
// once: a store whose commits are slow (bbolt waits to fold concurrent
// writes into one fsync) and serve many writers at a time.
type barrierCursors struct {
	n       int
	mu      sync.Mutex
	waiting int
	release chan struct{}
	stop    <-chan struct{}
}

func (b *barrierCursors) Cursor(context.Context, string) (Cursor, bool, error) {
	return Cursor{}, false, nil
}

func (b *barrierCursors) SetCursor(context.Context, string, Cursor) error {
	b.mu.Lock()
	b.waiting++
	if b.waiting == b.n {
		close(b.release)
	}
	b.mu.Unlock()
	select {
	case <-b.release:
		return nil
	case <-b.stop:
		return context.Canceled
	}
}

// TestRunIngestsConcurrently: Run ingests on many goroutines, so that
// batches whose cursor writes wait on the store's commit overlap. The
// fleet ran four: at 19,900 devices reporting every minute (330 batches a
// second) cursor writes of 10–20 ms each held ingestion to about 270 a
// second, and half the batches found the queue full and were sent again
// (sigil-sim bench fleet, docs/BENCHMARKS.md §10).
func TestRunIngestsConcurrently(t *testing.T) {
	const concurrent = 16
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cur := &barrierCursors{n: concurrent, release: make(chan struct{}), stop: ctx.Done()}
	acks := make(chan string, concurrent)
	in, _ := newIngester(t, Config{Cursors: cur, Send: func(id, _ string, _ []byte) error { acks <- id; return nil }})
	for i := range concurrent {
		in.Submit(fmt.Sprintf("dev-%d", i), envelope(t, batch(streamA, 1, 1, 0, 0), t0))
	}
	done := make(chan error, 1)
	go func() { done <- in.Run(ctx) }()
	deadline := time.After(30 * time.Second)
	for i := range concurrent {
		select {
		case <-acks:
		case <-deadline:
			cur.mu.Lock()
			t.Fatalf("%d of %d batches acknowledged: %d cursor writes in flight at most", i, concurrent, cur.waiting)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
