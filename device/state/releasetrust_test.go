package state

import (
	"bytes"
	"errors"
	"path/filepath"
	"testing"
)

func TestReleaseTrustSurvivesReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReleaseTrust(); !errors.Is(err, ErrNoReleaseTrust) {
		t.Fatalf("fresh store: %v", err)
	}
	if err := s.SaveReleaseTrust(nil); err == nil {
		t.Fatal("empty trust set saved")
	}
	for _, v := range [][]byte{[]byte(`{"sequence":1}`), []byte(`{"sequence":2}`)} {
		if err := s.SaveReleaseTrust(v); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	s, err = Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := s.ReleaseTrust()
	if err != nil || !bytes.Equal(got, []byte(`{"sequence":2}`)) {
		t.Fatalf("after reopen: %q, %v", got, err)
	}
}
