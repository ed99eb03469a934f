package backup

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/storage/boltdb"
	"github.com/sigil-iot/sigil/internal/wait"
)

// counted reads the store's invariant: the key "count" and the number of
// records must be equal.
func counted(tx *bolt.Tx) (count uint64, records int) {
	b := tx.Bucket(bucket)
	if v := b.Get([]byte("count")); v != nil {
		count = binary.BigEndian.Uint64(v)
	}
	b.ForEach(func(k, _ []byte) error {
		if strings.HasPrefix(string(k), "rec-") {
			records++
		}
		return nil
	})
	return count, records
}

// checkpointer lets a test act between the stores' copies and the audit
// log's.
type checkpointer func(ctx context.Context) (audit.Checkpoint, error)

func (c checkpointer) Checkpoint(ctx context.Context) (audit.Checkpoint, error) { return c(ctx) }

// TestLiveSnapshotWhileWriting: a store held by this process (a running
// fleet) is copied through its own handle while writers keep committing
// to it and to the audit log; the writes go on during the backup, and the
// restored store is the state of one instant (its invariant holds), the
// restored audit log verifies with the checkpoint signed for the backup.
// A second backup meanwhile is ErrBusy; no spool file is left.
func TestLiveSnapshotWhileWriting(t *testing.T) {
	dir := dataDir(t)
	db, err := boltdb.Open(filepath.Join(dir, "inventory.db"), boltdb.Schema{Buckets: [][]byte{bucket}}, boltdb.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	key, err := audit.OpenKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	log, err := audit.Open(audit.Config{Path: filepath.Join(dir, audit.File), Signer: key, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()

	// Each write adds a record and counts it, in one transaction.
	write := func() error {
		return db.Update(func(tx *bolt.Tx) error {
			b := tx.Bucket(bucket)
			n, _ := counted(tx)
			if err := b.Put(fmt.Appendf(nil, "rec-%08d", n), bytes.Repeat([]byte{'x'}, 512)); err != nil {
				return err
			}
			return b.Put([]byte("count"), binary.BigEndian.AppendUint64(nil, n+1))
		})
	}
	current := func() uint64 {
		var n uint64
		db.View(func(tx *bolt.Tx) error { n, _ = counted(tx); return nil })
		return n
	}
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 2 {
		wg.Go(func() {
			for ctx.Err() == nil {
				if err := write(); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Go(func() {
		for ctx.Err() == nil {
			if err := log.Record(context.Background(), audit.New(audit.User("writer"), "device.update", "dev-1")); err != nil {
				errs <- err
				return
			}
		}
	})
	defer func() {
		stop()
		wg.Wait()
	}()
	wait.For(t, "the writers' first 50 records", func() bool { return current() >= 50 })

	id := x25519(t)
	live := NewLive(LiveConfig{DataDir: dir, TrustDomain: "fleet.example"})
	var atCopy uint64
	live.cfg.Audit = checkpointer(func(ctx context.Context) (audit.Checkpoint, error) {
		// The stores are copied: the writers must still be committing
		// (the copy blocks none of them), and a second backup waits.
		atCopy = current()
		if !wait.Poll(wait.Timeout, func() bool { return current() >= atCopy+20 }) {
			return audit.Checkpoint{}, errors.New("writes stopped during the backup")
		}
		if _, err := live.Snapshot(ctx, []string{id.Recipient().String()}); !errors.Is(err, ErrBusy) {
			return audit.Checkpoint{}, fmt.Errorf("a second backup meanwhile: %v, want ErrBusy", err)
		}
		return log.Checkpoint(ctx)
	})
	a, err := live.Snapshot(context.Background(), []string{id.Recipient().String()})
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(a)
	a.Close()
	if err != nil || int64(len(data)) != a.Size {
		t.Fatalf("read %d bytes of %d: %v", len(data), a.Size, err)
	}
	stop()
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".backup-*")); len(left) != 0 {
		t.Fatalf("spool left behind: %v", left)
	}
	if bytes.Contains(data, []byte("rec-0000")) {
		t.Fatal("the archive holds plaintext")
	}

	target := filepath.Join(t.TempDir(), "restored")
	res, err := Restore(context.Background(), bytes.NewReader(data), target, id)
	if err != nil {
		t.Fatal(err)
	}
	if !res.AuditChecked || res.Audit.Checkpoints < 2 || res.Audit.Entries <= 3 {
		t.Fatalf("restored audit log: %+v", res.Audit)
	}
	rdb, err := boltdb.OpenReadOnly(filepath.Join(target, "inventory.db"), boltdb.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	var count uint64
	var records int
	rdb.View(func(tx *bolt.Tx) error { count, records = counted(tx); return nil })
	t.Logf("restored %d records; %d when the stores were copied, %d at the end", count, atCopy, current())
	if count < 50 || uint64(records) != count {
		t.Fatalf("restored store: count %d, %d records: not one instant", count, records)
	}
	if count > atCopy {
		t.Fatalf("restored store holds %d records, more than the %d committed when it was copied", count, atCopy)
	}
}

// TestLiveRecipients: a live backup needs 1 to MaxRecipients age public
// keys; a passphrase or anything else is refused before any work.
func TestLiveRecipients(t *testing.T) {
	live := NewLive(LiveConfig{DataDir: t.TempDir()})
	many := make([]string, MaxRecipients+1)
	for i := range many {
		many[i] = x25519(t).Recipient().String()
	}
	for name, keys := range map[string][]string{
		"none": nil, "empty": {""}, "passphrase": {"correct horse battery staple"},
		"identity": {x25519(t).String()}, "too many": many,
	} {
		if _, err := live.Snapshot(context.Background(), keys); !errors.Is(err, ErrRecipient) {
			t.Errorf("%s: %v, want ErrRecipient", name, err)
		}
	}
}
