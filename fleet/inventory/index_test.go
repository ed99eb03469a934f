package inventory_test

import (
	"encoding/binary"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/inventory/inventorytest"
)

// TestIndexesBuiltForOldFiles: a file written before the indexes (schema
// 1, no index buckets) gets them when opened: queries and counts see its
// devices.
func TestIndexesBuiltForOldFiles(t *testing.T) {
	path := filepath.Join(t.TempDir(), "inv.db")
	s := open(t, path, inventory.WithNoSync())
	inventorytest.RandomFleet(t, s, 60, rand.New(rand.NewPCG(3, 4)))
	devs := inventorytest.All(t, s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Make it look like a schema 1 file: no index buckets, no counts.
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		var drop [][]byte
		_ = tx.ForEach(func(name []byte, _ *bolt.Bucket) error {
			if strings.HasPrefix(string(name), "ix.") {
				drop = append(drop, slices.Clone(name))
			}
			return nil
		})
		for _, name := range drop {
			if err := tx.DeleteBucket(name); err != nil {
				return err
			}
		}
		meta := tx.Bucket([]byte("meta"))
		c := meta.Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
			if strings.HasPrefix(string(k), "count.") {
				if err := c.Delete(); err != nil {
					return err
				}
			}
		}
		return meta.Put([]byte("schema"), binary.BigEndian.AppendUint64(nil, 1))
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	s = open(t, path, inventory.WithNoSync())
	defer s.Close()
	q := inventory.Query{Order: inventory.FieldLastSeen, Desc: true, Where: map[inventory.Field]string{inventory.FieldState: "active"}}
	if got, want := inventorytest.PageAll(t, s, q), inventorytest.Brute(devs, q); !slices.Equal(got, want) || len(want) == 0 {
		t.Fatalf("after the upgrade: %v, want %v", got, want)
	}
	if n, err := s.Count(t.Context(), nil); err != nil || n != len(devs) {
		t.Fatalf("Count = %d, %v; want %d", n, err, len(devs))
	}
}
