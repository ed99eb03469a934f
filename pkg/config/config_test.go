package config

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLoadMissingFile: a file that does not exist is a *NotExistError
// naming it (errors.Is fs.ErrNotExist), not a decoding failure; other
// failures are not.
func TestLoadMissingFile(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "nope.json")
	var v struct{ A int }
	err := Load(missing, &v)
	var ne *NotExistError
	if !errors.As(err, &ne) || ne.Path != missing || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing file: %v (%T)", err, err)
	}
	if want := "config: file " + missing + " does not exist"; err.Error() != want {
		t.Errorf("message %q, want %q", err, want)
	}
	bad := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(bad, []byte(`{"B": 1}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Load(bad, &v); err == nil || errors.As(err, &ne) || !strings.Contains(err.Error(), "unknown field") {
		t.Errorf("an unknown key: %v", err)
	}
}
