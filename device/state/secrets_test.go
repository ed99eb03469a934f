package state

import (
	"bytes"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/pkg/wire"
)

func TestSecretsNewestWinsAndSurviveReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Secret("db-password"); !errors.Is(err, ErrNoSecret) {
		t.Fatalf("empty store: %v", err)
	}
	v2 := &Secret{Name: "db-password", Version: 2, Public: []byte{1}, Private: []byte{2},
		PCRs: &wire.PCRSelection{Hash: 0x000B, PCRs: []int{7}}}
	if err := s.PutSecret(v2, 0); err != nil {
		t.Fatal(err)
	}
	if err := s.PutSecret(&Secret{Name: "db-password", Version: 1, Public: []byte{9}, Private: []byte{9}}, 0); !errors.Is(err, ErrOlderSecret) {
		t.Fatalf("older version: %v", err)
	}
	if err := s.PutSecret(&Secret{Name: "api-key", Version: 1, Public: []byte{3}, Private: []byte{4}}, 0); err != nil {
		t.Fatal(err)
	}
	if err := s.PutSecret(&Secret{Name: "bad/name", Version: 1, Public: []byte{3}, Private: []byte{4}}, 0); err == nil {
		t.Fatal("invalid name stored")
	}
	s.Close()

	s, err = Open(path, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := s.Secret("db-password")
	if err != nil || got.Version != 2 || !bytes.Equal(got.Private, []byte{2}) || got.PCRs == nil || got.PCRs.PCRs[0] != 7 {
		t.Fatalf("got %+v, %v", got, err)
	}
	all, err := s.Secrets()
	if err != nil || len(all) != 2 || all[0].Name != "api-key" || all[1].Name != "db-password" {
		t.Fatalf("list %+v, %v", all, err)
	}
}

func TestSecretsOnStoreWithoutBucket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, err = Open(path, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if all, err := s.Secrets(); err != nil || len(all) != 0 {
		t.Fatalf("%v %v", all, err)
	}
	if _, err := s.Secret("x"); !errors.Is(err, ErrNoSecret) {
		t.Fatal(err)
	}
}

// TestSecretGracePeriod: a rotation with a grace period keeps the replaced
// version until it ends, and only that one version.
func TestSecretGracePeriod(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "state.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	t0 := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	put := func(v int, at time.Time, keep time.Duration) {
		t.Helper()
		if err := s.PutSecret(&Secret{Name: "api-key", Version: v, Public: []byte{byte(v)}, Private: []byte{byte(v)}, Received: at}, keep); err != nil {
			t.Fatal(err)
		}
	}
	put(1, t0, time.Hour)
	put(2, t0.Add(time.Minute), time.Hour)
	if got, err := s.SecretVersion("api-key", 1, t0.Add(30*time.Minute)); err != nil || got.Public[0] != 1 {
		t.Fatalf("previous version during grace: %+v %v", got, err)
	}
	if got, err := s.SecretVersion("api-key", 0, t0.Add(30*time.Minute)); err != nil || got.Version != 2 || got.Previous != nil {
		t.Fatalf("current: %+v %v", got, err)
	}
	if _, err := s.SecretVersion("api-key", 1, t0.Add(61*time.Minute)); !errors.Is(err, ErrNoSecret) {
		t.Fatalf("previous version after grace: %v", err)
	}
	put(3, t0.Add(2*time.Minute), time.Hour)
	if _, err := s.SecretVersion("api-key", 1, t0.Add(3*time.Minute)); !errors.Is(err, ErrNoSecret) {
		t.Fatal("two versions back is still available")
	}
	if got, err := s.SecretVersion("api-key", 2, t0.Add(3*time.Minute)); err != nil || got.Version != 2 {
		t.Fatalf("version 2 after rotation to 3: %+v %v", got, err)
	}
	put(4, t0.Add(4*time.Minute), 0) // no grace: the replaced version is gone at once
	if _, err := s.SecretVersion("api-key", 3, t0.Add(4*time.Minute)); !errors.Is(err, ErrNoSecret) {
		t.Fatal("a rotation without grace kept the previous version")
	}
}
