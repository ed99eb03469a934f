package kv_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/fstest"
	"time"

	"github.com/sigil-iot/sigil/fleet/storage/boltdb"
	"github.com/sigil-iot/sigil/fleet/storage/kv"
	"github.com/sigil-iot/sigil/fleet/storage/pgtest"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
)

var (
	bucketA = []byte("a")
	bucketB = []byte("b")
	buckets = [][]byte{bucketA, bucketB}
)

func openBolt(t *testing.T) kv.DB {
	t.Helper()
	db, err := boltdb.Open(filepath.Join(t.TempDir(), "kv.db"), boltdb.Schema{Buckets: buckets}, boltdb.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	d := kv.Bolt(db)
	t.Cleanup(func() { d.Close() })
	return d
}

func openPostgres(t *testing.T, srv *pgtest.Server, o ...kv.Options) kv.DB {
	t.Helper()
	pg, err := postgres.Open(t.Context(), srv.NewDatabase(t), postgres.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pg.Close)
	if _, err := pg.Pool().Exec(t.Context(), kv.Schema("kv_test")); err != nil {
		t.Fatal(err)
	}
	d, err := kv.Postgres(pg, "kv_test", o...)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestConformance runs the same operations on both backends and checks
// that they answer alike.
func TestConformance(t *testing.T) {
	srv := pgtest.Start(t)
	for _, b := range []struct {
		name string
		open func(t *testing.T) kv.DB
		once bool // a write's function runs exactly once
	}{
		{"bbolt", openBolt, true},
		{"postgres", func(t *testing.T) kv.DB { return openPostgres(t, srv) }, false},
		{"postgres-serialized", func(t *testing.T) kv.DB { return openPostgres(t, srv, kv.Options{Serialized: true}) }, true},
	} {
		t.Run(b.name, func(t *testing.T) {
			t.Run("order", func(t *testing.T) { testOrder(t, b.open(t)) })
			t.Run("long-scan", func(t *testing.T) { testLongScan(t, b.open(t)) })
			t.Run("rollback", func(t *testing.T) { testRollback(t, b.open(t)) })
			t.Run("sequence", func(t *testing.T) { testSequence(t, b.open(t)) })
			t.Run("concurrent", func(t *testing.T) { testConcurrent(t, b.open(t), b.once) })
			t.Run("write-all", func(t *testing.T) { testWriteAll(t, b.open(t)) })
			t.Run("nested", func(t *testing.T) { testNested(t, b.open(t)) })
			t.Run("clock", func(t *testing.T) { testClock(t, b.open(t), b.name != "bbolt") })
		})
	}
	t.Run("copy", func(t *testing.T) { testCopy(t, openBolt(t), openPostgres(t, srv)) })
	t.Run("copy-all", func(t *testing.T) { testCopyAll(t, openBolt(t), openPostgres(t, srv)) })
	t.Run("copy-nested", func(t *testing.T) { testCopyNested(t, openBolt(t), openPostgres(t, srv)) })
}

// keys are stored out of order; bbolt orders them bytewise.
var keys = [][]byte{{0xff}, {0x00}, []byte("ab"), []byte("a"), []byte("b\x00"), []byte("b"), {0x80, 0x01}}

func fill(t *testing.T, db kv.DB) {
	t.Helper()
	if err := db.Update(t.Context(), func(tx kv.Tx) error {
		for i, k := range keys {
			if err := tx.Bucket(bucketA).Put(k, fmt.Appendf(nil, "v%d", i)); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketB).Put([]byte("empty"), nil)
	}); err != nil {
		t.Fatal(err)
	}
}

func testOrder(t *testing.T, db kv.DB) {
	fill(t, db)
	want := []string{"\x00", "a", "ab", "b", "b\x00", "\x80\x01", "\xff"}
	err := db.View(t.Context(), func(tx kv.Tx) error {
		var got []string
		tx.Bucket(bucketA).ForEach(func(k, v []byte) error { got = append(got, string(k)); return nil })
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("ForEach order %q, want %q", got, want)
		}
		c := tx.Bucket(bucketA).Cursor()
		if k, _ := c.Last(); string(k) != "\xff" {
			t.Errorf("Last = %q", k)
		}
		if k, _ := c.Prev(); string(k) != "\x80\x01" {
			t.Errorf("Prev = %q", k)
		}
		if k, _ := c.Seek([]byte("aa")); string(k) != "ab" {
			t.Errorf("Seek(aa) = %q", k)
		}
		if k, v := c.Seek([]byte("b")); string(k) != "b" || string(v) != "v5" {
			t.Errorf("Seek(b) = %q %q", k, v)
		}
		if k, _ := c.Next(); string(k) != "b\x00" {
			t.Errorf("Next = %q", k)
		}
		if k, _ := c.Seek([]byte{0xff, 0}); k != nil {
			t.Errorf("Seek past the end = %q", k)
		}
		if v := tx.Bucket(bucketA).Get([]byte("zz")); v != nil {
			t.Errorf("Get of a missing key = %q", v)
		}
		if v := tx.Bucket(bucketB).Get([]byte("empty")); v == nil || len(v) != 0 {
			t.Errorf("Get of an empty value = %#v, want empty and not nil", v)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Deleting under a cursor moves on.
	err = db.Update(t.Context(), func(tx kv.Tx) error {
		c := tx.Bucket(bucketA).Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
			if k[0] == 'a' || k[0] == 'b' {
				if err := c.Delete(); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	db.View(t.Context(), func(tx kv.Tx) error {
		n := 0
		tx.Bucket(bucketA).ForEach(func(k, v []byte) error { n++; return nil })
		if n != 3 {
			t.Errorf("%d keys left after deleting a* and b*, want 3", n)
		}
		return nil
	})
}

// testLongScan: cursors over more keys than one read ahead (PostgreSQL
// reads a few keys when a cursor lands, more at each further read): a
// scan sees every key once in order, from First and from a Seek, and
// deleting under a cursor across reads moves on.
func testLongScan(t *testing.T, db kv.DB) {
	const n = 700
	key := func(i int) []byte { return fmt.Appendf(nil, "k%04d", i) }
	if err := db.Update(t.Context(), func(tx kv.Tx) error {
		for i := range n {
			if err := tx.Bucket(bucketA).Put(key(i), key(i)); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	scan := func(tx kv.Tx, from int) (int, error) {
		c := tx.Bucket(bucketA).Cursor()
		k, v := c.First()
		if from > 0 {
			k, v = c.Seek(key(from))
		}
		i := from
		for ; k != nil; k, v = c.Next() {
			if string(k) != string(key(i)) || string(v) != string(key(i)) {
				return i, fmt.Errorf("key %d: %q %q", i, k, v)
			}
			i++
		}
		if k, _ := c.Next(); k != nil {
			return i, fmt.Errorf("Next past the end = %q", k)
		}
		return i, nil
	}
	if err := db.View(t.Context(), func(tx kv.Tx) error {
		for _, from := range []int{0, 3, 250, 699} {
			if i, err := scan(tx, from); err != nil || i != n {
				t.Errorf("scan from %d: ended at %d, %v", from, i, err)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := db.Update(t.Context(), func(tx kv.Tx) error {
		c := tx.Bucket(bucketA).Cursor()
		i := 0
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
			if string(k) != string(key(i)) {
				return fmt.Errorf("deleting: key %d is %q", i, k)
			}
			if i%2 == 1 {
				if err := c.Delete(); err != nil {
					return err
				}
			}
			i++
		}
		if i != n {
			return fmt.Errorf("deleting: %d keys seen, want %d", i, n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	db.View(t.Context(), func(tx kv.Tx) error {
		var left []string
		tx.Bucket(bucketA).ForEach(func(k, _ []byte) error { left = append(left, string(k)); return nil })
		if len(left) != n/2 || left[0] != "k0000" || left[len(left)-1] != string(key(n-2)) {
			t.Errorf("%d keys left after deleting every other, want %d", len(left), n/2)
		}
		return nil
	})
}

var errAbort = errors.New("abort")

// testWriteAll: WriteAll lands every function but the failing ones, each
// once (a counter read from the transaction), and returns each one's own
// error.
func testWriteAll(t *testing.T, db kv.DB) {
	var fns []func(kv.Tx) error
	for i := range 10 {
		fns = append(fns, func(tx kv.Tx) error {
			if i == 3 || i == 7 {
				return fmt.Errorf("write %d: %w", i, errAbort)
			}
			b := tx.Bucket(bucketA)
			var n uint64
			if v := b.Get([]byte("n")); v != nil {
				n = binary.BigEndian.Uint64(v)
			}
			if err := b.Put(fmt.Append(nil, i), []byte{1}); err != nil {
				return err
			}
			return b.Put([]byte("n"), binary.BigEndian.AppendUint64(nil, n+1))
		})
	}
	for i, err := range kv.WriteAll(t.Context(), db, fns) {
		if (i == 3 || i == 7) != errors.Is(err, errAbort) {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	db.View(t.Context(), func(tx kv.Tx) error {
		b := tx.Bucket(bucketA)
		if n := binary.BigEndian.Uint64(b.Get([]byte("n"))); n != 8 {
			t.Errorf("counter %d, want 8 (each successful write once)", n)
		}
		for _, i := range []int{3, 7} {
			if b.Get(fmt.Append(nil, i)) != nil {
				t.Errorf("failed write %d landed", i)
			}
		}
		return nil
	})
}

func testRollback(t *testing.T, db kv.DB) {
	err := db.Update(t.Context(), func(tx kv.Tx) error {
		tx.Bucket(bucketA).Put([]byte("k"), []byte("v"))
		return errAbort
	})
	if !errors.Is(err, errAbort) {
		t.Fatalf("Update = %v, want fn's error", err)
	}
	db.View(t.Context(), func(tx kv.Tx) error {
		if v := tx.Bucket(bucketA).Get([]byte("k")); v != nil {
			t.Errorf("a rolled back Put is visible: %q", v)
		}
		return nil
	})
}

func testSequence(t *testing.T, db kv.DB) {
	for want := uint64(1); want <= 3; want++ {
		var got uint64
		if err := db.Update(t.Context(), func(tx kv.Tx) (err error) {
			got, err = tx.Bucket(bucketA).NextSequence()
			return err
		}); err != nil || got != want {
			t.Fatalf("NextSequence = %d, %v; want %d", got, err, want)
		}
	}
	db.View(t.Context(), func(tx kv.Tx) error {
		if s := tx.Bucket(bucketA).Sequence(); s != 3 {
			t.Errorf("Sequence = %d, want 3", s)
		}
		if s := tx.Bucket(bucketB).Sequence(); s != 0 {
			t.Errorf("Sequence of another bucket = %d, want 0", s)
		}
		return nil
	})
}

// testConcurrent: concurrent read-modify-writes of one key all land
// (once: without a lock of their own, each function running once).
func testConcurrent(t *testing.T, db kv.DB, once bool) {
	const n = 16
	var wg sync.WaitGroup
	var runs atomic.Int64
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			errs[i] = db.Update(t.Context(), func(tx kv.Tx) error {
				runs.Add(1)
				if !once {
					if err := tx.Lock("counter"); err != nil {
						return err
					}
				}
				b := tx.Bucket(bucketA)
				v := append(bytes.Clone(b.Get([]byte("n"))), 'x')
				return b.Put([]byte("n"), v)
			})
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	db.View(t.Context(), func(tx kv.Tx) error {
		if v := tx.Bucket(bucketA).Get([]byte("n")); len(v) != n {
			t.Errorf("%d increments landed of %d", len(v), n)
		}
		return nil
	})
	if once && runs.Load() != n {
		t.Errorf("%d runs of %d writes' functions, want each once", runs.Load(), n)
	}
}

func testCopy(t *testing.T, src, dst kv.DB) {
	fill(t, src)
	// More than one batch.
	if err := src.Update(t.Context(), func(tx kv.Tx) error {
		for i := range 2500 {
			if err := tx.Bucket(bucketB).Put(fmt.Appendf(nil, "k%05d", i), []byte{byte(i)}); err != nil {
				return err
			}
		}
		_, err := tx.Bucket(bucketB).NextSequence()
		return err
	}); err != nil {
		t.Fatal(err)
	}
	st, err := kv.Copy(context.Background(), dst, src, buckets)
	if err != nil {
		t.Fatal(err)
	}
	got, err := kv.Digest(t.Context(), dst, buckets)
	if err != nil {
		t.Fatal(err)
	}
	if got.Digest != st.Digest || got.Keys["b"] != 2501 || got.Keys["a"] != len(keys) {
		t.Fatalf("copy: source %v, target %v", st.Keys, got.Keys)
	}
	// A change on one side shows in the digest.
	dst.Update(t.Context(), func(tx kv.Tx) error { return tx.Bucket(bucketB).Put([]byte("k00007"), []byte("x")) })
	if got, _ = kv.Digest(t.Context(), dst, buckets); got.Digest == st.Digest {
		t.Fatal("digest unchanged after a value changed")
	}
}

// testCopyAll: buckets made as records arrive (one per device) copy
// without naming them, sequences and counts included.
func testCopyAll(t *testing.T, src, dst kv.DB) {
	for i := range 3 {
		if err := src.Update(t.Context(), func(tx kv.Tx) error {
			b, err := tx.CreateBucketIfNotExists(fmt.Appendf(nil, "dev-%d", i))
			if err != nil {
				return err
			}
			for range i + 1 {
				seq, err := b.NextSequence()
				if err != nil {
					return err
				}
				if err := b.Put(fmt.Appendf(nil, "%08d", seq), []byte("r")); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	want, err := kv.Copy(t.Context(), dst, src, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := kv.DigestAll(t.Context(), dst)
	if err != nil {
		t.Fatal(err)
	}
	if got.Digest != want.Digest || got.Keys["dev-2"] != 3 {
		t.Fatalf("copy of every bucket: source %v, target %v", want.Keys, got.Keys)
	}
	dst.View(t.Context(), func(tx kv.Tx) error {
		if b := tx.Bucket([]byte("dev-2")); b.Len() != 3 || b.Sequence() != 3 {
			t.Errorf("dev-2 in the target: %d keys, sequence %d", b.Len(), b.Sequence())
		}
		return nil
	})
}

// fillNested makes buckets nested in a (a/j1, a/j2 holding a/j2/x) and
// in b (b/j3, with more keys than a copy batch), beside a's own keys.
func fillNested(t *testing.T, db kv.DB) {
	t.Helper()
	err := db.Update(t.Context(), func(tx kv.Tx) error {
		a := tx.Bucket(bucketA)
		if err := a.Put([]byte("own"), []byte("v")); err != nil {
			return err
		}
		for _, j := range []string{"j2", "j1"} {
			n, err := a.CreateBucketIfNotExists([]byte(j))
			if err != nil {
				return err
			}
			if err := n.Put([]byte("k-"+j), []byte(j)); err != nil {
				return err
			}
		}
		x, err := a.Bucket([]byte("j2")).CreateBucketIfNotExists([]byte("x"))
		if err != nil {
			return err
		}
		if err := x.Put([]byte("deep"), []byte("1")); err != nil {
			return err
		}
		if _, err := x.NextSequence(); err != nil {
			return err
		}
		j3, err := tx.Bucket(bucketB).CreateBucketIfNotExists([]byte("j3"))
		if err != nil {
			return err
		}
		for i := range 1500 {
			if err := j3.Put(fmt.Appendf(nil, "k%05d", i), []byte{byte(i)}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// testNested: nested buckets list in order, keep their keys apart from
// their parent's and delete with what they hold.
func testNested(t *testing.T, db kv.DB) {
	fillNested(t, db)
	err := db.View(t.Context(), func(tx kv.Tx) error {
		a := tx.Bucket(bucketA)
		var got []string
		if err := a.ForEachBucket(func(n []byte) error { got = append(got, string(n)); return nil }); err != nil {
			return err
		}
		if fmt.Sprint(got) != "[j1 j2]" {
			t.Errorf("nested in a: %v, want [j1 j2]", got)
		}
		if v := a.Bucket([]byte("j1")).Get([]byte("k-j1")); string(v) != "j1" {
			t.Errorf("a/j1 k-j1 = %q", v)
		}
		if v := a.Get([]byte("k-j1")); v != nil {
			t.Errorf("a/j1's key read in a: %q", v)
		}
		x := a.Bucket([]byte("j2")).Bucket([]byte("x"))
		if string(x.Get([]byte("deep"))) != "1" || x.Sequence() != 1 {
			t.Errorf("a/j2/x: %q, sequence %d", x.Get([]byte("deep")), x.Sequence())
		}
		var top []string
		if err := tx.ForEachBucket(func(n []byte) error { top = append(top, string(n)); return nil }); err != nil {
			return err
		}
		if fmt.Sprint(top) != "[a b]" {
			t.Errorf("top-level buckets: %v, want [a b]", top)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(t.Context(), func(tx kv.Tx) error { return tx.Bucket(bucketA).DeleteBucket([]byte("j2")) }); err != nil {
		t.Fatal(err)
	}
	db.View(t.Context(), func(tx kv.Tx) error {
		a := tx.Bucket(bucketA)
		var got []string
		a.ForEachBucket(func(n []byte) error { got = append(got, string(n)); return nil })
		if fmt.Sprint(got) != "[j1]" {
			t.Errorf("nested in a after deleting j2: %v", got)
		}
		if j2 := a.Bucket([]byte("j2")); j2 != nil && (j2.Get([]byte("k-j2")) != nil || j2.Bucket([]byte("x")).Get([]byte("deep")) != nil) {
			t.Error("a/j2 kept keys after DeleteBucket")
		}
		if string(a.Get([]byte("own"))) != "v" {
			t.Error("a lost its own key")
		}
		return nil
	})
}

// testCopyNested: Copy and Digest follow nested buckets; Clear and Empty
// see them.
func testCopyNested(t *testing.T, src, dst kv.DB) {
	fillNested(t, src)
	want, err := kv.Copy(t.Context(), dst, src, buckets)
	if err != nil {
		t.Fatal(err)
	}
	got, err := kv.Digest(t.Context(), dst, buckets)
	if err != nil {
		t.Fatal(err)
	}
	if got.Digest != want.Digest || want.Keys["a"] != 4 || want.Keys["b"] != 1500 {
		t.Fatalf("copy: source %v, target %v (want a 4, b 1500)", want.Keys, got.Keys)
	}
	dst.Update(t.Context(), func(tx kv.Tx) error {
		return tx.Bucket(bucketA).Bucket([]byte("j2")).Bucket([]byte("x")).Put([]byte("deep"), []byte("2"))
	})
	if got, _ = kv.Digest(t.Context(), dst, buckets); got.Digest == want.Digest {
		t.Fatal("digest unchanged after a nested value changed")
	}
	if err := dst.Update(t.Context(), func(tx kv.Tx) error { return tx.Bucket(bucketA).Delete([]byte("own")) }); err != nil {
		t.Fatal(err)
	}
	if empty, err := kv.Empty(t.Context(), dst, [][]byte{bucketA}); err != nil || empty {
		t.Fatalf("a holding only nested buckets: empty %v, %v", empty, err)
	}
	if err := kv.Clear(t.Context(), dst, buckets); err != nil {
		t.Fatal(err)
	}
	if empty, err := kv.Empty(t.Context(), dst, buckets); err != nil || !empty {
		t.Fatalf("after Clear: empty %v, %v", empty, err)
	}
}

// testClock: Now gives the database's clock on PostgreSQL (in reads and
// writes, never going back), nothing on bbolt.
func testClock(t *testing.T, db kv.DB, shared bool) {
	var last time.Time
	for _, run := range []func(context.Context, func(kv.Tx) error) error{db.View, db.Update, db.View} {
		err := run(t.Context(), func(tx kv.Tx) error {
			now, ok, err := kv.Now(tx)
			if err != nil || ok != shared {
				return fmt.Errorf("Now = %v, %v, %v; want ok %v", now, ok, err, shared)
			}
			if shared && (now.Before(last) || now.Location() != time.UTC) {
				return fmt.Errorf("Now = %v after %v: want UTC, never going back", now, last)
			}
			last = now
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestPostgresMigrated: PostgresMigrated applies a store's migrations
// once (a second open keeps the records) and returns its buckets; its
// errors, a failed migration's or an invalid table's, start with the
// store's component.
func TestPostgresMigrated(t *testing.T) {
	srv := pgtest.Start(t)
	pg, err := postgres.Open(t.Context(), srv.NewDatabase(t), postgres.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pg.Close)
	migrations := fstest.MapFS{"migrations/0001_kv.sql": {Data: []byte(kv.Schema("kv_migrated"))}}
	d, err := kv.PostgresMigrated(t.Context(), pg, "kvtest", migrations, "kv_migrated", kv.Options{Serialized: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Update(t.Context(), func(tx kv.Tx) error { return tx.Bucket(bucketA).Put([]byte("k"), []byte("v")) }); err != nil {
		t.Fatal(err)
	}
	d, err = kv.PostgresMigrated(t.Context(), pg, "kvtest", migrations, "kv_migrated")
	if err != nil {
		t.Fatalf("a second open: %v", err)
	}
	d.View(t.Context(), func(tx kv.Tx) error {
		if v := tx.Bucket(bucketA).Get([]byte("k")); string(v) != "v" {
			t.Errorf("after a second open: %q, want the record", v)
		}
		return nil
	})
	if v, err := pg.Version(t.Context(), "kvtest"); err != nil || v != 1 {
		t.Errorf("kvtest's version: %d, %v; want 1", v, err)
	}

	bad := fstest.MapFS{"migrations/0001_bad.sql": {Data: []byte("CREATE TABLE")}}
	if _, err := kv.PostgresMigrated(t.Context(), pg, "kvbad", bad, "kv_bad"); err == nil || !strings.HasPrefix(err.Error(), "kvbad: ") {
		t.Errorf("a failed migration: %v, want an error starting with the component", err)
	}
	if _, err := kv.PostgresMigrated(t.Context(), pg, "kvtest", migrations, "Not-A-Table"); err == nil || !strings.HasPrefix(err.Error(), "kvtest: kv: ") {
		t.Errorf("an invalid table: %v, want an error starting with the component", err)
	}
}
