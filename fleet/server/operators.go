package server

import (
	"context"
	"path/filepath"

	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
)

// Operator files in DataDir.
const (
	OperatorsFile     = auth.File
	AdminPasswordFile = "admin.password"
)

// openAuth opens the operators store, creates the first admin (password in
// admin.password, 0600) on first start, and makes sure admin.token holds a
// live API token of that admin: the credential the CLI and scripts use.
func (s *Server) openAuth() error {
	// Logins and lockouts are audited; failed logins of unknown names are anyone's: sampled.
	cfg := auth.Config{Path: filepath.Join(s.cfg.DataDir, OperatorsFile), Throttle: s.cfg.LoginThrottle.Throttle(), Audit: s.Audit, Anonymous: s.anonAudit, Logger: s.log.With("component", "auth"), NoPasswordLogin: s.cfg.SSO.NoPasswordLogin(), SSOLoginPath: s.cfg.SSO.LoginPath()}
	a, err := openStore(s, func(ctx context.Context, db *postgres.DB) (*auth.Service, error) {
		return auth.OpenPostgres(ctx, db, cfg)
	},
		func() (*auth.Service, error) { return auth.Open(cfg) })
	if err != nil {
		return err
	}
	s.Auth = a
	pwFile := filepath.Join(s.cfg.DataDir, AdminPasswordFile)
	created, err := a.EnsureAdmin(context.Background(), pwFile)
	if err != nil {
		return err
	}
	if created {
		s.log.Info("first admin created", "user", auth.BootstrapAdmin, "password_file", pwFile)
	}
	s.adminToken, err = a.EnsureAdminToken(context.Background(), filepath.Join(s.cfg.DataDir, AdminTokenFile))
	return err
}
