package policy

import (
	"context"
	"embed"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	bolt "go.etcd.io/bbolt"

	"github.com/sigil-iot/sigil/fleet/storage/boltdb"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
)

// engine is a storage backend of the store: the rules are the Store's.
type engine interface {
	view(ctx context.Context, fn func(tx) error) error
	// update runs fn in a read-write transaction; fn may run more than
	// once (a PostgreSQL transaction that failed to serialize).
	update(ctx context.Context, fn func(tx) error) error
	close() error
}

// tx is one transaction of an engine.
type tx interface {
	// latest returns the newest version of id, deleted or not; nil when
	// there is none.
	latest(id string) (*Policy, error)
	// version returns one version of id, nil when there is none.
	version(id string, v int) (*Policy, error)
	// history calls fn with every version of id, oldest first.
	history(id string, fn func(*Policy) error) error
	// eachLatest calls fn with the newest version of every policy, in ID
	// order, deleted ones included.
	eachLatest(fn func(*Policy) error) error
	// put stores the record of version v of id.
	put(id string, v int, record []byte) error
}

// boltEngine keeps the policies in a bbolt file: a bucket per policy ID
// under "policies", versions keyed by 4 bytes big-endian.
type boltEngine struct{ db *boltdb.DB }

func (b boltEngine) close() error { return b.db.Close() }

func (b boltEngine) view(_ context.Context, fn func(tx) error) error {
	return b.db.View(func(t *bolt.Tx) error { return fn(boltTx{t}) })
}

func (b boltEngine) update(_ context.Context, fn func(tx) error) error {
	return b.db.Update(func(t *bolt.Tx) error { return fn(boltTx{t}) })
}

type boltTx struct{ tx *bolt.Tx }

func (b boltTx) bucket(id string) *bolt.Bucket { return b.tx.Bucket(bucketPolicies).Bucket([]byte(id)) }

func lastOf(bk *bolt.Bucket) (*Policy, error) {
	_, v := bk.Cursor().Last()
	if v == nil {
		return nil, nil
	}
	return decodeRecord(v)
}

func (b boltTx) latest(id string) (*Policy, error) {
	bk := b.bucket(id)
	if bk == nil {
		return nil, nil
	}
	return lastOf(bk)
}

func (b boltTx) version(id string, v int) (*Policy, error) {
	bk := b.bucket(id)
	if bk == nil {
		return nil, nil
	}
	rec := bk.Get(binary.BigEndian.AppendUint32(nil, uint32(v)))
	if rec == nil {
		return nil, nil
	}
	return decodeRecord(rec)
}

func (b boltTx) history(id string, fn func(*Policy) error) error {
	bk := b.bucket(id)
	if bk == nil {
		return nil
	}
	return bk.ForEach(func(_, v []byte) error {
		p, err := decodeRecord(v)
		if err != nil {
			return err
		}
		return fn(p)
	})
}

func (b boltTx) eachLatest(fn func(*Policy) error) error {
	root := b.tx.Bucket(bucketPolicies)
	return root.ForEachBucket(func(id []byte) error {
		p, err := lastOf(root.Bucket(id))
		if err != nil {
			return err
		}
		if p == nil {
			return ErrNotFound
		}
		return fn(p)
	})
}

func (b boltTx) put(id string, v int, record []byte) error {
	bk, err := b.tx.Bucket(bucketPolicies).CreateBucketIfNotExists([]byte(id))
	if err != nil {
		return err
	}
	return bk.Put(binary.BigEndian.AppendUint32(nil, uint32(v)), record)
}

// migrations are the store's tables in PostgreSQL (component "policy" in
// schema_migrations).
//
//go:embed migrations/*.sql
var migrations embed.FS

// OpenPostgres opens the store in the PostgreSQL database db, bringing its
// tables up to date first. Close leaves db open.
func OpenPostgres(ctx context.Context, db *postgres.DB, opts ...StoreOption) (*Store, error) {
	o := storeOptions{now: time.Now}
	for _, f := range opts {
		f(&o)
	}
	if err := db.Migrate(ctx, "policy", migrations); err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	return &Store{e: pgEngine{db}, now: o.now}, nil
}

// pgEngine keeps each version in a row of policy_versions. Writes are
// serializable transactions (a Put reads every policy to refuse a
// conflict, so two conflicting Puts cannot both commit).
type pgEngine struct{ db *postgres.DB }

func (pgEngine) close() error { return nil }

func (p pgEngine) view(ctx context.Context, fn func(tx) error) error {
	return p.db.ReadTx(ctx, func(t pgx.Tx) error { return fn(pgTx{ctx, t}) })
}

func (p pgEngine) update(ctx context.Context, fn func(tx) error) error {
	return p.db.Tx(ctx, func(t pgx.Tx) error { return fn(pgTx{ctx, t}) })
}

type pgTx struct {
	ctx context.Context
	tx  pgx.Tx
}

func (t pgTx) one(sql string, args ...any) (*Policy, error) {
	var rec []byte
	err := t.tx.QueryRow(t.ctx, sql, args...).Scan(&rec)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return decodeRecord(rec)
}

func (t pgTx) each(fn func(*Policy) error, sql string, args ...any) error {
	rows, err := t.tx.Query(t.ctx, sql, args...)
	if err != nil {
		return err
	}
	recs, err := pgx.CollectRows(rows, pgx.RowTo[[]byte])
	if err != nil {
		return err
	}
	for _, rec := range recs {
		p, err := decodeRecord(rec)
		if err != nil {
			return err
		}
		if err := fn(p); err != nil {
			return err
		}
	}
	return nil
}

func (t pgTx) latest(id string) (*Policy, error) {
	return t.one("SELECT record FROM policy_versions WHERE id = $1 ORDER BY version DESC LIMIT 1", id)
}

func (t pgTx) version(id string, v int) (*Policy, error) {
	return t.one("SELECT record FROM policy_versions WHERE id = $1 AND version = $2", id, v)
}

func (t pgTx) history(id string, fn func(*Policy) error) error {
	return t.each(fn, "SELECT record FROM policy_versions WHERE id = $1 ORDER BY version", id)
}

func (t pgTx) eachLatest(fn func(*Policy) error) error {
	return t.each(fn, "SELECT DISTINCT ON (id) record FROM policy_versions ORDER BY id, version DESC")
}

func (t pgTx) put(id string, v int, record []byte) error {
	_, err := t.tx.Exec(t.ctx, "INSERT INTO policy_versions (id, version, record) VALUES ($1, $2, $3)", id, v, record)
	return err
}
