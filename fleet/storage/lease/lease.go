// Package lease runs the fleet's work that must happen at one place at a
// time — sweeps, schedules, checkpoints, waves — under named leases, so
// that several `sigil serve` replicas sharing a PostgreSQL database do it
// once, and another replica takes it over when its holder dies.
//
// A lease is a row of the table lease: its holder, an expiry on the
// database's clock (replicas' clocks never compare with each other), and
// an epoch that grows with each new holder. The holder renews it every
// third of its time to live; a holder that cannot renew in time (dead,
// cut off from the database, or paused) loses it, and the context of the
// work it runs under the lease is canceled before another replica can
// take it, provided its clock runs at most a little faster than the
// database's (the work stops at two thirds of the lease's time to live
// after the last renewal that succeeded, a third before it expires).
//
// A holder whose work goes on writing after it lost its lease (it paused
// past the expiry: a long GC, SIGSTOP, a VM frozen) must not write over
// its successor's work: Hold gives the work a context that fences every
// PostgreSQL transaction run with it (postgres.WithFence). The
// transaction first locks the lease's row (FOR KEY SHARE) and checks that
// it still has the holder, the epoch and an unexpired lease; otherwise it
// fails with ErrFenced before writing anything. The row stays locked
// until the commit, and a takeover locks it FOR UPDATE first, so no other
// holder takes the lease in between: a fenced write commits entirely
// before the lease changes hands, or not at all. The holder's own
// renewals do not wait for its fenced transactions (an UPDATE of the
// expiry does not conflict with that lock).
//
// Work that fails (a transient database error) is run again after a
// backoff, as long as the caller's context lasts: Hold never gives up on
// its share of the work. Work that fails with ErrLost (ErrFenced
// included) lost its lease: Hold waits to take it again.
//
// Local is the single-process default: every lease is granted at once.
package lease

import (
	"cmp"
	"context"
	"crypto/rand"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sigil-iot/sigil/fleet/storage/postgres"
)

// Errors. Compare with errors.Is.
var (
	// ErrLost: the lease was taken by another holder, or expired, before
	// it was renewed.
	ErrLost = errors.New("lease: lost")
	// ErrFenced: a transaction run under a lease no longer held (another
	// holder took it, or it expired) was refused before it wrote. It is
	// also ErrLost.
	ErrFenced = fmt.Errorf("lease: fenced: a write under a lease no longer held (%w)", ErrLost)
)

// WorkError is a failure of the work run under a lease, as opposed to
// the lease's loss (ErrLost): Hold logs it, gives the lease up and runs
// the work again after a backoff.
type WorkError struct {
	Lease string
	Epoch int64 // the holding the work failed under (0 for Local)
	Err   error
}

func (e *WorkError) Error() string {
	return fmt.Sprintf("lease: work under %s (epoch %d) failed: %v", e.Lease, e.Epoch, e.Err)
}

func (e *WorkError) Unwrap() error { return e.Err }

// Lease is one holding of a named lease.
type Lease struct {
	Name   string
	Holder string
	// Epoch grows by one with each new holder: work that writes
	// elsewhere can carry it as a fencing token.
	Epoch int64
}

// Holder runs work under leases.
type Holder interface {
	// Hold runs fn while it holds the lease name, until ctx ends, and
	// then returns nil. fn's context ends when the lease is lost; Hold
	// then waits to get it again and runs fn again. When fn fails (a
	// WorkError: any error but ErrLost), Hold runs it again after a
	// backoff that doubles with each failure in a row.
	Hold(ctx context.Context, name string, fn func(ctx context.Context) error) error
}

// Defaults of the backoff after a failure of the work (Config.Backoff,
// Config.MaxBackoff, Local's fields).
const (
	DefaultBackoff    = time.Second
	DefaultMaxBackoff = time.Minute
)

// backoff is the wait before the work runs again after failures in a row
// (at least 1): first, doubled each time, at most most.
func backoff(failures int, first, most time.Duration) time.Duration {
	d := first
	for i := 1; i < failures && d < most; i++ {
		d *= 2
	}
	return min(d, most)
}

