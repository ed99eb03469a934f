package backup

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"filippo.io/age"
	bolt "go.etcd.io/bbolt"

	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/storage/boltdb"
)

var bucket = []byte("things")

// dataDir makes a small data directory: a bbolt store, a key under ca/, an
// audit log with entries and a checkpoint, and its key.
func dataDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	db, err := boltdb.Open(filepath.Join(dir, "inventory.db"), boltdb.Schema{Buckets: [][]byte{bucket}}, boltdb.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Put([]byte("dev-1"), []byte("active")) }); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if err := os.MkdirAll(filepath.Join(dir, "ca"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ca", "ca.key"), []byte("not really a key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	key, err := audit.OpenKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	l, err := audit.Open(audit.Config{Path: filepath.Join(dir, audit.File), Signer: key})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, a := range []string{"device.enroll", "secret.put", "policy.put"} {
		if err := l.Record(ctx, audit.New(audit.User("admin"), a, "dev-1")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	l.Close()
	return dir
}

func x25519(t *testing.T) *age.X25519Identity {
	t.Helper()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func archive(t *testing.T, dir string, to age.Recipient) []byte {
	t.Helper()
	var buf bytes.Buffer
	m, err := Create(context.Background(), &buf, dir, []age.Recipient{to}, Options{TrustDomain: "fleet.example"})
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Files) < 4 {
		t.Fatalf("manifest lists %d files: %+v", len(m.Files), m.Files)
	}
	return buf.Bytes()
}

// TestRoundTrip: an archive restores into a new directory the same files,
// a store that opens with its records, and an audit log that verifies;
// with a passphrase as with an X25519 key.
func TestRoundTrip(t *testing.T) {
	src := dataDir(t)
	id := x25519(t)
	pass, err := age.NewScryptRecipient("correct horse battery staple")
	if err != nil {
		t.Fatal(err)
	}
	pass.SetWorkFactor(10)
	passID, err := age.NewScryptIdentity("correct horse battery staple")
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct {
		to age.Recipient
		id age.Identity
	}{"x25519": {id.Recipient(), id}, "scrypt": {pass, passID}} {
		t.Run(name, func(t *testing.T) {
			data := archive(t, src, c.to)
			if bytes.Contains(data, []byte("not really a key")) || bytes.Contains(data, []byte("dev-1")) {
				t.Fatal("the archive holds plaintext")
			}
			target := filepath.Join(t.TempDir(), "restored")
			res, err := Restore(context.Background(), bytes.NewReader(data), target, c.id)
			if err != nil {
				t.Fatal(err)
			}
			if res.Manifest.TrustDomain != "fleet.example" || !res.AuditChecked || res.Audit.Entries != 3 || res.Audit.Unsigned != 0 {
				t.Fatalf("result %+v", res)
			}
			for _, f := range []string{"ca/ca.key", audit.KeyFile, audit.PubFile} {
				want, _ := os.ReadFile(filepath.Join(src, f))
				got, err := os.ReadFile(filepath.Join(target, f))
				if err != nil || !bytes.Equal(got, want) {
					t.Fatalf("%s: %q, %v; want %q", f, got, err, want)
				}
			}
			fi, err := os.Stat(filepath.Join(target, "ca", "ca.key"))
			if err != nil || fi.Mode().Perm() != 0o600 {
				t.Fatalf("ca.key mode %v, %v", fi.Mode(), err)
			}
			db, err := boltdb.OpenReadOnly(filepath.Join(target, "inventory.db"), boltdb.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			var v []byte
			db.View(func(tx *bolt.Tx) error { v = append(v, tx.Bucket(bucket).Get([]byte("dev-1"))...); return nil })
			if string(v) != "active" {
				t.Fatalf("restored record %q", v)
			}
			if left, _ := filepath.Glob(filepath.Join(filepath.Dir(target), ".sigil-restore-*")); len(left) != 0 {
				t.Fatalf("left behind: %v", left)
			}
		})
	}
}

// refused restores data and expects err, leaving nothing at target nor
// beside it.
func refused(t *testing.T, data []byte, target string, want error, ids ...age.Identity) {
	t.Helper()
	_, err := Restore(context.Background(), bytes.NewReader(data), target, ids...)
	if !errors.Is(err, want) {
		t.Fatalf("Restore: %v, want %v", err, want)
	}
	if _, serr := os.Stat(target); !errors.Is(want, ErrNotEmpty) && serr == nil {
		t.Fatalf("%s exists after a refused restore", target)
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(target), ".sigil-restore-*")); len(left) != 0 {
		t.Fatalf("left behind: %v", left)
	}
}

// TestRefused: a wrong key, a changed byte anywhere, a truncated archive,
// and a non-empty target are each refused with their error, and nothing
// is written.
func TestRefused(t *testing.T) {
	id := x25519(t)
	data := archive(t, dataDir(t), id.Recipient())
	t.Run("wrong key", func(t *testing.T) {
		refused(t, data, filepath.Join(t.TempDir(), "r"), ErrKey, x25519(t))
	})
	t.Run("wrong passphrase", func(t *testing.T) {
		pass, _ := age.NewScryptIdentity("wrong")
		refused(t, data, filepath.Join(t.TempDir(), "r"), ErrKey, pass)
	})
	t.Run("tampered", func(t *testing.T) {
		// A byte of the payload (past the header), one near the end.
		for _, at := range []int{len(data) / 2, len(data) - 20} {
			bad := bytes.Clone(data)
			bad[at] ^= 1
			refused(t, bad, filepath.Join(t.TempDir(), "r"), ErrCorrupt, id)
		}
	})
	t.Run("truncated", func(t *testing.T) {
		for _, n := range []int{len(data) - 1, len(data) - 100, len(data) / 2} {
			refused(t, data[:n], filepath.Join(t.TempDir(), "r"), ErrCorrupt, id)
		}
	})
	t.Run("not empty", func(t *testing.T) {
		target := t.TempDir()
		if err := os.WriteFile(filepath.Join(target, "inventory.db"), []byte("mine"), 0o600); err != nil {
			t.Fatal(err)
		}
		refused(t, data, target, ErrNotEmpty, id)
		if got, _ := os.ReadFile(filepath.Join(target, "inventory.db")); string(got) != "mine" {
			t.Fatalf("target changed: %q", got)
		}
	})
	t.Run("empty target", func(t *testing.T) {
		target := t.TempDir()
		if _, err := Restore(context.Background(), bytes.NewReader(data), target, id); err != nil {
			t.Fatal(err)
		}
	})
}

// TestRunningFleetRefused: a store held by another process (a running
// fleet, for the offline `sigil backup`) is not copied from under it.
func TestRunningFleetRefused(t *testing.T) {
	dir := dataDir(t)
	// bbolt's writer lock is an exclusive flock; one taken on a file
	// descriptor of its own conflicts with every other, as another
	// process's does, and is not a handle this process could copy
	// through (boltdb.Held).
	f, err := os.Open(filepath.Join(dir, "inventory.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatal(err)
	}
	_, err = Create(context.Background(), &bytes.Buffer{}, dir, []age.Recipient{x25519(t).Recipient()}, Options{LockTimeout: 50 * time.Millisecond})
	if !errors.Is(err, ErrRunning) {
		t.Fatalf("Create on a held store: %v, want ErrRunning", err)
	}
}

// TestAuditTamperRefused: an archive whose audit log was edited before the
// backup (hashes match the manifest) is refused at restore.
func TestAuditTamperRefused(t *testing.T) {
	dir := dataDir(t)
	// Remove the newest entry: the chain's signed checkpoint then covers
	// an entry that is gone.
	db, err := boltdb.Open(filepath.Join(dir, audit.File), boltdb.Schema{}, boltdb.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		c := tx.Bucket([]byte("entries")).Cursor()
		k, _ := c.Last()
		return tx.Bucket([]byte("entries")).Delete(k)
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	id := x25519(t)
	refused(t, archive(t, dir, id.Recipient()), filepath.Join(t.TempDir(), "r"), ErrAudit, id)
}
