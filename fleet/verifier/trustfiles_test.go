package verifier

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestAllowList(t *testing.T) {
	p := filepath.Join(t.TempDir(), "allow")
	fp := strings.Repeat("ab", 32)
	os.WriteFile(p, []byte("# comment\n"+strings.ToUpper(fp)+"  # trailing\n\n"), 0o644)
	m, err := LoadAllowList(p)
	if err != nil || !m[fp] || len(m) != 1 {
		t.Fatalf("%v %v", m, err)
	}
	os.WriteFile(p, []byte("not-a-fingerprint\n"), 0o644)
	if _, err := LoadAllowList(p); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Fatalf("bad line: %v", err)
	}
}

// TestLoadEKTrust: no directory and no allow-list give an empty trust; an
// allow-list is read into it; a bad one is an error.
func TestLoadEKTrust(t *testing.T) {
	trust, err := LoadEKTrust("", "")
	if err != nil || trust.Roots != nil || trust.AllowList != nil {
		t.Fatalf("empty configuration: %+v, %v", trust, err)
	}
	dir := t.TempDir()
	fp := strings.Repeat("ab", 32)
	good, bad := filepath.Join(dir, "allow"), filepath.Join(dir, "bad")
	if err := os.WriteFile(good, []byte("# plant A\n"+fp+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bad, []byte("not a fingerprint\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if trust, err = LoadEKTrust("", good); err != nil || !trust.AllowList[fp] {
		t.Fatalf("allow-list: %+v, %v", trust, err)
	}
	if _, err := LoadEKTrust("", bad); err == nil {
		t.Fatal("a bad allow-list was accepted")
	}
	if _, err := LoadEKTrust(filepath.Join(dir, "missing"), ""); err == nil {
		t.Fatal("a missing EK CA directory was accepted")
	}
}
