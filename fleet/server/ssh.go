package server

import (
	"path/filepath"
	"time"

	"github.com/sigil-iot/sigil/fleet/access"
	"github.com/sigil-iot/sigil/fleet/sshca"
)

// openSSH opens the SSH host CA (<data_dir>/ssh_ca.key, created 0600 at first start) and its issuer (certificates valid for
// the device certificate lifetime, principals from ssh_principals), and just-in-time operator access (fleet/access).
func (s *Server) openSSH() (err error) {
	if s.SSH, err = sshca.NewIssuer(sshca.IssuerConfig{CAConfig: sshca.Config{KeyFile: filepath.Join(s.cfg.DataDir, sshca.KeyFile),
		TrustDomain: s.cfg.TrustDomain, Principals: s.cfg.SSHPrincipals}, Devices: s.Inv, Verdicts: s.Attest,
		Validity: time.Duration(s.cfg.DeviceLifetime), Logger: s.log.With("component", "sshca"), Send: s.sendDevice}); err != nil {
		return err
	}
	s.Access, err = access.Open(access.Config{Dir: s.cfg.DataDir, Database: s.db, TrustDomain: s.cfg.TrustDomain, Approvals: s.Approvals, Principals: s.Auth, Devices: s.Inv,
		Audit: s.Audit, Send: s.sendDevice, Policy: s.cfg.Access, Logger: s.log.With("component", "access")})
	s.onClose(s.Access.Close)
	return err
}
