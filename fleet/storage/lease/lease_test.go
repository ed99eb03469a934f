package lease_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/storage/lease"
	"github.com/sigil-iot/sigil/fleet/storage/pgtest"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
	"github.com/sigil-iot/sigil/internal/leaktest"
	"github.com/sigil-iot/sigil/internal/wait"
)

// TestMain fails the tests when a goroutine outlives them: Hold must
// leave nothing running once its context is done.
func TestMain(m *testing.M) { leaktest.Main(m) }

// replicas opens n lease holders on one database, as n replicas would.
func replicas(t *testing.T, n int, ttl time.Duration) ([]*lease.Postgres, string) {
	t.Helper()
	srv := pgtest.Start(t)
	url := srv.NewDatabase(t)
	var out []*lease.Postgres
	for i := range n {
		db := pgtest.Open(t, url)
		p, err := lease.Open(t.Context(), db, lease.Config{Holder: string(rune('a' + i)), TTL: ttl})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, p)
	}
	return out, url
}

// TestOneHolderAtATime: a held lease is refused to another holder until
// it is released; the next holder gets a greater epoch, and the first
// one's renewal then fails with ErrLost.
func TestOneHolderAtATime(t *testing.T) {
	r, _ := replicas(t, 2, time.Hour)
	ctx := t.Context()
	a, ok, err := r[0].TryAcquire(ctx, "sweep")
	if err != nil || !ok {
		t.Fatalf("first acquire: ok %v, err %v", ok, err)
	}
	if _, ok, err := r[1].TryAcquire(ctx, "sweep"); err != nil || ok {
		t.Fatalf("second holder took a held lease: ok %v, err %v", ok, err)
	}
	if _, ok, err := r[1].TryAcquire(ctx, "other"); err != nil || !ok {
		t.Fatalf("another lease: ok %v, err %v", ok, err)
	}
	if err := r[0].Renew(ctx, a); err != nil {
		t.Fatalf("renew by its holder: %v", err)
	}
	if err := r[0].Release(ctx, a); err != nil {
		t.Fatal(err)
	}
	b, ok, err := r[1].TryAcquire(ctx, "sweep")
	if err != nil || !ok {
		t.Fatalf("acquire after release: ok %v, err %v", ok, err)
	}
	if b.Epoch <= a.Epoch {
		t.Errorf("epoch %d after %d: a new holder must get a greater one", b.Epoch, a.Epoch)
	}
	if err := r[0].Renew(ctx, a); !errors.Is(err, lease.ErrLost) {
		t.Errorf("renewal of a lease taken over: %v, want ErrLost", err)
	}
}

