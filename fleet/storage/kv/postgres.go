package kv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"regexp"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sigil-iot/sigil/fleet/storage/postgres"
)

// validTable is what Postgres accepts as a table name (it is put in the
// SQL text).
var validTable = regexp.MustCompile(`^[a-z][a-z0-9_]{0,40}$`)

// Options configures Postgres.
type Options struct {
	// Serialized makes the store's writes one at a time, as bbolt's are:
	// each Update takes the store's lock and runs exactly once
	// (postgres.DB.Serialized), for stores whose transactions have
	// effects outside the database. Otherwise writes are serializable
	// transactions run again when they fail to serialize.
	Serialized bool
}

// Postgres returns the buckets kept in table (and table_seq) of db, which
// the store's migrations created (Schema). Close leaves db open.
func Postgres(db *postgres.DB, table string, o ...Options) (DB, error) {
	if !validTable.MatchString(table) {
		return nil, fmt.Errorf("kv: invalid table name %q", table)
	}
	p := &pgDB{db: db, table: table, seq: table + "_seq"}
	for _, o := range o {
		p.serialized = p.serialized || o.Serialized
	}
	return p, nil
}

// PostgresMigrated runs a store's migrations on db (postgres.DB.Migrate,
// under the store's component name) and returns the buckets kept in its
// table, as Postgres does; its errors start with component. Close leaves
// db open.
func PostgresMigrated(ctx context.Context, db *postgres.DB, component string, migrations fs.FS, table string, o ...Options) (DB, error) {
	if err := db.Migrate(ctx, component, migrations); err != nil {
		return nil, fmt.Errorf("%s: %w", component, err)
	}
	k, err := Postgres(db, table, o...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", component, err)
	}
	return k, nil
}

type pgDB struct {
	db         *postgres.DB
	table, seq string
	serialized bool
}

func (p *pgDB) Close() error { return nil }

func (p *pgDB) View(ctx context.Context, fn func(Tx) error) error {
	return p.db.ReadTx(ctx, func(t pgx.Tx) error { return p.run(ctx, t, fn) })
}

func (p *pgDB) Update(ctx context.Context, fn func(Tx) error) error {
	if p.serialized {
		return p.db.Serialized(ctx, "kv/"+p.table, func(t pgx.Tx) error { return p.run(ctx, t, fn) })
	}
	return p.db.Tx(ctx, func(t pgx.Tx) error { return p.run(ctx, t, fn) })
}

func (p *pgDB) Write(ctx context.Context, fn func(Tx) error) error { return p.Update(ctx, fn) }

// run calls fn and returns the first database error its reads met, which
// Get and the cursor moves cannot return themselves: the transaction is
// then rolled back whatever fn made of the missing value.
func (p *pgDB) run(ctx context.Context, t pgx.Tx, fn func(Tx) error) error {
	tx := &pgTx{ctx: ctx, tx: t, db: p}
	err := fn(tx)
	if tx.err != nil {
		return tx.err
	}
	return err
}

type pgTx struct {
	ctx    context.Context
	tx     pgx.Tx
	db     *pgDB
	err    error // the first failed read
	writes int   // changes made (cursors drop what they read ahead)
}

func (t *pgTx) fail(err error) {
	if t.err == nil && err != nil {
		t.err = fmt.Errorf("kv: %s: %w", t.db.table, err)
	}
}

func (t *pgTx) Bucket(name []byte) Bucket {
	return &pgBucket{tx: t, name: append([]byte{}, name...)}
}

func (t *pgTx) Lock(name string) error {
	_, err := t.tx.Exec(t.ctx, "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", t.db.table+"/"+name)
	if err != nil {
		return fmt.Errorf("kv: %s: lock %s: %w", t.db.table, name, err)
	}
	return nil
}

// clock returns the database's time as the statement runs
// (statement_timestamp(): after the store's lock was taken, unlike the
// transaction's start, now()).
func (t *pgTx) clock() (time.Time, error) {
	var now time.Time
	if err := t.tx.QueryRow(t.ctx, "SELECT statement_timestamp()").Scan(&now); err != nil {
		return time.Time{}, fmt.Errorf("kv: %s: clock: %w", t.db.table, err)
	}
	return now.UTC(), nil
}

func (t *pgTx) CreateBucketIfNotExists(name []byte) (Bucket, error) { return t.Bucket(name), nil }

func (t *pgTx) ForEachBucket(fn func(name []byte) error) error {
	return t.forEachBucket(nil, fn)
}

