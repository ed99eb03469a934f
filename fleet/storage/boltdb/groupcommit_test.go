package boltdb

import (
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	bolt "go.etcd.io/bbolt"
)

func open(t testing.TB) *DB {
	t.Helper()
	db, err := Open(filepath.Join(t.TempDir(), "db"), Schema{}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// TestConcurrentWritesAllLand: every concurrent write is applied exactly
// once (counters read from the transaction), and a failing write returns
// its own error without losing the others.
func TestConcurrentWritesAllLand(t *testing.T) {
	db := open(t)
	w := db
	boom := errors.New("boom")
	var wg sync.WaitGroup
	errs := make([]error, 64)
	for i := range 64 {
		wg.Go(func() {
			errs[i] = w.Write(func(tx *bolt.Tx) error {
				if i == 13 {
					return boom
				}
				return countWrite(tx, i)
			})
		})
	}
	wg.Wait()
	for i, err := range errs {
		if (i == 13) != errors.Is(err, boom) {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("c"))
		if n := binary.BigEndian.Uint64(b.Get([]byte("n"))); n != 63 {
			t.Fatalf("counter %d, want 63 (each successful write once)", n)
		}
		return nil
	})
}

// TestWriteAllIsolatesFailures: WriteAll lands every write but the
// failing ones, each once (a counter read from the transaction), in one
// transaction when none fails, and returns each write's own error.
func TestWriteAllIsolatesFailures(t *testing.T) {
	db := open(t)
	w := db
	boom := errors.New("boom")
	var fns []func(*bolt.Tx) error
	for i := range 10 {
		fns = append(fns, func(tx *bolt.Tx) error {
			if i == 3 || i == 7 {
				return fmt.Errorf("write %d: %w", i, boom)
			}
			return countWrite(tx, i)
		})
	}
	errs := w.WriteAll(fns)
	for i, err := range errs {
		if (i == 3 || i == 7) != errors.Is(err, boom) {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("c"))
		if n := binary.BigEndian.Uint64(b.Get([]byte("n"))); n != 8 {
			t.Fatalf("counter %d, want 8 (each successful write once)", n)
		}
		for _, i := range []int{3, 7} {
			if b.Get([]byte(fmt.Sprint(i))) != nil {
				t.Fatalf("failed write %d landed", i)
			}
		}
		return nil
	})
	txs := map[int]bool{}
	var same []func(*bolt.Tx) error
	for range 5 {
		same = append(same, func(tx *bolt.Tx) error { txs[tx.ID()] = true; return nil })
	}
	for i, err := range w.WriteAll(same) {
		if err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	if len(txs) != 1 {
		t.Fatalf("%d transactions for writes that all succeed, want 1", len(txs))
	}
}

// BenchmarkWrite compares one fsync per write with group commit, at 1 and
// 16 concurrent writers: the ratio is what the fleet's renewal path gains
// when several renewals are in flight.
func BenchmarkWrite(b *testing.B) {
	for _, writers := range []int{1, 16} {
		for _, mode := range []string{"update", "groupcommit"} {
			b.Run(fmt.Sprintf("%s/writers=%d", mode, writers), func(b *testing.B) {
				db := open(b)
				w := db
				put := func(i int) error {
					fn := func(tx *bolt.Tx) error {
						bk, err := tx.CreateBucketIfNotExists([]byte("b"))
						if err != nil {
							return err
						}
						return bk.Put(binary.BigEndian.AppendUint64(nil, uint64(i)), make([]byte, 200))
					}
					if mode == "update" {
						return db.Update(fn)
					}
					return w.Write(fn)
				}
				var next sync.Mutex
				i := 0
				b.ResetTimer()
				var wg sync.WaitGroup
				for range writers {
					wg.Go(func() {
						for {
							next.Lock()
							if i >= b.N {
								next.Unlock()
								return
							}
							i++
							n := i
							next.Unlock()
							if err := put(n); err != nil {
								b.Error(err)
								return
							}
						}
					})
				}
				wg.Wait()
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "writes/s")
			})
		}
	}
}

// countWrite records write i in bucket "c" (a key of its own) and counts
// it in the counter "n" it reads from the transaction.
func countWrite(tx *bolt.Tx, i int) error {
	b, err := tx.CreateBucketIfNotExists([]byte("c"))
	if err != nil {
		return err
	}
	var n uint64
	if v := b.Get([]byte("n")); v != nil {
		n = binary.BigEndian.Uint64(v)
	}
	if err := b.Put([]byte(fmt.Sprint(i)), []byte{1}); err != nil {
		return err
	}
	return b.Put([]byte("n"), binary.BigEndian.AppendUint64(nil, n+1))
}
