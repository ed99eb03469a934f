package server

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sigil-iot/sigil/firmware/verify"
	"github.com/sigil-iot/sigil/fleet/auth"
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

// TestFailedNewReleasesEverything: New failing at its last step (the API
// address is taken) closes every store it opened, firmware's included,
// so that the fleet starts again at once from the same data directory
// (each store's file lock would time out otherwise).
func TestFailedNewReleasesEverything(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ts, err := verify.NewTrustSet(1, 1, key.Public())
	if err != nil {
		t.Fatal(err)
	}
	raw, err := ts.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	trust := filepath.Join(t.TempDir(), "trust.json")
	if err := os.WriteFile(trust, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	cfg := Config{DataDir: dir, MQTTAddr: "127.0.0.1:0", APIAddr: taken.Addr().String(), Hostnames: []string{"localhost"},
		ReleaseTrust: trust, TwoPersonRule: true}
	if _, err := New(cfg, nil); err == nil || !strings.Contains(err.Error(), "api listener") {
		t.Fatalf("New on a taken API address: %v", err)
	}
	cfg.APIAddr = "127.0.0.1:0"
	s, err := New(cfg, nil)
	if err != nil {
		t.Fatalf("New after a failed New: %v", err)
	}
	if s.fw == nil || s.Approvals == nil {
		t.Fatal("firmware or approvals off")
	}
	s.close()
}
