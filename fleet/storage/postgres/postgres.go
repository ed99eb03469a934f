// Package postgres is the PostgreSQL backend of the fleet's stores: a
// connection pool (DB), schema migrations versioned in the repository and
// applied at start (Migrate), and serializable transactions retried on
// serialization failures (Tx), so that a store written for bbolt's single
// writer keeps its guarantees.
//
// The stores own their tables and SQL; this package knows none of them. A
// store embeds its migrations (files NNNN_name.sql) and applies them when
// it opens:
//
//	//go:embed migrations/*.sql
//	var migrations embed.FS
//
//	if err := db.Migrate(ctx, "inventory", migrations); err != nil { … }
//
// Every applied file is recorded in the table schema_migrations
// (component, version, name, applied_at). Replicas starting together
// migrate one at a time (an advisory lock), and a database that a newer
// build migrated further than this build knows is refused (ErrSchema).
package postgres

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Errors. Compare with errors.Is.
var (
	// ErrSchema: the database holds a migration this build does not
	// have, or a migration file is malformed.
	ErrSchema = errors.New("postgres: unsupported schema")
	// ErrConfig: the database URL is not one pgx can parse.
	ErrConfig = errors.New("postgres: invalid database URL")
)

// Options configures Open.
type Options struct {
	// MaxConns bounds the pool (0: pgx's default, the larger of 4 and the
	// number of CPUs).
	MaxConns int32
	// Logger receives the migrations applied (nil: discard).
	Logger *slog.Logger
	// Tracer sees every statement sent (tests count them); nil: none.
	Tracer pgx.QueryTracer
}

// DB is a pool of connections to one database. Its methods are safe for
// concurrent use.
type DB struct {
	pool *pgxpool.Pool
	log  *slog.Logger
}

// Open connects to the database at url (a postgres:// URL or a key=value
// string) and checks that it answers. The URL may carry a password: it is
// never logged nor put in an error.
func Open(ctx context.Context, url string, o Options) (*DB, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		// pgx's message may quote the URL, password included.
		return nil, ErrConfig
	}
	if o.MaxConns > 0 {
		cfg.MaxConns = o.MaxConns
	}
	cfg.ConnConfig.Tracer = o.Tracer
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: connect to %s: %w", cfg.ConnConfig.Host, err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres: connect to %s:%d database %s: %w", cfg.ConnConfig.Host, cfg.ConnConfig.Port, cfg.ConnConfig.Database, err)
	}
	return &DB{pool: pool, log: o.Logger}, nil
}

// Close closes every connection.
func (db *DB) Close() { db.pool.Close() }

// Pool returns the connection pool, for reads outside a transaction.
func (db *DB) Pool() *pgxpool.Pool { return db.pool }

// maxAttempts bounds the runs of a transaction that keeps failing to
// serialize.
const maxAttempts = 30

// Tx runs fn in a serializable read-write transaction and commits it.
// A transaction that fails to serialize with a concurrent one (SQLSTATE
// 40001, or a deadlock, 40P01) is rolled back and run again, so fn may
// run more than once: it must not keep state from one run to the next
// other than what it reads from the transaction. fn's own error rolls
// back and is returned as is. When ctx carries a Fence (WithFence), it is
// checked first in each run.
func (db *DB) Tx(ctx context.Context, fn func(pgx.Tx) error) error {
	return db.run(ctx, pgx.TxOptions{IsoLevel: pgx.Serializable}, fenced(ctx, fn))
}

// Fence checks, first in a read-write transaction, that the work writing
// in it may still write: that the lease it runs under is still its own
// (fleet/storage/lease), so that a holder that paused past its lease's
// expiry writes nothing once another holder took it over. Its error
// rolls the transaction back and is returned as is.
type Fence func(ctx context.Context, tx pgx.Tx) error

// fenceKey is the context key of a Fence.
type fenceKey struct{}

// WithFence returns ctx carrying f: every transaction Tx and Serialized
// run with it (or a context derived from it) checks f before anything
// else, in the same transaction. Reads (ReadTx) and statements on the
// pool outside a transaction are not fenced.
func WithFence(ctx context.Context, f Fence) context.Context {
	return context.WithValue(ctx, fenceKey{}, f)
}

// fenced returns fn preceded by the check of ctx's Fence, if any.
func fenced(ctx context.Context, fn func(pgx.Tx) error) func(pgx.Tx) error {
	f, _ := ctx.Value(fenceKey{}).(Fence)
	if f == nil {
		return fn
	}
	return func(tx pgx.Tx) error {
		if err := f(ctx, tx); err != nil {
			return err
		}
		return fn(tx)
	}
}

// ReadTx runs fn in a read-only transaction that sees one snapshot.
func (db *DB) ReadTx(ctx context.Context, fn func(pgx.Tx) error) error {
	return db.run(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, fn)
}

