package boltdb

import (
	"os"
	"path/filepath"
	"testing"
)

// TestHeld: a file opened with Open is found by its path and by another
// name of the same file until it is closed; a read-only handle and
// another file are not.
func TestHeld(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "a.db")
	if Held(path) != nil {
		t.Fatal("a missing file is held")
	}
	db, err := Open(path, Schema{}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	other, err := Open(filepath.Join(dir, "b.db"), Schema{}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	link := filepath.Join(dir, "link.db")
	if err := os.Symlink(path, link); err != nil {
		t.Fatal(err)
	}
	if Held(path) != db || Held(link) != db || Held(filepath.Join(dir, ".", "a.db")) != db {
		t.Fatal("the open file is not found by its names")
	}
	if Held(filepath.Join(dir, "b.db")) != other {
		t.Fatal("the other file is not found")
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if Held(path) != nil {
		t.Fatal("a closed file is still held")
	}
	ro, err := OpenReadOnly(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if Held(path) != nil {
		t.Fatal("a read-only handle is listed")
	}
}
