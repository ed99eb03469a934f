package secrets_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/sigil-iot/sigil/fleet/secrets"
)

// TestDerivedKey: a derived key is the same for the same key file and
// purpose, differs between purposes and key files, and the key file it
// creates when missing is the owner's only.
func TestDerivedKey(t *testing.T) {
	dir, other := t.TempDir(), t.TempDir()
	a1, err := secrets.DerivedKey(dir, "enroll sessions")
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, secrets.KeyFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, %v; want mode 0600", fi, err)
	}
	a2, _ := secrets.DerivedKey(dir, "enroll sessions")
	b, _ := secrets.DerivedKey(dir, "something else")
	c, _ := secrets.DerivedKey(other, "enroll sessions")
	if len(a1) != 32 || !bytes.Equal(a1, a2) {
		t.Errorf("the same purpose and key file gave %x and %x", a1, a2)
	}
	if bytes.Equal(a1, b) || bytes.Equal(a1, c) {
		t.Error("another purpose or another key file gave the same key")
	}
}
