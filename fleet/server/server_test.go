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

func TestSelections(t *testing.T) {
	if s, err := selections(nil, nil); s != nil || err != nil {
		t.Fatalf("default: %v %v", s, err)
	}
	s, err := selections([]string{"sha256", "sha1"}, []int{0, 7})
	if err != nil || len(s) != 2 || s[0].Hash != 0x000B || s[1].Hash != 0x0004 || len(s[1].PCRs) != 2 {
		t.Fatalf("%+v %v", s, err)
	}
	for _, bad := range [][]string{{"md5"}, {"sha256", "sha256"}} {
		if _, err := selections(bad, nil); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
	if _, err := selections(nil, []int{24}); err == nil {
		t.Error("PCR 24 accepted")
	}
}
