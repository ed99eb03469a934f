package inventory

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/internal/crashtest"
	bolt "go.etcd.io/bbolt"
)

const crashEnv = "SIGIL_INVENTORY_CRASH_WRITER"

func crashID(i int) string { return fmt.Sprintf("%032x", i) }
func crashEK(i int) string { return fmt.Sprintf("%064x", i+1) }

// TestCrashWriter is the helper process of TestCrashSafety: it writes until
// killed, reporting each committed write on stdout.
func TestCrashWriter(t *testing.T) {
	path, ok := crashtest.Arg(crashEnv)
	if !ok {
		t.Skip("helper process for TestCrashSafety")
	}
	s, err := Open(path)
	crashtest.Check(err)
	for i := 0; ; i++ {
		d := &Device{ID: crashID(i), EKFingerprint: crashEK(i), State: StateActive, Model: "m", Flags: []string{strings.Repeat("x", 200)}}
		crashtest.Check(s.PutDevice(t.Context(), d))
		// A read-modify-write of an earlier device, and an event, each its own transaction.
		if i > 0 {
			crashtest.Check(s.Update(t.Context(), crashID(i-1), func(d *Device) error { d.State = StateQuarantined; return nil }))
		}
		crashtest.Check(s.AddEvent(t.Context(), Event{DeviceID: crashID(i), Kind: "enrolled"}))
		fmt.Println("ok", i)
	}
}

func TestCrashSafety(t *testing.T) {
	if _, ok := crashtest.Arg(crashEnv); ok {
		t.Skip("in helper")
	}
	path := filepath.Join(t.TempDir(), "inv.db")
	for round := range 3 {
		// Let it commit a while, then kill it mid-write.
		last := -1
		crashtest.Kill(t, "TestCrashWriter", crashEnv, path, func(line string) bool {
			if n, ok := strings.CutPrefix(line, "ok "); ok {
				last, _ = strconv.Atoi(n)
			}
			return last >= 30
		})
		if last < 0 {
			t.Fatal("writer committed nothing")
		}

		// Reopen: the lock is free, the file is sound, every reported write is there.
		s, err := Open(path, WithTimeout(2*time.Second))
		if err != nil {
			t.Fatalf("round %d: reopen: %v", round, err)
		}
		checkConsistent(t, s, last)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		// The next round writes over the same IDs from 0 again; remove the
		// file so each round checks a fresh sequence.
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
	}
}

func checkConsistent(t *testing.T, s *Store, last int) {
	t.Helper()
	err := s.boltDB().View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			return fmt.Errorf("bolt check: %w", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	all, next, err := s.ListDevices(t.Context(), Filter{Limit: 1000})
	if err != nil || next != "" {
		t.Fatalf("list: %v %q", err, next)
	}
	if len(all) < last+1 {
		t.Fatalf("%d devices after reported %d commits", len(all), last+1)
	}
	for i, d := range all {
		if d.ID != crashID(i) {
			t.Fatalf("device %d has ID %s: a gap", i, d.ID)
		}
		byEK, err := s.DeviceByEK(t.Context(), crashEK(i))
		if err != nil || byEK.ID != d.ID {
			t.Fatalf("EK index for %s: %v %v", d.ID, byEK, err)
		}
		// Every device but the newest one or two was updated to quarantined.
		if i < last && d.State != StateQuarantined {
			t.Fatalf("device %d state %s: an acknowledged update is lost", i, d.State)
		}
		if i <= last {
			if ev, err := s.Events(t.Context(), d.ID, 0); err != nil || len(ev) != 1 {
				t.Fatalf("events of %d: %v %v", i, ev, err)
			}
		}
	}
	// The index holds nothing else.
	n := 0
	err = s.boltDB().View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketEK).ForEach(func(k, v []byte) error {
			n++
			if _, err := getDevice(tx, string(v)); err != nil {
				return fmt.Errorf("index entry %s -> %s: %w", k, v, err)
			}
			return nil
		})
	})
	if err != nil || n != len(all) {
		t.Fatalf("EK index: %d entries for %d devices: %v", n, len(all), err)
	}
}

func seed(b *testing.B, s *Store, n int) {
	b.Helper()
	err := s.boltDB().Update(func(tx *bolt.Tx) error {
		for i := range n {
			d := &Device{ID: crashID(i), EKFingerprint: crashEK(i), State: StateActive, Model: "gw-1", Owner: "plant-a",
				CertSerial: "0a1b2c3d", EKPublic: make([]byte, 90), AKPublic: make([]byte, 90), FirstSeen: time.Now()}
			if i%10 == 0 {
				d.State = StatePending
			}
			if err := putDevice(boltTx{tx: tx}, nil, d, time.Now()); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
}

func BenchmarkPutDevice(b *testing.B) {
	s, err := Open(filepath.Join(b.TempDir(), "inv.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		d := &Device{ID: crashID(i), EKFingerprint: crashEK(i), State: StateActive, Model: "gw-1", EKPublic: make([]byte, 90)}
		if err := s.PutDevice(b.Context(), d); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkListDevices10k(b *testing.B) {
	s, err := Open(filepath.Join(b.TempDir(), "inv.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	seed(b, s, 10000)
	b.Run("page100", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if page, _, err := s.ListDevices(b.Context(), Filter{After: crashID(5000), Limit: 100}); err != nil || len(page) != 100 {
				b.Fatal(err, len(page))
			}
		}
	})
	b.Run("all-pending", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			n, cursor := 0, ""
			for {
				page, next, err := s.ListDevices(b.Context(), Filter{State: StatePending, After: cursor, Limit: 1000})
				if err != nil {
					b.Fatal(err)
				}
				n += len(page)
				if next == "" {
					break
				}
				cursor = next
			}
			if n != 1000 {
				b.Fatal(n)
			}
		}
	})
	b.Run("counts", func(b *testing.B) {
		for b.Loop() {
			if _, err := s.Counts(b.Context()); err != nil {
				b.Fatal(err)
			}
		}
	})
}
