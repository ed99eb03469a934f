package state

import (
	"path/filepath"
	"testing"
	"time"
)

// The store's own tests run over bbolt and every other engine from
// package statetest (bolt_test.go); what is here is bbolt's alone.

// TestOpenLocked: a store is one process's while it is open.
func TestOpenLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(path, Options{Timeout: 50 * time.Millisecond}); err != ErrLocked {
		t.Fatalf("second open: got %v, want ErrLocked", err)
	}
	s.Close()
	s, err = Open(path, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
}
