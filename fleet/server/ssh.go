package server

import (
	"path/filepath"
	"time"

	"github.com/sigil-iot/sigil/fleet/sshca"
)

// SSHCAKeyFile is the SSH host CA key, relative to DataDir, created (0600)
// at first start.
const SSHCAKeyFile = "ssh_ca.key"

// openSSH opens the SSH host CA and its issuer: certificates valid for the
// device certificate lifetime, principals from ssh_principals.
func (s *Server) openSSH() error {
	log := s.log.With("component", "sshca")
	c, err := sshca.Open(sshca.Config{
		KeyFile: filepath.Join(s.cfg.DataDir, SSHCAKeyFile), TrustDomain: s.cfg.TrustDomain,
		Principals: s.cfg.SSHPrincipals, Logger: log,
	})
	if err != nil {
		return err
	}
	s.SSH, err = sshca.NewIssuer(sshca.IssuerConfig{
		CA: c, Devices: s.Inv, Verdicts: s.Attest, Validity: time.Duration(s.cfg.DeviceLifetime), Logger: log, Send: s.sendDevice,
	})
	return err
}
