package boltdb

import (
	"errors"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

var errTest = errors.New("test: locked")

func version(t *testing.T, db *DB, s Schema) uint64 {
	t.Helper()
	var v uint64
	if err := db.View(func(tx *bolt.Tx) error {
		var err error
		v, err = s.VersionOf(tx)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return v
}

// TestSchemaVersions: a new file is created with its buckets, runs every
// step and records the version; an older file runs only the steps above
// its version; a newer or malformed one is refused, and so is an older
// one no step leads from.
func TestSchemaVersions(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.db")
	var ran []uint64
	step := func(v uint64) Step {
		return Step{Version: v, Apply: func(tx *bolt.Tx) error { ran = append(ran, v); return nil }}
	}
	v1 := Schema{Buckets: [][]byte{[]byte("a")}, Version: 1}
	db, err := Open(path, v1, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got := version(t, db, v1); got != 1 {
		t.Fatalf("new file records version %d, want 1", got)
	}
	db.View(func(tx *bolt.Tx) error {
		if tx.Bucket([]byte("a")) == nil {
			t.Error("bucket a not created")
		}
		return nil
	})
	db.Close()

	v3 := Schema{Version: 3, Steps: []Step{step(1), step(2), step(3)}}
	if db, err = Open(path, v3, Options{}); err != nil {
		t.Fatal(err)
	}
	if got := version(t, db, v3); got != 3 || len(ran) != 2 || ran[0] != 2 || ran[1] != 3 {
		t.Fatalf("after migration: version %d, steps run %v, want 3 and [2 3]", got, ran)
	}
	db.Close()

	ran = nil
	if db, err = Open(path, v3, Options{}); err != nil || len(ran) != 0 {
		t.Fatalf("reopen at the same version: %v, steps run %v", err, ran)
	}
	db.Close()

	if _, err := Open(path, Schema{Version: 2}, Options{Name: "x"}); !errors.Is(err, ErrSchema) {
		t.Fatalf("file newer than the build: %v, want ErrSchema", err)
	}
	gap := filepath.Join(t.TempDir(), "gap.db")
	db, _ = Open(gap, v1, Options{})
	db.Close()
	if _, err := Open(gap, Schema{Version: 3, Steps: []Step{step(3)}}, Options{}); !errors.Is(err, ErrSchema) {
		t.Fatalf("no step from 1 to 2: %v, want ErrSchema", err)
	}

	ran = nil
	fresh := filepath.Join(t.TempDir(), "fresh.db")
	if db, err = Open(fresh, v3, Options{}); err != nil {
		t.Fatal(err)
	}
	if len(ran) != 3 {
		t.Fatalf("new file ran steps %v, want all three", ran)
	}
	db.Close()
}

// TestByteVersion reads and writes the one-byte format and refuses the
// other width.
func TestByteVersion(t *testing.T) {
	path := filepath.Join(t.TempDir(), "b.db")
	s := Schema{Version: 1, ByteVersion: true}
	db, err := Open(path, s, Options{})
	if err != nil {
		t.Fatal(err)
	}
	db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get(keySchema); len(v) != 1 || v[0] != 1 {
			t.Errorf("stored %x, want 01", v)
		}
		return nil
	})
	db.Close()
	if _, err := Open(path, Schema{Version: 1}, Options{}); !errors.Is(err, ErrSchema) {
		t.Fatalf("8-byte reader of a 1-byte version: %v, want ErrSchema", err)
	}
}

// TestLocked: a file another handle holds fails with the store's
// sentinel once the timeout passed.
func TestLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "l.db")
	db, err := Open(path, Schema{}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := Open(path, Schema{}, Options{Timeout: 20 * time.Millisecond}); !errors.Is(err, ErrLocked) {
		t.Fatalf("second open: %v, want ErrLocked", err)
	}
	if _, err := Open(path, Schema{}, Options{Timeout: 20 * time.Millisecond, Locked: errTest}); !errors.Is(err, errTest) {
		t.Fatalf("second open: %v, want the store's sentinel", err)
	}
}

// TestInitFailureCloses: an Init error fails Open and releases the file.
func TestInitFailureCloses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "i.db")
	boom := errors.New("boom")
	if _, err := Open(path, Schema{Init: func(*bolt.Tx) error { return boom }}, Options{Name: "x"}); !errors.Is(err, boom) {
		t.Fatalf("open: %v, want boom", err)
	}
	db, err := Open(path, Schema{}, Options{Timeout: 20 * time.Millisecond})
	if err != nil {
		t.Fatalf("file still held after a failed open: %v", err)
	}
	db.Close()
}