// forEachBucket calls fn with the name of every bucket nested directly
// in the bucket at path (nil: the top-level buckets): the names that
// follow path's prefix up to the next 0 byte, once each, in order.
func (t *pgTx) forEachBucket(path []byte, fn func(name []byte) error) error {
	sql := "SELECT bucket FROM " + t.db.table + " UNION SELECT bucket FROM " + t.db.seq + " ORDER BY 1"
	var args []any
	prefix := []byte{}
	if path != nil {
		prefix = append(append(prefix, path...), 0)
		end := append(append([]byte{}, path...), 1)
		sql = "SELECT bucket FROM " + t.db.table + " WHERE bucket > $1 AND bucket < $2 UNION SELECT bucket FROM " + t.db.seq + " WHERE bucket > $1 AND bucket < $2 ORDER BY 1"
		args = []any{prefix, end}
	}
	rows, err := t.tx.Query(t.ctx, sql, args...)
	if err != nil {
		return fmt.Errorf("kv: %s: buckets: %w", t.db.table, err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[[]byte])
	if err != nil {
		return fmt.Errorf("kv: %s: buckets: %w", t.db.table, err)
	}
	// A nested bucket's rows sort right after its parent's path and
	// before the parent's next sibling (0 is the smallest byte): cutting
	// each name at its first 0 keeps them in order.
	var last []byte
	for _, n := range names {
		n = n[len(prefix):]
		if i := bytes.IndexByte(n, 0); i >= 0 {
			n = n[:i]
		}
		if last != nil && bytes.Equal(n, last) {
			continue
		}
		last = n
		if err := fn(n); err != nil {
			return err
		}
	}
	return nil
}

type pgBucket struct {
	tx   *pgTx
	name []byte
}

// value makes a stored value non-nil (an empty bytea may scan as nil).
func value(v []byte) []byte {
	if v == nil {
		return []byte{}
	}
	return v
}

func (b *pgBucket) Get(key []byte) []byte {
	var v []byte
	err := b.tx.tx.QueryRow(b.tx.ctx, "SELECT value FROM "+b.tx.db.table+" WHERE bucket = $1 AND key = $2", b.name, key).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	if err != nil {
		b.tx.fail(err)
		return nil
	}
	return value(v)
}

func (b *pgBucket) Put(key, v []byte) error {
	if len(key) == 0 {
		return errors.New("kv: empty key")
	}
	b.tx.writes++
	_, err := b.tx.tx.Exec(b.tx.ctx, "INSERT INTO "+b.tx.db.table+" (bucket, key, value) VALUES ($1, $2, $3) ON CONFLICT (bucket, key) DO UPDATE SET value = EXCLUDED.value", b.name, key, value(v))
	if err != nil {
		return fmt.Errorf("kv: %s: put: %w", b.tx.db.table, err)
	}
	return nil
}

func (b *pgBucket) Delete(key []byte) error {
	b.tx.writes++
	_, err := b.tx.tx.Exec(b.tx.ctx, "DELETE FROM "+b.tx.db.table+" WHERE bucket = $1 AND key = $2", b.name, key)
	if err != nil {
		return fmt.Errorf("kv: %s: delete: %w", b.tx.db.table, err)
	}
	return nil
}

func (b *pgBucket) ForEach(fn func(k, v []byte) error) error {
	c := b.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if err := fn(k, v); err != nil {
			return err
		}
	}
	return b.tx.err
}

func (b *pgBucket) Len() int {
	var n int
	err := b.tx.tx.QueryRow(b.tx.ctx, "SELECT count(*) FROM "+b.tx.db.table+" WHERE bucket = $1", b.name).Scan(&n)
	b.tx.fail(err)
	return n
}

func (b *pgBucket) NextSequence() (uint64, error) {
	var n int64
	err := b.tx.tx.QueryRow(b.tx.ctx, "INSERT INTO "+b.tx.db.seq+" AS s (bucket, seq) VALUES ($1, 1) ON CONFLICT (bucket) DO UPDATE SET seq = s.seq + 1 RETURNING seq", b.name).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("kv: %s: sequence: %w", b.tx.db.table, err)
	}
	return uint64(n), nil
}

func (b *pgBucket) Sequence() uint64 {
	var n int64
	err := b.tx.tx.QueryRow(b.tx.ctx, "SELECT seq FROM "+b.tx.db.seq+" WHERE bucket = $1", b.name).Scan(&n)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0
	}
	b.tx.fail(err)
	return uint64(n)
}

func (b *pgBucket) SetSequence(n uint64) error {
	_, err := b.tx.tx.Exec(b.tx.ctx, "INSERT INTO "+b.tx.db.seq+" (bucket, seq) VALUES ($1, $2) ON CONFLICT (bucket) DO UPDATE SET seq = EXCLUDED.seq", b.name, int64(n))
	if err != nil {
		return fmt.Errorf("kv: %s: sequence: %w", b.tx.db.table, err)
	}
	return nil
}

func (b *pgBucket) Cursor() Cursor { return &pgCursor{b: b} }

// child is the path of the bucket name nested in b.
func (b *pgBucket) child(name []byte) []byte {
	return append(append(append([]byte{}, b.name...), 0), name...)
}

