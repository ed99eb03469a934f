package server

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sigil-iot/sigil/pkg/config"
)

func TestExampleConfig(t *testing.T) {
	var c Config
	if err := config.Load("../../deploy/serve.example.json", &c); err != nil {
		t.Fatal(err)
	}
	if c.TrustDomain == "" || !c.ManualApproval {
		t.Fatalf("example config %+v", c)
	}
}

func TestAllowList(t *testing.T) {
	p := filepath.Join(t.TempDir(), "allow")
	fp := strings.Repeat("ab", 32)
	os.WriteFile(p, []byte("# comment\n"+strings.ToUpper(fp)+"  # trailing\n\n"), 0o644)
	m, err := loadAllowList(p)
	if err != nil || !m[fp] || len(m) != 1 {
		t.Fatalf("%v %v", m, err)
	}
	os.WriteFile(p, []byte("not-a-fingerprint\n"), 0o644)
	if _, err := loadAllowList(p); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Fatalf("bad line: %v", err)
	}
}

func TestAdminTokenCreatedOnce(t *testing.T) {
	p := filepath.Join(t.TempDir(), "admin.token")
	a, err := loadOrCreateToken(p)
	if err != nil || !strings.HasPrefix(a, "sga_") {
		t.Fatal(a, err)
	}
	st, _ := os.Stat(p)
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", st.Mode())
	}
	b, _ := loadOrCreateToken(p)
	if a != b {
		t.Fatal("token changed on reload")
	}
}
