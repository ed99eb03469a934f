package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/internal/fsutil"
)

// Operator files in DataDir.
const (
	OperatorsFile     = "operators.db"
	AdminPasswordFile = "admin.password"
)

// adminTokenTTL is the lifetime of the bootstrap admin API token.
const adminTokenTTL = 365 * 24 * time.Hour

// openAuth opens the operators store, creates the first admin (password in
// admin.password, 0600) on first start, and makes sure admin.token holds a
// live API token of that admin: the credential the CLI and scripts use.
func (s *Server) openAuth() error {
	// Logins and lockouts go to the audit log; failed logins of names
	// that do not exist are anyone's: sampled.
	a, err := auth.Open(auth.Config{Path: filepath.Join(s.cfg.DataDir, OperatorsFile), Audit: s.Audit, Anonymous: s.anonAudit, Logger: s.log.With("component", "auth")})
	if err != nil {
		return err
	}
	s.Auth = a
	s.onClose(a.Close)
	pwFile := filepath.Join(s.cfg.DataDir, AdminPasswordFile)
	created, err := a.EnsureAdmin(context.Background(), pwFile)
	if err != nil {
		return err
	}
	if created {
		s.log.Info("first admin created", "user", auth.BootstrapAdmin, "password_file", pwFile)
	}
	s.adminToken, err = s.adminAPIToken(filepath.Join(s.cfg.DataDir, AdminTokenFile))
	return err
}

// adminAPIToken returns the API token in path if it still authenticates,
// or issues a new one for the bootstrap admin and writes it (0600).
func (s *Server) adminAPIToken(path string) (string, error) {
	if b, err := os.ReadFile(path); err == nil {
		tok := strings.TrimSpace(string(b))
		r, _ := http.NewRequest(http.MethodGet, "/", nil)
		r.Header.Set("Authorization", "Bearer "+tok)
		if _, err := s.Auth.Authenticate(r); err == nil {
			return tok, nil
		}
		s.log.Warn("the admin token file no longer authenticates; issuing a new one", "file", path)
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("server: %w", err)
	}
	secret, _, err := s.Auth.CreateToken(auth.BootstrapAdmin, "admin-token-file", auth.RoleAdmin, adminTokenTTL)
	if err != nil {
		return "", fmt.Errorf("server: admin API token: %w", err)
	}
	if err := fsutil.WriteFileAtomic(path, []byte(secret+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("server: write admin token: %w", err)
	}
	return secret, nil
}
