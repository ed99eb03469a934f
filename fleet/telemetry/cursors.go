package telemetry

import (
	"context"
	"embed"
	"encoding/json"
	"fmt"

	"github.com/sigil-iot/sigil/fleet/storage/boltdb"
	"github.com/sigil-iot/sigil/fleet/storage/kv"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
)

// File is the cursor store's file in the fleet's data directory.
const File = "telemetry.db"

// CursorStore keeps telemetry cursors (Cursors), so that a restarted
// fleet still ingests every point exactly once, and a few named flags of
// the fleet's telemetry and alerting (Flag): in a bbolt file
// (OpenCursors) or in PostgreSQL (OpenCursorsPostgres).
type CursorStore struct{ db kv.DB }

var _ Cursors = (*CursorStore)(nil)

var (
	bucketCursors = []byte("cursors")
	bucketMeta    = []byte("meta")
)

// Buckets are the store's buckets, in the bbolt file and in PostgreSQL:
// what sigil migrate copies.
var Buckets = [][]byte{bucketCursors, bucketMeta}

// Table is the PostgreSQL table holding the buckets (kv.Postgres).
const Table = "telemetry_kv"

// migrations are the store's tables in PostgreSQL (component "telemetry"
// in schema_migrations).
//
//go:embed migrations/*.sql
var migrations embed.FS

// OpenCursors opens (creating it) the cursor store at path.
func OpenCursors(path string) (*CursorStore, error) {
	db, err := boltdb.Open(path, boltdb.Schema{Buckets: Buckets},
		boltdb.Options{Name: "telemetry: cursor store"})
	if err != nil {
		return nil, err
	}
	return &CursorStore{db: kv.Bolt(db)}, nil
}

// OpenCursorsPostgres opens the cursor store in the PostgreSQL database
// db, bringing its tables up to date first. Each write is one key in a
// serializable transaction: the replicas sharing db need no lock, and
// their ingesters compare and set each cursor (SwapCursor,
// Config.SharedCursors). Close leaves db open.
func OpenCursorsPostgres(ctx context.Context, db *postgres.DB) (*CursorStore, error) {
	k, err := kv.PostgresMigrated(ctx, db, "telemetry", migrations, Table)
	if err != nil {
		return nil, err
	}
	return &CursorStore{db: k}, nil
}

// Close closes the file.
func (c *CursorStore) Close() error { return c.db.Close() }

// Cursor returns a device's stored cursor.
func (c *CursorStore) Cursor(ctx context.Context, deviceID string) (Cursor, bool, error) {
	var cur Cursor
	var ok bool
	err := c.db.View(ctx, func(tx kv.Tx) error {
		cur, ok = Cursor{}, false
		v := tx.Bucket(bucketCursors).Get([]byte(deviceID))
		if v == nil {
			return nil
		}
		ok = true
		return json.Unmarshal(v, &cur)
	})
	if err != nil {
		return Cursor{}, false, fmt.Errorf("telemetry: cursor of %s: %w", deviceID, err)
	}
	return cur, ok, nil
}

// SetCursor stores a device's cursor; concurrent calls share one commit.
func (c *CursorStore) SetCursor(ctx context.Context, deviceID string, cur Cursor) error {
	v, err := json.Marshal(cur)
	if err != nil {
		return err
	}
	return c.db.Write(ctx, func(tx kv.Tx) error {
		return tx.Bucket(bucketCursors).Put([]byte(deviceID), v)
	})
}

var _ CursorSwapper = (*CursorStore)(nil)

// SwapCursor stores next as a device's cursor if the stored one is old
// (a device without one has the zero Cursor), in one transaction (on
// PostgreSQL a serializable one: of the replicas swapping from the same
// cursor at once, one succeeds and the others find its cursor), and
// returns next and true; otherwise it returns the stored cursor and
// false. When next is old it only reads.
func (c *CursorStore) SwapCursor(ctx context.Context, deviceID string, old, next Cursor) (Cursor, bool, error) {
	v, err := json.Marshal(next)
	if err != nil {
		return Cursor{}, false, err
	}
	unchanged := old.equal(next)
	var found Cursor
	var swapped bool
	fn := func(tx kv.Tx) error {
		found, swapped = Cursor{}, false
		if raw := tx.Bucket(bucketCursors).Get([]byte(deviceID)); raw != nil {
			if err := json.Unmarshal(raw, &found); err != nil {
				return err
			}
		}
		if !found.equal(old) {
			return nil
		}
		swapped = true
		if unchanged {
			return nil
		}
		return tx.Bucket(bucketCursors).Put([]byte(deviceID), v)
	}
	if unchanged {
		err = c.db.View(ctx, fn)
	} else {
		err = c.db.Write(ctx, fn)
	}
	if err != nil {
		return Cursor{}, false, fmt.Errorf("telemetry: swap cursor of %s: %w", deviceID, err)
	}
	if swapped {
		return next, true, nil
	}
	return found, false, nil
}

// Flag reports whether the flag name was set.
func (c *CursorStore) Flag(ctx context.Context, name string) (bool, error) {
	var set bool
	err := c.db.View(ctx, func(tx kv.Tx) error {
		set = tx.Bucket(bucketMeta).Get([]byte(name)) != nil
		return nil
	})
	return set, err
}

// SetFlag sets the flag name for good.
func (c *CursorStore) SetFlag(ctx context.Context, name string) error {
	return c.db.Update(ctx, func(tx kv.Tx) error {
		return tx.Bucket(bucketMeta).Put([]byte(name), []byte{1})
	})
}
