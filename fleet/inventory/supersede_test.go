package inventory

import (
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/sigil-iot/sigil/internal/wait"
)

// oldSerial and newSerial are the serials of device i's certificates
// before and after its renewal.
func oldSerial(i int) string { return fmt.Sprintf("%08x", 2*i+1) }
func newSerial(i int) string { return fmt.Sprintf("%08x", 2*i+2) }

// renewed writes n active devices, each holding the certificate it had
// (oldSerial) and the one a renewal replaced it with (newSerial, current),
// in one transaction: what a forced re-key leaves before the devices
// reconnect.
func renewed(tb testing.TB, s *Store, n int) []string {
	tb.Helper()
	now := time.Now()
	ids := make([]string, n)
	err := s.boltDB().Update(func(tx *bolt.Tx) error {
		for i := range ids {
			ids[i] = crashID(i + 1)
			d := &Device{ID: ids[i], EKFingerprint: crashEK(i + 1), State: StateActive, Model: "gw-1"}
			d.Issued(oldSerial(i), now, now.Add(24*time.Hour))
			d.Issued(newSerial(i), now, now.Add(24*time.Hour))
			if err := putDevice(boltTx{tx: tx}, nil, d, now); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	return ids
}

// txID is the ID of the last committed write transaction.
func txID(tb testing.TB, s *Store) int {
	tb.Helper()
	var id int
	if err := s.boltDB().View(func(tx *bolt.Tx) error { id = tx.ID(); return nil }); err != nil {
		tb.Fatal(err)
	}
	return id
}

// TestRevokeSupersededGroupCommits: the reconnects of devices that renewed
// share transactions (and fsyncs) as renewal writes do: reconnects that
// arrive while a write is in flight are committed together, in one
// transaction here. A reconnect with nothing to revoke (a device that did
// not renew, or already connected with its new certificate) writes
// nothing.
func TestRevokeSupersededGroupCommits(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "inv.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const n = 32
	ids := renewed(t, s, n)

	// A write in flight holds the writer; the reconnects arrive meanwhile
	// and, batched, wait for one another (the batch runs when all n have
	// joined, however slowly they arrive).
	s.boltDB().MaxBatchSize, s.boltDB().MaxBatchDelay = n, time.Hour
	before := txID(t, s)
	entered, release := make(chan struct{}), make(chan struct{})
	held := make(chan error, 1)
	go func() {
		held <- s.boltDB().Write(func(*bolt.Tx) error { close(entered); <-release; return nil })
	}()
	<-entered
	var wg sync.WaitGroup
	revoked := make([][]string, n)
	errs := make([]error, n)
	for i, id := range ids {
		wg.Go(func() { revoked[i], errs[i] = s.RevokeSuperseded(t.Context(), id, newSerial(i)) })
	}
	if !wait.Poll(wait.Timeout, func() bool { return s.boltDB().InFlight() >= n+1 }) {
		joined := s.boltDB().InFlight() - 1
		close(release)
		wg.Wait()
		t.Fatalf("%d of %d reconnects joined the group commit; the others wrote alone (%d transactions for %d reconnects)",
			joined, n, txID(t, s)-before-1, n)
	}
	close(release)
	wg.Wait()
	if err := <-held; err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if errs[i] != nil || len(revoked[i]) != 1 || revoked[i][0] != oldSerial(i) {
			t.Fatalf("reconnect %d revoked %v, %v; want [%s]", i, revoked[i], errs[i], oldSerial(i))
		}
	}
	if got := txID(t, s) - before; got != 2 {
		t.Fatalf("%d transactions for one write and %d reconnects, want 2", got, n)
	}
	for i, id := range ids {
		d, err := s.Device(t.Context(), id)
		if err != nil || !d.IsRevoked(oldSerial(i)) || !d.Admits(newSerial(i), time.Now()) {
			t.Fatalf("device %s after reconnecting: %+v, %v", id, d, err)
		}
	}
	rs, err := s.Revocations(t.Context(), time.Now())
	if err != nil || len(rs) != n {
		t.Fatalf("%d revocations listed, want %d (%v)", len(rs), n, err)
	}

	// Reconnecting again: nothing left to revoke, nothing written.
	before = txID(t, s)
	for i, id := range ids {
		if got, err := s.RevokeSuperseded(t.Context(), id, newSerial(i)); err != nil || len(got) != 0 {
			t.Fatalf("second reconnect of %s revoked %v, %v", id, got, err)
		}
	}
	if got := txID(t, s) - before; got != 0 {
		t.Fatalf("%d transactions for %d reconnects with nothing to revoke, want 0", got, n)
	}
	if _, err := s.RevokeSuperseded(t.Context(), crashID(n+1), newSerial(n)); err == nil {
		t.Fatal("an unknown device's reconnect succeeded")
	}
}

// BenchmarkRevokeSuperseded measures the fsync'd writes of devices that
// reconnect with their renewed certificate after a forced re-key: each
// reconnect revokes the certificate its renewal replaced. The reconnects
// run on the sub-benchmark's number of goroutines, as the broker's
// connection handlers call Store.RevokeSuperseded; commits/reconnect is
// the share of a bbolt commit (an fsync) each costs. "unchanged"
// reconnects a device that has nothing left to revoke.
func BenchmarkRevokeSuperseded(b *testing.B) {
	for _, conc := range []int{1, 16, 64, 256} {
		b.Run(fmt.Sprintf("reconnects=%d", conc), func(b *testing.B) {
			s, err := Open(filepath.Join(b.TempDir(), "inv.db"))
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			ids := renewed(b, s, b.N)
			var next atomic.Int64
			var wg sync.WaitGroup
			tx0 := txID(b, s)
			b.ResetTimer()
			for range conc {
				wg.Go(func() {
					for i := next.Add(1) - 1; i < int64(len(ids)); i = next.Add(1) - 1 {
						if got, err := s.RevokeSuperseded(b.Context(), ids[i], newSerial(int(i))); err != nil || len(got) != 1 {
							b.Errorf("reconnect %d revoked %v, %v", i, got, err)
							return
						}
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "reconnects/s")
			b.ReportMetric(float64(txID(b, s)-tx0)/float64(b.N), "commits/reconnect")
		})
	}
	b.Run("unchanged", func(b *testing.B) {
		s, err := Open(filepath.Join(b.TempDir(), "inv.db"))
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		ids := renewed(b, s, 1)
		if _, err := s.RevokeSuperseded(b.Context(), ids[0], newSerial(0)); err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			if got, err := s.RevokeSuperseded(b.Context(), ids[0], newSerial(0)); err != nil || len(got) != 0 {
				b.Fatalf("revoked %v, %v", got, err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "reconnects/s")
	})
}
