package lease_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/jackc/pgx/v5"

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

// TestLocal: the single-process holder runs the work at once, and
// returns nil when its context ends.
func TestLocal(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	ran := false
	err := (lease.Local{}).Hold(ctx, "x", func(ctx context.Context) error {
		ran = true
		cancel()
		return ctx.Err()
	})
	if err != nil || !ran {
		t.Errorf("Hold = %v (ran %v), want the work run and nil once its context ended", err, ran)
	}
}

// TestLocalRunsTheWorkAgainAfterBackoffs: work that fails runs again
// after a backoff that doubles with each failure in a row, up to its
// bound, until the context ends (review N5: one failure stopped the
// work for good). On synctest's clock, so the waits are exact.
func TestLocalRunsTheWorkAgainAfterBackoffs(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		var runs []time.Time
		done := make(chan error, 1)
		go func() {
			done <- (lease.Local{Backoff: time.Second, MaxBackoff: 4 * time.Second}).Hold(ctx, "x", func(context.Context) error {
				runs = append(runs, time.Now())
				if len(runs) == 6 {
					cancel()
				}
				return errors.New("database unavailable")
			})
		}()
		if err := <-done; err != nil {
			t.Fatalf("Hold = %v, want nil once its context ended", err)
		}
		var gaps []time.Duration
		for i := 1; i < len(runs); i++ {
			gaps = append(gaps, runs[i].Sub(runs[i-1]))
		}
		want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 4 * time.Second, 4 * time.Second}
		if !slices.Equal(gaps, want) {
			t.Errorf("waits between the runs %v, want %v", gaps, want)
		}
	})
}