// failures counts the work's failures in a row: one that ran longer than
// most before failing starts the count again, as does a run that ended
// without failing.
type failures struct {
	n          int
	first, max time.Duration
}

// next records how a run of the work that lasted ran ended and returns
// how long to wait before the next (0: no failure).
func (f *failures) next(err error, ran time.Duration) time.Duration {
	if err == nil {
		f.n = 0
		return 0
	}
	if ran > f.max {
		f.n = 0
	}
	f.n++
	return backoff(f.n, f.first, f.max)
}

// Local grants every lease at once: one process, nothing to share. Its
// zero value is ready to use.
type Local struct {
	// Backoff and MaxBackoff bound the wait before the work runs again
	// after it failed (defaults DefaultBackoff, DefaultMaxBackoff).
	Backoff, MaxBackoff time.Duration
	Logger              *slog.Logger
}

var _ Holder = Local{}

// Hold runs fn with ctx, again after a backoff when it fails, until ctx
// ends; then it returns nil.
func (lo Local) Hold(ctx context.Context, name string, fn func(context.Context) error) error {
	log := lo.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	f := failures{first: cmp.Or(lo.Backoff, DefaultBackoff), max: cmp.Or(lo.MaxBackoff, DefaultMaxBackoff)}
	for {
		start := time.Now()
		err := fn(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			err = &WorkError{Lease: name, Err: err}
		}
		wait := f.next(err, time.Since(start))
		if err != nil {
			log.Warn("work failed: it runs again after a backoff", "lease", name, "err", err, "retry_in", wait)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

// DefaultTTL is a lease's time to live when Config.TTL is zero.
const DefaultTTL = 15 * time.Second

// Config configures Open.
type Config struct {
	// Holder names this replica in the table (default: a random name;
	// one per process, so that two processes never share a holding).
	Holder string
	// TTL is how long a lease outlives its holder's last renewal
	// (default DefaultTTL): how long the work waits for another replica
	// after its holder dies.
	TTL time.Duration
	// Backoff is the wait before the work runs again after it failed
	// (default DefaultBackoff), doubled after each failure in a row up to
	// MaxBackoff (default DefaultMaxBackoff). The lease is given up
	// meanwhile: another replica may run the work.
	Backoff, MaxBackoff time.Duration
	// Now is the local clock that times renewals (default time.Now).
	Now    func() time.Time
	Logger *slog.Logger
}

// Postgres hands out leases kept in a PostgreSQL database.
type Postgres struct {
	db  *postgres.DB
	cfg Config
	log *slog.Logger
}

var _ Holder = (*Postgres)(nil)

//go:embed migrations/*.sql
var migrations embed.FS

// Open creates or migrates the lease table in db.
func Open(ctx context.Context, db *postgres.DB, cfg Config) (*Postgres, error) {
	if err := db.Migrate(ctx, "lease", migrations); err != nil {
		return nil, fmt.Errorf("lease: %w", err)
	}
	if cfg.Holder == "" {
		var b [8]byte
		rand.Read(b[:])
		cfg.Holder = "replica-" + hex.EncodeToString(b[:])
	}
	if cfg.TTL <= 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	cfg.Backoff = cmp.Or(cfg.Backoff, DefaultBackoff)
	cfg.MaxBackoff = cmp.Or(cfg.MaxBackoff, DefaultMaxBackoff)
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Postgres{db: db, cfg: cfg, log: log.With("holder", cfg.Holder)}, nil
}

// HolderName is the name this replica holds leases under.
func (p *Postgres) HolderName() string { return p.cfg.Holder }

// TryAcquire takes the lease name if it is free (never held, expired, or
// already this holder's: then it is renewed under a new epoch). ok is
// false when another holder has it. It first locks the lease's row FOR
// UPDATE, so that it waits for the transactions fenced by the current
// holding (Fenced) to end: none commits after the lease changed hands.
func (p *Postgres) TryAcquire(ctx context.Context, name string) (l Lease, ok bool, err error) {
	var epoch int64
	err = pgx.BeginFunc(ctx, p.db.Pool(), func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT 1 FROM lease WHERE name = $1 FOR UPDATE`, name); err != nil {
			return err
		}
		return tx.QueryRow(ctx, `
		INSERT INTO lease (name, holder, expires, epoch)
		VALUES ($1, $2, statement_timestamp() + $3 * interval '1 millisecond', 1)
		ON CONFLICT (name) DO UPDATE
		SET holder = EXCLUDED.holder, expires = EXCLUDED.expires, epoch = lease.epoch + 1
		WHERE lease.expires < statement_timestamp() OR lease.holder = EXCLUDED.holder
		RETURNING epoch`, name, p.cfg.Holder, p.cfg.TTL.Milliseconds()).Scan(&epoch)
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return Lease{}, false, nil
	}
	if err != nil {
		return Lease{}, false, fmt.Errorf("lease: acquire %s: %w", name, err)
	}
	return Lease{Name: name, Holder: p.cfg.Holder, Epoch: epoch}, true, nil
}

// Renew extends l by the time to live; ErrLost if it is no longer held
// (taken over after it expired).
func (p *Postgres) Renew(ctx context.Context, l Lease) error {
	tag, err := p.db.Pool().Exec(ctx, `
		UPDATE lease SET expires = now() + $4 * interval '1 millisecond'
		WHERE name = $1 AND holder = $2 AND epoch = $3 AND expires >= now()`,
		l.Name, l.Holder, l.Epoch, p.cfg.TTL.Milliseconds())
	if err != nil {
		return fmt.Errorf("lease: renew %s: %w", l.Name, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("%w: %s (epoch %d)", ErrLost, l.Name, l.Epoch)
	}
	return nil
}

// Release gives l up at once, so another replica need not wait for it
// to expire. Releasing a lease no longer held does nothing.
func (p *Postgres) Release(ctx context.Context, l Lease) error {
	_, err := p.db.Pool().Exec(ctx, `
		UPDATE lease SET expires = now() - interval '1 millisecond'
		WHERE name = $1 AND holder = $2 AND epoch = $3`, l.Name, l.Holder, l.Epoch)
	if err != nil {
		return fmt.Errorf("lease: release %s: %w", l.Name, err)
	}
	return nil
}

// Hold runs fn under the lease name (Holder). It tries to take the lease
// every third of the time to live; while held, it renews it as often, and
// ends fn's context when a renewal fails or when two thirds of the time
// to live have passed since the last renewal that succeeded. fn's context
// fences the transactions run with it (Fenced). After fn returns the
// lease is released; when fn failed, Hold waits the backoff before it
// tries to take the lease again.
func (p *Postgres) Hold(ctx context.Context, name string, fn func(context.Context) error) error {
	every := p.cfg.TTL / 3
	f := failures{first: p.cfg.Backoff, max: p.cfg.MaxBackoff}
	for {
		wait := every
		sent := p.cfg.Now()
		l, ok, err := p.TryAcquire(ctx, name)
		if err != nil && ctx.Err() == nil {
			p.log.Warn("lease not taken: the database failed", "lease", name, "err", err)
		}
		if ok {
			p.log.Info("lease taken", "lease", name, "epoch", l.Epoch)
			start := time.Now()
			err := p.run(ctx, l, sent, fn)
			if d := f.next(err, time.Since(start)); d > 0 {
				wait = d
				p.log.Warn("work under a lease failed: it runs again after a backoff", "lease", name, "epoch", l.Epoch, "err", err, "retry_in", wait)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

// Fenced returns ctx fencing the PostgreSQL transactions run with it
// (postgres.WithFence): each one first locks l's row and fails with
// ErrFenced unless l is still held (same holder and epoch, not expired),
// and the lease cannot change hands before it commits. Hold gives its
// work such a context.
func (p *Postgres) Fenced(ctx context.Context, l Lease) context.Context {
	return postgres.WithFence(ctx, func(ctx context.Context, tx pgx.Tx) error {
		var holder string
		var epoch int64
		var live bool
		// FOR KEY SHARE: a renewal (an UPDATE of expires) goes on, a
		// takeover (TryAcquire: FOR UPDATE) waits for the commit.
		err := tx.QueryRow(ctx, `SELECT holder, epoch, expires >= statement_timestamp() FROM lease WHERE name = $1 FOR KEY SHARE`, l.Name).Scan(&holder, &epoch, &live)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%w: %s (epoch %d): retired", ErrFenced, l.Name, l.Epoch)
		}
		if err != nil {
			return fmt.Errorf("lease: fence %s: %w", l.Name, err)
		}
		if holder != l.Holder || epoch != l.Epoch || !live {
			return fmt.Errorf("%w: %s (epoch %d, now %d)", ErrFenced, l.Name, l.Epoch, epoch)
		}
		return nil
	})
}

// errRenewLate: no time was left to renew before the work must stop.
var errRenewLate = errors.New("lease: not renewed in time")

// run runs fn while l is held (taken by a request sent at acquired); nil
// when the lease was lost or ctx ended, a *WorkError when fn failed.
func (p *Postgres) run(ctx context.Context, l Lease, acquired time.Time, fn func(context.Context) error) error {
	fctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	done := make(chan error, 1)
	go func() { done <- fn(p.Fenced(fctx, l)) }()
	every := p.cfg.TTL / 3
	renewed := acquired
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case err := <-done:
			rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), every)
			if rerr := p.Release(rctx, l); rerr != nil {
				p.log.Warn("lease not released: it expires on its own", "lease", l.Name, "err", rerr)
			}
			rcancel()
			if ctx.Err() != nil || errors.Is(context.Cause(fctx), ErrLost) {
				return nil
			}
			if errors.Is(err, ErrLost) {
				p.log.Warn("lease lost: the work was fenced", "lease", l.Name, "epoch", l.Epoch, "err", err)
				return nil
			}
			if err != nil {
				return &WorkError{Lease: l.Name, Epoch: l.Epoch, Err: err}
			}
			return nil
		case <-t.C:
			if context.Cause(fctx) != nil {
				continue // lost: waiting for fn to return
			}
			// The lease lives TTL from the database's time of the last
			// renewal that succeeded, which came after it was sent: the
			// work stops two thirds of the TTL after that send, so a
			// renewal that hangs cannot carry it past the expiry.
			deadline := renewed.Add(2 * every)
			sent := p.cfg.Now()
			err := errRenewLate
			if left := deadline.Sub(sent); left > 0 {
				rctx, rcancel := context.WithTimeout(ctx, min(every, left))
				err = p.Renew(rctx, l)
				rcancel()
			}
			switch {
			case err == nil:
				renewed = sent
			case errors.Is(err, ErrLost) || !p.cfg.Now().Before(deadline):
				p.log.Warn("lease lost: its work stops", "lease", l.Name, "epoch", l.Epoch, "err", err)
				cancel(fmt.Errorf("%w: %s", ErrLost, l.Name))
			default:
				p.log.Warn("lease not renewed: the database failed; retrying", "lease", l.Name, "err", err)
			}
		}
	}
}

// Expired returns the names of the leases under prefix that have expired
// (their holder stopped renewing them), for a replica that takes over
// what their holders left.
func (p *Postgres) Expired(ctx context.Context, prefix string) ([]string, error) {
	rows, err := p.db.Pool().Query(ctx, `SELECT name FROM lease WHERE starts_with(name, $1) AND expires < now() ORDER BY name`, prefix)
	if err != nil {
		return nil, fmt.Errorf("lease: expired: %w", err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("lease: expired: %w", err)
	}
	return names, nil
}

// Retire deletes l once what it guarded is gone for good (a dead
// replica's session, drained): it is then no longer listed by Expired.
// ErrLost if l is no longer held.
func (p *Postgres) Retire(ctx context.Context, l Lease) error {
	tag, err := p.db.Pool().Exec(ctx, `DELETE FROM lease WHERE name = $1 AND holder = $2 AND epoch = $3`, l.Name, l.Holder, l.Epoch)
	if err != nil {
		return fmt.Errorf("lease: retire %s: %w", l.Name, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("%w: %s (epoch %d)", ErrLost, l.Name, l.Epoch)
	}
	return nil
}
