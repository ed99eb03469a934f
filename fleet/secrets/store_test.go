package secrets_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/sigil-iot/sigil/fleet/secrets"
)

func openStore(t *testing.T, dir string, log *slog.Logger) *secrets.Store {
	t.Helper()
	s, err := openBackend(t, secrets.Config{Dir: dir, NoSync: true, Logger: log,
		Now: func() time.Time { return time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC) }})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestStore(t *testing.T) {
	dir := t.TempDir()
	var logs bytes.Buffer
	s := openStore(t, dir, slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	plain := []byte("PLAINTEXT-wifi-psk-0123456789")
	dev := secrets.Target{Device: "dev-1"}

	v1, err := s.Put(t.Context(), "wifi", plain, dev, false)
	if err != nil {
		t.Fatal(err)
	}
	v2, err := s.Put(t.Context(), "wifi", append(bytes.Clone(plain), '2'), secrets.Target{Group: "line-3", Model: "gw"}, true)
	if err != nil {
		t.Fatal(err)
	}
	if v1 != 1 || v2 != 2 {
		t.Fatalf("versions %d, %d", v1, v2)
	}
	if _, err := s.Put(t.Context(), "db", []byte("x"), dev, false); err != nil {
		t.Fatal(err)
	}

	got, err := s.Get(t.Context(), "wifi")
	if err != nil {
		t.Fatal(err)
	}
	if got.Version != 2 || !bytes.Equal(got.Value, append(bytes.Clone(plain), '2')) || !got.PCRBound ||
		got.Target.Group != "line-3" || got.Created.IsZero() {
		t.Fatalf("latest: %+v", got.Info)
	}
	old, err := s.GetVersion(t.Context(), "wifi", 1)
	if err != nil || !bytes.Equal(old.Value, plain) || old.PCRBound || old.Target != dev {
		t.Fatalf("version 1: %v %v", old, err)
	}
	if _, err := s.GetVersion(t.Context(), "wifi", 3); !errors.Is(err, secrets.ErrNotFound) {
		t.Fatalf("missing version: %v", err)
	}
	if _, err := s.Get(t.Context(), "nope"); !errors.Is(err, secrets.ErrNotFound) {
		t.Fatalf("missing secret: %v", err)
	}

	// A Secret never prints or logs its value.
	for _, out := range []string{got.String(), fmt.Sprint(*got), fmt.Sprintf("%v", got), fmt.Sprintf("%#v", *got)} {
		if strings.Contains(out, "PLAINTEXT") {
			t.Fatalf("secret printed its value: %s", out)
		}
	}
	slog.New(slog.NewTextHandler(&logs, nil)).Info("x", "secret", *got)

	list, err := s.List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Name != "db" || list[1].Name != "wifi" || list[1].Version != 2 ||
		fmt.Sprint(list[1].Versions) != "[1 2]" || list[1].Target.Model != "gw" {
		t.Fatalf("list: %+v", list)
	}
	if j, _ := json.Marshal(list); bytes.Contains(j, []byte("PLAINTEXT")) {
		t.Fatal("List exposes a value")
	}

	// Delete, then Put: the version number is not reused.
	if err := s.Delete(t.Context(), "wifi"); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(t.Context(), "wifi"); !errors.Is(err, secrets.ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
	if _, err := s.Get(t.Context(), "wifi"); !errors.Is(err, secrets.ErrNotFound) {
		t.Fatalf("get after delete: %v", err)
	}
	if v, err := s.Put(t.Context(), "wifi", plain, dev, false); err != nil || v != 3 {
		t.Fatalf("put after delete: version %d, %v", v, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// Encrypted at rest: the plaintext is nowhere in the files (or the
	// database).
	raw := stored(t, dir)
	if bytes.Contains(raw, []byte("PLAINTEXT")) {
		t.Fatal("plaintext in the database file")
	}
	if !bytes.Contains(raw, []byte("wifi")) {
		t.Fatal("test is broken: the names should be in the file")
	}
	if strings.Contains(logs.String(), "PLAINTEXT") {
		t.Fatalf("value logged: %s", logs.String())
	}
	if !strings.Contains(logs.String(), "wifi") {
		t.Fatal("test is broken: nothing logged")
	}
	fi, err := os.Stat(filepath.Join(dir, secrets.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Size() != 32 {
		t.Fatalf("key file mode %v size %d", fi.Mode().Perm(), fi.Size())
	}

	// Reopened with the same key: the values are back.
	s = openStore(t, dir, nil)
	if got, err := s.Get(t.Context(), "wifi"); err != nil || !bytes.Equal(got.Value, plain) || got.Version != 3 {
		t.Fatalf("after reopen: %v %v", got, err)
	}
	s.Close()
}

func TestStoreRefusesCorruption(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, nil)
	if _, err := s.Put(t.Context(), "a", []byte("secret-a"), secrets.Target{Device: "d"}, false); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(t.Context(), "b", []byte("secret-b"), secrets.Target{Device: "d"}, false); err != nil {
		t.Fatal(err)
	}
	s.Close()

	edit := func(f func(a, b map[string]any)) {
		t.Helper()
		db, err := bolt.Open(filepath.Join(dir, secrets.DBFile), 0o600, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		err = db.Update(func(tx *bolt.Tx) error {
			recs := map[string]map[string]any{}
			for _, name := range []string{"a", "b"} {
				b := tx.Bucket([]byte("secrets")).Bucket([]byte(name))
				k, v := b.Cursor().Last()
				var m map[string]any
				if err := json.Unmarshal(v, &m); err != nil {
					return err
				}
				recs[name] = m
				defer func(b *bolt.Bucket, k []byte, name string) {
					j, _ := json.Marshal(recs[name])
					_ = b.Put(k, j)
				}(b, k, name)
			}
			f(recs["a"], recs["b"])
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	// One flipped ciphertext byte (base64 text in the JSON record).
	edit(func(a, _ map[string]any) {
		c := []byte(a["ciphertext"].(string))
		if c[0] == 'A' {
			c[0] = 'B'
		} else {
			c[0] = 'A'
		}
		a["ciphertext"] = string(c)
	})
	s = openStore(t, dir, nil)
	if _, err := s.Get(t.Context(), "a"); !errors.Is(err, secrets.ErrCorrupt) {
		t.Fatalf("flipped ciphertext: %v", err)
	}
	if got, err := s.Get(t.Context(), "b"); err != nil || string(got.Value) != "secret-b" {
		t.Fatalf("intact record: %v %v", got, err)
	}
	s.Close()
	// b's ciphertext moved to a's record: bound to its name, refused.
	edit(func(a, b map[string]any) { a["nonce"], a["ciphertext"] = b["nonce"], b["ciphertext"] })
	s = openStore(t, dir, nil)
	if _, err := s.Get(t.Context(), "a"); !errors.Is(err, secrets.ErrCorrupt) {
		t.Fatalf("swapped ciphertext: %v", err)
	}
	s.Close()
}

func TestStoreKeyFile(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, nil)
	if _, err := s.Put(t.Context(), "a", []byte("v"), secrets.Target{Model: "m"}, false); err != nil {
		t.Fatal(err)
	}
	s.Close()
	keyPath := filepath.Join(dir, secrets.KeyFile)
	key, err := os.ReadFile(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	open := func() error {
		s, err := openBackend(t, secrets.Config{Dir: dir, NoSync: true})
		if err == nil {
			s.Close()
		}
		return err
	}

	if err := os.Chmod(keyPath, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := open(); err == nil || !strings.Contains(err.Error(), "mode") {
		t.Fatalf("world-readable key accepted: %v", err)
	}
	if err := os.Chmod(keyPath, 0o600); err != nil {
		t.Fatal(err)
	}
	// Another key: refused, not silently used.
	other := bytes.Clone(key)
	other[0] ^= 1
	if err := os.WriteFile(keyPath, other, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := open(); err == nil || !strings.Contains(err.Error(), "not the key") {
		t.Fatalf("wrong key accepted: %v", err)
	}
	if err := os.WriteFile(keyPath, key[:16], 0o600); err != nil {
		t.Fatal(err)
	}
	if err := open(); err == nil {
		t.Fatal("short key accepted")
	}
	// A lost key is not replaced by a new one over existing secrets.
	if err := os.Remove(keyPath); err != nil {
		t.Fatal(err)
	}
	if err := open(); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("missing key: %v", err)
	}
	if _, err := os.Stat(keyPath); err == nil {
		t.Fatal("a new key was created over existing secrets")
	}
	if err := os.WriteFile(keyPath, key, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := open(); err != nil {
		t.Fatalf("original key: %v", err)
	}
}

func TestStorePutRefusals(t *testing.T) {
	s := openStore(t, t.TempDir(), nil)
	defer s.Close()
	dev := secrets.Target{Device: "d"}
	for name, put := range map[string]func() (int, error){
		"bad name":    func() (int, error) { return s.Put(t.Context(), "Bad/Name", []byte("v"), dev, false) },
		"empty value": func() (int, error) { return s.Put(t.Context(), "n", nil, dev, false) },
		"large value": func() (int, error) { return s.Put(t.Context(), "n", make([]byte, secrets.MaxValue+1), dev, false) },
		"no target":   func() (int, error) { return s.Put(t.Context(), "n", []byte("v"), secrets.Target{}, false) },
		"bad target":  func() (int, error) { return s.Put(t.Context(), "n", []byte("v"), secrets.Target{Group: "a b"}, false) },
	} {
		if _, err := put(); err == nil || !strings.HasPrefix(err.Error(), "secrets: ") {
			t.Errorf("%s: %v", name, err)
		}
	}
	if v, err := s.Put(t.Context(), "n", make([]byte, secrets.MaxValue), dev, false); err != nil || v != 1 {
		t.Fatalf("largest value: %d %v", v, err)
	}
}

func TestTargetMatches(t *testing.T) {
	tg := secrets.Target{Group: "g", Model: "m"}
	if !tg.Matches("any", "g", "m") || tg.Matches("any", "g", "other") || tg.Matches("any", "", "m") {
		t.Fatal("group+model target")
	}
	if d := (secrets.Target{Device: "d"}); !d.Matches("d", "", "") || d.Matches("e", "g", "m") {
		t.Fatal("device target")
	}
}
