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
