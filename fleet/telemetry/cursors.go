package telemetry

import (
	"encoding/json"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"github.com/sigil-iot/sigil/fleet/storage/boltdb"
)

// CursorStore keeps telemetry cursors in a bbolt file (Cursors), so that
// a restarted fleet still ingests every point exactly once, and a few
// named flags of the fleet's telemetry and alerting (Flag).
type CursorStore struct{ db *boltdb.DB }

var _ Cursors = (*CursorStore)(nil)

var (
	bucketCursors = []byte("cursors")
	bucketMeta    = []byte("meta")
)

// OpenCursors opens (creating it) the cursor store at path.
func OpenCursors(path string) (*CursorStore, error) {
	db, err := boltdb.Open(path, boltdb.Schema{Buckets: [][]byte{bucketCursors, bucketMeta}},
		boltdb.Options{Name: "telemetry: cursor store"})
	if err != nil {
		return nil, err
	}
	return &CursorStore{db: db}, nil
}

// Close closes the file.
func (c *CursorStore) Close() error { return c.db.Close() }

// Cursor returns a device's stored cursor.
func (c *CursorStore) Cursor(deviceID string) (Cursor, bool, error) {
	var cur Cursor
	var ok bool
	err := c.db.View(func(tx *bolt.Tx) error {
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
func (c *CursorStore) SetCursor(deviceID string, cur Cursor) error {
	v, err := json.Marshal(cur)
	if err != nil {
		return err
	}
	return c.db.Write(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketCursors).Put([]byte(deviceID), v)
	})
}

// Flag reports whether the flag name was set.
func (c *CursorStore) Flag(name string) (bool, error) {
	var set bool
	err := c.db.View(func(tx *bolt.Tx) error {
		set = tx.Bucket(bucketMeta).Get([]byte(name)) != nil
		return nil
	})
	return set, err
}

// SetFlag sets the flag name for good.
func (c *CursorStore) SetFlag(name string) error {
	return c.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put([]byte(name), []byte{1})
	})
}