// TestHoldRunsTheWorkAgainAfterAFailure: work that fails while holding
// the lease (a transient database error) gives the lease up at once for
// another replica and runs again after the backoff; Hold keeps going
// until its context ends (review N5: Hold returned the first error and
// the replica's share of the work stopped until a restart).
func TestHoldRunsTheWorkAgainAfterAFailure(t *testing.T) {
	srv := pgtest.Start(t)
	url := srv.NewDatabase(t)
	open := func(holder string, backoff time.Duration) *lease.Postgres {
		p, err := lease.Open(t.Context(), pgtest.Open(t, url), lease.Config{Holder: holder, TTL: time.Hour, Backoff: backoff, MaxBackoff: backoff})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	slow, quick, other := open("slow", time.Hour), open("quick", time.Millisecond), open("other", time.Hour)

	// A failure releases the lease at once; Hold goes on (waiting out
	// its hour of backoff) until its context ends.
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	failed := make(chan struct{})
	go func() {
		done <- slow.Hold(ctx, "ca", func(context.Context) error {
			close(failed)
			return errors.New("database unavailable")
		})
	}()
	<-failed
	wait.For(t, "another replica to take the lease the failed work gave up", func() bool {
		l, ok, err := other.TryAcquire(t.Context(), "ca")
		if ok {
			other.Release(t.Context(), l)
		}
		return err == nil && ok
	})
	select {
	case err := <-done:
		t.Fatalf("Hold returned after one failure of its work: %v", err)
	default:
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Hold after its context ended = %v, want nil", err)
	}

	// The work runs again after its backoff, as often as it fails.
	ctx, cancel = context.WithCancel(t.Context())
	defer cancel()
	var runs atomic.Int64
	go func() {
		done <- quick.Hold(ctx, "ca", func(ctx context.Context) error {
			if runs.Add(1) < 3 {
				return errors.New("database unavailable")
			}
			<-ctx.Done()
			return nil
		})
	}()
	wait.For(t, "the work to run a third time after two failures", func() bool { return runs.Load() == 3 })
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Hold after its context ended = %v, want nil", err)
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

// TestFencedWritesAfterATakeover: holder A pauses past its lease's
// expiry (here: it stops renewing) and B takes the lease; A's write,
// run with the context fencing A's holding, is refused with ErrFenced
// (also ErrLost) and leaves nothing, in a serializable transaction and
// in a serialized one alike. A's writes before the takeover land, and so
// do B's after it.
func TestFencedWritesAfterATakeover(t *testing.T) {
	r, url := replicas(t, 2, time.Hour)
	ctx := t.Context()
	db := pgtest.Open(t, url)
	if _, err := db.Pool().Exec(ctx, `CREATE TABLE steps (by text NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	write := func(ctx context.Context, by string) []error {
		ins := func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, `INSERT INTO steps (by) VALUES ($1)`, by)
			return err
		}
		return []error{db.Tx(ctx, ins), db.Serialized(ctx, "steps", ins)}
	}
	la, ok, err := r[0].TryAcquire(ctx, "rotation_jobs")
	if err != nil || !ok {
		t.Fatalf("A's acquire: ok %v, err %v", ok, err)
	}
	actx := r[0].Fenced(ctx, la)
	for _, err := range write(actx, "a") {
		if err != nil {
			t.Fatalf("A's write while it holds the lease: %v", err)
		}
	}
	// A pauses past its lease's time to live (the expiry set as the
	// hour would): a write then is refused even before anyone took it
	// over.
	expire(t, db, "rotation_jobs")
	for _, err := range write(actx, "a") {
		if !errors.Is(err, lease.ErrFenced) {
			t.Fatalf("A's write after its lease expired = %v, want ErrFenced", err)
		}
	}
	lb, ok, err := r[1].TryAcquire(ctx, "rotation_jobs")
	if err != nil || !ok {
		t.Fatalf("B's acquire: ok %v, err %v", ok, err)
	}
	for _, err := range write(actx, "a") {
		if !errors.Is(err, lease.ErrFenced) || !errors.Is(err, lease.ErrLost) {
			t.Errorf("A's write after B took the lease = %v, want ErrFenced (and ErrLost)", err)
		}
	}
	for _, err := range write(r[1].Fenced(ctx, lb), "b") {
		if err != nil {
			t.Errorf("B's write: %v", err)
		}
	}
	var a, b int
	if err := db.Pool().QueryRow(ctx, `SELECT count(*) FILTER (WHERE by = 'a'), count(*) FILTER (WHERE by = 'b') FROM steps`).Scan(&a, &b); err != nil {
		t.Fatal(err)
	}
	if a != 2 || b != 2 {
		t.Errorf("rows written: A %d, B %d; want 2 and 2 (A's fenced writes left nothing)", a, b)
	}
}

// TestHoldFencesTheWork: the context Hold gives the work fences its
// transactions: once another holder has the lease, the work's next write
// fails with ErrFenced, and Hold takes that as the lease lost (it waits
// to take the lease again, no backoff).
func TestHoldFencesTheWork(t *testing.T) {
	r, url := replicas(t, 1, time.Hour)
	db := pgtest.Open(t, url)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	stolen := make(chan struct{})
	wrote := make(chan error, 1) // the work's first write, under the lease
	fenced := make(chan error, 1)
	done := make(chan error, 1)
	go func() {
		first := true
		done <- r[0].Hold(ctx, "campaign_step", func(wctx context.Context) error {
			nop := func(pgx.Tx) error { return nil }
			err := db.Tx(wctx, nop)
			if first {
				first = false
				wrote <- err
			}
			if err != nil {
				return err
			}
			<-stolen
			err = db.Tx(context.WithoutCancel(wctx), nop)
			fenced <- err
			<-wctx.Done()
			return err
		})
	}()
	// The lease is taken over only once the work has written under it:
	// taken over as soon as the lease row names the holder, the work's
	// first write could come after the takeover (fenced already).
	if err := <-wrote; err != nil {
		t.Fatalf("the work's first write under the lease: %v", err)
	}
	if _, err := db.Pool().Exec(t.Context(), `UPDATE lease SET holder = 'thief', epoch = epoch + 1 WHERE name = 'campaign_step'`); err != nil {
		t.Fatal(err)
	}
	close(stolen)
	if err := <-fenced; !errors.Is(err, lease.ErrFenced) {
		t.Errorf("the work's write after the lease was taken over = %v, want ErrFenced", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Hold = %v, want nil", err)
	}
}

// TestFencedTransactionHoldsOffATakeoverNotRenewals: while a transaction
// fenced by a holding is open, the holder renews its lease as usual, and
// another holder's takeover of the expired lease waits until it ends:
// the fenced write commits before the lease changes hands.
func TestFencedTransactionHoldsOffATakeoverNotRenewals(t *testing.T) {
	r, url := replicas(t, 2, time.Hour)
	db := pgtest.Open(t, url)
	la, ok, err := r[0].TryAcquire(t.Context(), "campaign_step")
	if err != nil || !ok {
		t.Fatalf("acquire: ok %v, err %v", ok, err)
	}
	inside, release := make(chan struct{}), make(chan struct{})
	let := sync.OnceFunc(func() { close(release) })
	t.Cleanup(let) // before the pools close, whatever failed
	txDone := make(chan error, 1)
	go func() {
		txDone <- db.Tx(r[0].Fenced(t.Context(), la), func(tx pgx.Tx) error {
			close(inside)
			<-release
			return nil
		})
	}()
	<-inside
	ctx, cancel := context.WithTimeout(t.Context(), wait.Timeout) // a safety net, not a timing
	defer cancel()
	if err := r[0].Renew(ctx, la); err != nil {
		t.Fatalf("the holder's renewal while its fenced transaction is open: %v", err)
	}
	// The holder stops renewing (it paused): its lease expires.
	expire(t, db, "campaign_step")
	taken := make(chan bool, 1)
	go func() {
		_, ok, err := r[1].TryAcquire(t.Context(), "campaign_step")
		taken <- err == nil && ok
	}()
	wait.For(t, "the takeover to wait for the fenced transaction's lock", func() bool {
		var waiting bool
		err := db.Pool().QueryRow(t.Context(), `SELECT count(*) > 0 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%FOR UPDATE%'`).Scan(&waiting)
		return err == nil && waiting
	})
	select {
	case <-taken:
		t.Fatal("another holder took the lease over while a transaction fenced by the old holding was open")
	case <-txDone:
		t.Fatal("the fenced transaction ended before it was let go")
	default:
	}
	let()
	if err := <-txDone; err != nil {
		t.Fatalf("the fenced transaction, begun while the lease was held: %v", err)
	}
	if !<-taken {
		t.Fatal("the takeover failed once the fenced transaction ended")
	}
}

// expire ends the lease name as if its holder had stopped renewing it for
// longer than its time to live (a pause, made instant).
func expire(t *testing.T, db *postgres.DB, name string) {
	t.Helper()
	if _, err := db.Pool().Exec(t.Context(), `UPDATE lease SET expires = now() - interval '1 second' WHERE name = $1`, name); err != nil {
		t.Fatal(err)
	}
}