func (b *pgBucket) Bucket(name []byte) Bucket {
	return &pgBucket{tx: b.tx, name: b.child(name)}
}

func (b *pgBucket) CreateBucketIfNotExists(name []byte) (Bucket, error) {
	return b.Bucket(name), nil
}

func (b *pgBucket) DeleteBucket(name []byte) error {
	path := b.child(name)
	sub := append(append([]byte{}, path...), 0)
	end := append(append([]byte{}, path...), 1)
	b.tx.writes++
	for _, table := range []string{b.tx.db.table, b.tx.db.seq} {
		_, err := b.tx.tx.Exec(b.tx.ctx, "DELETE FROM "+table+" WHERE bucket = $1 OR (bucket >= $2 AND bucket < $3)", path, sub, end)
		if err != nil {
			return fmt.Errorf("kv: %s: delete bucket: %w", b.tx.db.table, err)
		}
	}
	return nil
}

func (b *pgBucket) ForEachBucket(fn func(name []byte) error) error {
	return b.tx.forEachBucket(b.name, fn)
}

// A cursor moving forward reads ahead: firstAhead keys when it lands
// (First, Seek), twice as many at each further read, up to readAhead. A
// Seek that only looks at a few keys — a device's rows, the key before
// (Seek then Prev) — reads a few rows, not readAhead rows of the keys
// after them; a long scan still reads readAhead at a time.
const (
	firstAhead = 8
	readAhead  = 256
)

type pair struct{ k, v []byte }

// pgCursor moves with queries; moving forward, it reads ahead and serves
// Next from what it read until the transaction changes something.
type pgCursor struct {
	b      *pgBucket
	cur    []byte // the key it is on; nil before the first move or past the end
	ahead  []pair // the keys after cur, read when writes was
	writes int
	next   int  // how many keys the next forward read asks for
	end    bool // the last forward read reached the bucket's end (valid while writes is unchanged)
}

func (c *pgCursor) query(where string, desc bool, limit int, args ...any) []pair {
	t := c.b.tx
	order := "ASC"
	if desc {
		order = "DESC"
	}
	sql := "SELECT key, value FROM " + t.db.table + " WHERE bucket = $1" + where + " ORDER BY key " + order + fmt.Sprintf(" LIMIT %d", limit)
	rows, err := t.tx.Query(t.ctx, sql, append([]any{c.b.name}, args...)...)
	if err != nil {
		t.fail(err)
		return nil
	}
	var out []pair
	for rows.Next() {
		var p pair
		if err := rows.Scan(&p.k, &p.v); err != nil {
			rows.Close()
			t.fail(err)
			return nil
		}
		p.v = value(p.v)
		out = append(out, p)
	}
	t.fail(rows.Err())
	return out
}

// land puts the cursor on the first of ps (backward: one key read).
func (c *pgCursor) land(ps []pair) ([]byte, []byte) {
	c.ahead, c.end = nil, false
	if len(ps) == 0 {
		c.cur = nil
		return nil, nil
	}
	c.cur = ps[0].k
	return ps[0].k, ps[0].v
}

// forward reads up to limit keys from where and lands on the first; the
// rest are read ahead.
func (c *pgCursor) forward(where string, limit int, args ...any) ([]byte, []byte) {
	ps := c.query(where, false, limit, args...)
	k, v := c.land(ps)
	if k != nil {
		c.ahead = ps[1:]
	}
	c.writes, c.end, c.next = c.b.tx.writes, len(ps) < limit, min(2*limit, readAhead)
	return k, v
}

func (c *pgCursor) First() ([]byte, []byte) {
	return c.forward("", firstAhead)
}

func (c *pgCursor) Last() ([]byte, []byte) {
	return c.land(c.query("", true, 1))
}

func (c *pgCursor) Seek(key []byte) ([]byte, []byte) {
	return c.forward(" AND key >= $2", firstAhead, key)
}

func (c *pgCursor) Next() ([]byte, []byte) {
	if c.cur == nil {
		return nil, nil
	}
	if c.writes == c.b.tx.writes {
		if len(c.ahead) > 0 {
			p := c.ahead[0]
			c.ahead, c.cur = c.ahead[1:], p.k
			return p.k, p.v
		}
		if c.end {
			c.cur = nil
			return nil, nil
		}
	}
	return c.forward(" AND key > $2", max(c.next, firstAhead), c.cur)
}

func (c *pgCursor) Prev() ([]byte, []byte) {
	if c.cur == nil {
		return nil, nil
	}
	return c.land(c.query(" AND key < $2", true, 1, c.cur))
}

func (c *pgCursor) Delete() error {
	if c.cur == nil {
		return errors.New("kv: cursor delete: not on a key")
	}
	return c.b.Delete(c.cur)
}