// TestExpiredLeaseIsTakenOver: a holder that stops renewing (dead)
// loses its lease once it expires, and another replica's Hold runs the
// work.
func TestExpiredLeaseIsTakenOver(t *testing.T) {
	r, _ := replicas(t, 2, 600*time.Millisecond)
	dead, ok, err := r[0].TryAcquire(t.Context(), "waves")
	if err != nil || !ok {
		t.Fatalf("acquire: ok %v, err %v", ok, err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	ran := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- r[1].Hold(ctx, "waves", func(ctx context.Context) error {
			close(ran)
			<-ctx.Done()
			return nil
		})
	}()
	select {
	case <-ran:
	case <-time.After(time.Minute):
		t.Fatal("the work never moved to the live replica")
	}
	if err := r[0].Renew(t.Context(), dead); !errors.Is(err, lease.ErrLost) {
		t.Errorf("the dead holder's renewal: %v, want ErrLost", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Hold after its context ended: %v", err)
	}
}

// TestLostLeaseStopsTheWork: when another holder takes the lease (here
// by force, as after a pause longer than its time to live), the work's
// context ends; Hold takes the lease again once it is free and runs the
// work again. Never do two holders' works overlap.
func TestLostLeaseStopsTheWork(t *testing.T) {
	r, url := replicas(t, 2, 600*time.Millisecond)
	var active, runs atomic.Int64
	var overlap atomic.Bool
	work := func(ctx context.Context) error {
		if active.Add(1) > 1 {
			overlap.Store(true)
		}
		runs.Add(1)
		<-ctx.Done()
		active.Add(-1)
		return nil
	}
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	for _, p := range r {
		wg.Go(func() {
			if err := p.Hold(ctx, "checkpoints", work); err != nil {
				t.Errorf("Hold: %v", err)
			}
		})
	}
	wait.For(t, "one replica to run the work", func() bool { return runs.Load() == 1 })
	// Steal it: the holder that had it must stop, then one of them runs
	// the work again once the thief's lease expires.
	db, err := postgres.Open(t.Context(), url, postgres.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Pool().Exec(t.Context(), `UPDATE lease SET holder = 'thief', epoch = epoch + 1,
		expires = now() + interval '600 milliseconds' WHERE name = 'checkpoints'`); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "the work to stop on the replica that lost the lease", func() bool { return active.Load() == 0 })
	wait.For(t, "a replica to run the work again after the thief's lease expired", func() bool { return runs.Load() == 2 })
	cancel()
	wg.Wait()
	if overlap.Load() {
		t.Error("two replicas ran the work at once")
	}
}

// TestLocal: the single-process holder runs the work at once and
// returns its error, or nil when its context ends.
func TestLocal(t *testing.T) {
	boom := errors.New("boom")
	if err := (lease.Local{}).Hold(t.Context(), "x", func(context.Context) error { return boom }); !errors.Is(err, boom) {
		t.Errorf("Hold = %v, want the work's error", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := (lease.Local{}).Hold(ctx, "x", func(ctx context.Context) error { return ctx.Err() }); err != nil {
		t.Errorf("Hold after its context ended = %v, want nil", err)
	}
}

// TestHoldReturnsTheWorksFailure: work that fails while holding the
// lease ends Hold with its error, and the lease is released at once for
// another replica.
func TestHoldReturnsTheWorksFailure(t *testing.T) {
	r, _ := replicas(t, 2, time.Hour)
	boom := errors.New("boom")
	if err := r[0].Hold(t.Context(), "ca", func(context.Context) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("Hold = %v, want the work's error", err)
	}
	if _, ok, err := r[1].TryAcquire(t.Context(), "ca"); err != nil || !ok {
		t.Errorf("after the failed holder released it: ok %v, err %v (an hour's lease must not wait to expire)", ok, err)
	}
}

// TestExpiredAndRetire: Expired lists the leases under a prefix whose
// holder stopped renewing them; one taken over and retired is gone.
func TestExpiredAndRetire(t *testing.T) {
	r, url := replicas(t, 2, time.Hour)
	ctx := t.Context()
	for _, name := range []string{"session/a", "session/b", "other/c"} {
		if _, ok, err := r[0].TryAcquire(ctx, name); err != nil || !ok {
			t.Fatalf("acquire %s: ok %v, err %v", name, ok, err)
		}
	}
	if got, err := r[1].Expired(ctx, "session/"); err != nil || len(got) != 0 {
		t.Fatalf("Expired with every lease held = %v, %v", got, err)
	}
	db, err := postgres.Open(ctx, url, postgres.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Pool().Exec(ctx, `UPDATE lease SET expires = now() - interval '1 second' WHERE name IN ('session/a', 'other/c')`); err != nil {
		t.Fatal(err)
	}
	got, err := r[1].Expired(ctx, "session/")
	if err != nil || len(got) != 1 || got[0] != "session/a" {
		t.Fatalf("Expired = %v, %v; want [session/a]", got, err)
	}
	l, ok, err := r[1].TryAcquire(ctx, "session/a")
	if err != nil || !ok {
		t.Fatalf("take over: ok %v, err %v", ok, err)
	}
	if err := r[1].Retire(ctx, l); err != nil {
		t.Fatal(err)
	}
	if err := r[1].Retire(ctx, l); !errors.Is(err, lease.ErrLost) {
		t.Errorf("second Retire = %v, want ErrLost", err)
	}
	if got, err := r[1].Expired(ctx, "session/"); err != nil || len(got) != 0 {
		t.Errorf("Expired after Retire = %v, %v", got, err)
	}
}