// Serialized runs fn in a read-committed transaction that first takes
// the advisory lock key: the transactions that take the same key run one
// at a time across every process sharing the database, each seeing what
// the previous ones committed, so fn runs exactly once (there is no
// serialization failure to retry). It checks ctx's Fence (WithFence) as
// Tx does. It is bbolt's single writer, for a
// store whose transactions have effects outside the database (an audit
// entry recorded before the commit) or that contend on one row.
func (db *DB) Serialized(ctx context.Context, key string, fn func(pgx.Tx) error) error {
	return pgx.BeginTxFunc(ctx, db.pool, pgx.TxOptions{IsoLevel: pgx.ReadCommitted}, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", key); err != nil {
			return fmt.Errorf("postgres: lock %s: %w", key, err)
		}
		return fenced(ctx, fn)(tx)
	})
}

func (db *DB) run(ctx context.Context, opts pgx.TxOptions, fn func(pgx.Tx) error) error {
	for attempt := 1; ; attempt++ {
		err := pgx.BeginTxFunc(ctx, db.pool, opts, fn)
		if err == nil || !retryable(err) || attempt == maxAttempts {
			return err
		}
		// Back off a little, with jitter, so that the transactions that
		// collided do not collide again.
		d := time.Duration(rand.Int64N(int64(time.Millisecond) << min(attempt, 6)))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(d):
		}
	}
}

// retryable reports whether err is a serialization failure or a deadlock.
func retryable(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "40001" || pe.Code == "40P01")
}

// UniqueViolation reports whether err is a violation of the unique
// constraint (or unique index) named constraint.
func UniqueViolation(err error, constraint string) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505" && pe.ConstraintName == constraint
}

// migration is one file of a component's migrations.
type migration struct {
	version int
	name    string
	sql     string
}

// Migrate applies component's migrations that the database has not
// recorded, in version order, each in its own transaction with its record
// in schema_migrations. files holds them as NNNN_name.sql (in any
// directory; NNNN is the version, from 1, without gaps).
func (db *DB) Migrate(ctx context.Context, component string, files fs.FS) error {
	ms, err := readMigrations(files)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrSchema, component, err)
	}
	conn, err := db.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("postgres: migrate %s: %w", component, err)
	}
	defer conn.Release()
	// One migrating replica at a time, across the database (a session
	// lock: released with the connection's session, also on error).
	const lockKey = 0x5167696c // "Sigl"
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", lockKey); err != nil {
		return fmt.Errorf("postgres: migrate %s: lock: %w", component, err)
	}
	defer conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", lockKey)
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		component  text NOT NULL,
		version    integer NOT NULL,
		name       text NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now(),
		PRIMARY KEY (component, version))`); err != nil {
		return fmt.Errorf("postgres: migrate %s: %w", component, err)
	}
	var applied int
	if err := conn.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM schema_migrations WHERE component = $1", component).Scan(&applied); err != nil {
		return fmt.Errorf("postgres: migrate %s: %w", component, err)
	}
	if applied > len(ms) {
		return fmt.Errorf("%w: %s is at version %d, this build knows %d", ErrSchema, component, applied, len(ms))
	}
	for _, m := range ms[applied:] {
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, m.sql); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "INSERT INTO schema_migrations (component, version, name) VALUES ($1, $2, $3)", component, m.version, m.name)
			return err
		})
		if err != nil {
			return fmt.Errorf("postgres: migrate %s to %d (%s): %w", component, m.version, m.name, err)
		}
		db.log.Info("database migrated", "component", component, "version", m.version, "migration", m.name)
	}
	return nil
}

// Version returns the highest migration of component the database
// recorded (0 for none).
func (db *DB) Version(ctx context.Context, component string) (int, error) {
	var v int
	err := db.pool.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM schema_migrations WHERE component = $1", component).Scan(&v)
	if err != nil {
		return 0, fmt.Errorf("postgres: version of %s: %w", component, err)
	}
	return v, nil
}

// readMigrations reads and orders the NNNN_name.sql files of files.
func readMigrations(files fs.FS) ([]migration, error) {
	var ms []migration
	err := fs.WalkDir(files, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".sql") {
			return err
		}
		base := strings.TrimSuffix(path.Base(p), ".sql")
		num, name, ok := strings.Cut(base, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v < 1 || name == "" {
			return fmt.Errorf("migration file %s is not NNNN_name.sql", p)
		}
		b, err := fs.ReadFile(files, p)
		if err != nil {
			return err
		}
		ms = append(ms, migration{version: v, name: name, sql: string(b)})
		return nil
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(ms, func(a, b migration) int { return a.version - b.version })
	for i, m := range ms {
		if m.version != i+1 {
			return nil, fmt.Errorf("migration %d (%s) where %d was expected", m.version, m.name, i+1)
		}
	}
	return ms, nil
}
