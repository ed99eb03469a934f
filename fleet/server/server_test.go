package server

import (
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/pkg/config"
	"github.com/sigil-iot/sigil/pkg/wire"
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

// TestAdminCredentials: first start creates the admin user (password file)
// and an admin API token file, both 0600; a restart keeps the token; a
// token file that no longer authenticates is replaced.
func TestAdminCredentials(t *testing.T) {
	dir := t.TempDir()
	open := func() *Server {
		s := &Server{cfg: Config{DataDir: dir}, log: slog.New(slog.DiscardHandler)}
		if err := s.openAuth(); err != nil {
			t.Fatal(err)
		}
		return s
	}
	s := open()
	a := s.adminToken
	for _, f := range []string{AdminTokenFile, AdminPasswordFile} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", f, st, err)
		}
	}
	r, _ := http.NewRequest("GET", "/", nil)
	r.Header.Set("Authorization", "Bearer "+a)
	if p, err := s.Auth.Authenticate(r); err != nil || p.Role != auth.RoleAdmin {
		t.Fatalf("admin token: %+v %v", p, err)
	}
	s.Auth.Close()
	s = open()
	if s.adminToken != a {
		t.Fatal("the admin token changed on restart")
	}
	s.Auth.Close()
	os.WriteFile(filepath.Join(dir, AdminTokenFile), []byte("sga_forged\n"), 0o600)
	s = open()
	defer s.Auth.Close()
	if c := s.adminToken; c == a || c == "sga_forged" {
		t.Fatal("a token file that does not authenticate was kept")
	}
}

func TestSelections(t *testing.T) {
	if s, err := selections(nil, nil); s != nil || err != nil {
		t.Fatalf("default: %v %v", s, err)
	}
	s, err := selections([]string{"sha256", "sha1"}, []int{0, 7})
	if err != nil || len(s) != 2 || s[0].Hash != wire.AlgSHA256 || s[1].Hash != 0x0004 || len(s[1].PCRs) != 2 {
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
