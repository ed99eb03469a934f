package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/sigil-iot/sigil/device/sshagent"
	"github.com/sigil-iot/sigil/device/state"
	"github.com/sigil-iot/sigil/device/tpm"
)

// A TPM-born SSH host key (config ssh_tpm_host_key): sigild creates an ECC
// P-256 signing key in the TPM once (non-exportable, like the transport
// key), writes its public half as an OpenSSH public key file, and serves it
// to sshd over the ssh-agent protocol on ssh_agent_socket
// (device/sshagent). The private key never exists outside the TPM. The key
// is certified like any other host key (ssh.go), so its certificate is
// short-lived and renewed.

// sshHostKeyComment names the TPM host key in its public key file and in
// the agent's identity list.
const sshHostKeyComment = "sigil-tpm-host-key"

// sshHostKey loads the TPM host key from the state store or creates it
// (stored before it is used).
func (a *Agent) sshHostKey() (*tpm.KeyBlob, error) {
	blob, err := a.st.SSHHostKey()
	if errors.Is(err, state.ErrNoSSHHostKey) {
		k, cerr := a.tpm.CreateTransportKey() // same template: non-exportable ECC signing key
		if cerr != nil {
			return nil, fmt.Errorf("agent: creating the SSH host key: %w", cerr)
		}
		blob = &state.KeyBlob{Public: k.Public, Private: k.Private}
		if err = a.st.PutSSHHostKey(blob); err != nil {
			return nil, err
		}
		a.log.Info("SSH host key created in the TPM")
	} else if err != nil {
		return nil, err
	}
	return &tpm.KeyBlob{Public: blob.Public, Private: blob.Private}, nil
}

// serveSSHAgent writes the TPM host key's public key file and serves the
// key on the agent socket until ctx ends or stop is called.
func (a *Agent) serveSSHAgent(ctx context.Context) (stop func(), err error) {
	key, err := a.sshHostKey()
	if err != nil {
		return nil, err
	}
	signer, err := a.tpm.Signer(key)
	if err != nil {
		return nil, fmt.Errorf("agent: SSH host key: %w", err)
	}
	srv, err := sshagent.New(signer, sshHostKeyComment, a.log)
	if err != nil {
		return nil, fmt.Errorf("agent: SSH host key: %w", err)
	}
	line := []byte(srv.AuthorizedKey())
	if old, err := os.ReadFile(a.cfg.SSHTPMHostKey); err != nil || !bytes.Equal(old, line) {
		err := os.MkdirAll(filepath.Dir(a.cfg.SSHTPMHostKey), 0o755)
		if err == nil {
			err = writeFileAtomic(a.cfg.SSHTPMHostKey, line, 0o644)
		}
		if err != nil {
			return nil, fmt.Errorf("agent: writing the SSH host public key: %w", err)
		}
	}
	ln, err := sshagent.Listen(a.cfg.SSHAgentSocket)
	if err != nil {
		return nil, fmt.Errorf("agent: ssh agent socket: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := srv.Serve(ctx, ln); err != nil {
			a.log.Warn("ssh agent socket stopped", "err", err)
		}
	})
	a.log.Info("serving the TPM SSH host key to sshd", "socket", a.cfg.SSHAgentSocket, "public_key", a.cfg.SSHTPMHostKey)
	return func() { cancel(); wg.Wait() }, nil
}
