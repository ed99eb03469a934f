package state

import (
	"bytes"
	"errors"
	"path/filepath"
	"testing"

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
	if err := s.PutSecret(v2); err != nil {
		t.Fatal(err)
	}
	if err := s.PutSecret(&Secret{Name: "db-password", Version: 1, Public: []byte{9}, Private: []byte{9}}); !errors.Is(err, ErrOlderSecret) {
		t.Fatalf("older version: %v", err)
	}
	if err := s.PutSecret(&Secret{Name: "api-key", Version: 1, Public: []byte{3}, Private: []byte{4}}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutSecret(&Secret{Name: "bad/name", Version: 1, Public: []byte{3}, Private: []byte{4}}); err == nil {
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
