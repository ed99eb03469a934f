package pgtest

import (
	"context"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/storage/lease"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
	"github.com/sigil-iot/sigil/internal/wait"
)

// OpenBackend opens the store of a conformance suite's test: with pg,
// on the database that key stands for, when t runs under Conformance
// (see Database); with bolt otherwise. cfg is passed to either.
func OpenBackend[S, C any](t testing.TB, key string, cfg C, bolt func(C) (S, error), pg func(context.Context, *postgres.DB, C) (S, error)) (S, error) {
	t.Helper()
	db, ok := Database(t, key)
	if !ok {
		return bolt(cfg)
	}
	return pg(context.Background(), db, cfg)
}

// Replica opens, with open, one replica's store on the database at url
// (one of NewDatabase's) through a connection of its own (Open). It
// fails t if open fails, and closes the store when t ends.
func Replica[S io.Closer](t testing.TB, url string, open func(*postgres.DB) (S, error)) S {
	t.Helper()
	s, err := open(Open(t, url))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// Lease opens the leases of replica i on db: holder "replica-i", with a
// TTL of three seconds, long enough that a loaded test machine does not
// lose it between renewals. It fails t if it cannot.
func Lease(t testing.TB, db *postgres.DB, i int) *lease.Postgres {
	t.Helper()
	ls, err := lease.Open(t.Context(), db, lease.Config{Holder: fmt.Sprintf("replica-%d", i), TTL: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return ls
}

// Leased is work that replicas sharing a database do under a lease: the
// holder of the lease does it, the others not.
type Leased struct {
	// Run runs replica i until ctx ends (its Run method).
	Run []func(ctx context.Context) error
	// Done says how much of the work replica i has done so far.
	Done func(i int) int64
	// Enough is how much work, by all replicas, shows who holds the
	// lease (the first check waits for it).
	Enough int64
	// Work names the work for the failure messages ("re-sent the open
	// alert"); Unit names its units ("repeats").
	Work, Unit string
}

// OneHolder runs every replica of w at once (two of them), waits until
// they have done w.Enough work, and fails t unless one replica did all of
// it. It then runs then (if not nil), stops the replica that held the
// lease, and waits for the other one to take the work over. The replicas
// stop when t ends.
func OneHolder(t *testing.T, w Leased, then func()) {
	t.Helper()
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	cancels := make([]context.CancelFunc, len(w.Run))
	for i, run := range w.Run {
		ctx, cancel := context.WithCancel(t.Context())
		cancels[i] = cancel
		t.Cleanup(cancel)
		wg.Go(func() {
			if err := run(ctx); err != nil {
				t.Errorf("replica %d: Run: %v", i, err)
			}
		})
	}
	wait.For(t, fmt.Sprintf("%d %s", w.Enough, w.Unit), func() bool { return w.Done(0)+w.Done(1) >= w.Enough })
	holder := 0
	if w.Done(1) > 0 {
		holder = 1
	}
	other := 1 - holder
	if w.Done(other) != 0 {
		t.Fatalf("both replicas %s: %d and %d %s", w.Work, w.Done(0), w.Done(1), w.Unit)
	}
	if then != nil {
		then()
	}
	cancels[holder]()
	wait.For(t, "the other replica to take over", func() bool { return w.Done(other) > 0 })
}
