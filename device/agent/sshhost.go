package agent

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/asn1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/sigil-iot/sigil/device/state"
	"github.com/sigil-iot/sigil/device/tpm"
)

// A TPM-born SSH host key (config ssh_tpm_host_key): sigild creates an ECC
// P-256 signing key in the TPM once (non-exportable, like the transport
// key), writes its public half as an OpenSSH public key file, and serves it
// to sshd over the ssh-agent protocol on ssh_agent_socket. sshd is
// configured with
//
//	HostKeyAgent /run/sigild/ssh-agent.sock
//	HostKey /etc/ssh/sigil_host_ecdsa_key.pub
//	HostCertificate /etc/ssh/sigil_host_ecdsa_key-cert.pub
//
// and asks the agent for each host-key signature; the private key never
// exists outside the TPM. The key is certified like any other host key
// (ssh.go), so its certificate is short-lived and renewed. Only the two
// agent requests sshd uses are served (list identities, sign); everything
// else is refused. The socket is mode 0600: sshd runs as root.

// ssh-agent protocol message numbers (draft-miller-ssh-agent).
const (
	agentFailure          = 5
	agentRequestIDs       = 11
	agentIdentitiesAnswer = 12
	agentSignRequest      = 13
	agentSignResponse     = 14
	agentMaxMessage       = 256 << 10
)

const sshKeyType = "ecdsa-sha2-nistp256"

// sshHostKey loads the TPM host key from the state store or creates it,
// and writes its public key file.
func (a *Agent) sshHostKey() (*tpm.KeyBlob, *ecdsa.PublicKey, error) {
	blob, err := a.st.SSHHostKey()
	if errors.Is(err, state.ErrNoSSHHostKey) {
		k, cerr := a.tpm.CreateTransportKey() // same template: non-exportable ECC signing key
		if cerr != nil {
			return nil, nil, fmt.Errorf("agent: creating the SSH host key: %w", cerr)
		}
		blob = &state.KeyBlob{Public: k.Public, Private: k.Private}
		if err = a.st.PutSSHHostKey(blob); err != nil {
			return nil, nil, err
		}
		a.log.Info("SSH host key created in the TPM")
	} else if err != nil {
		return nil, nil, err
	}
	key := &tpm.KeyBlob{Public: blob.Public, Private: blob.Private}
	pub, err := a.tpm.PublicKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("agent: SSH host key: %w", err)
	}
	ec, ok := pub.(*ecdsa.PublicKey)
	if !ok || ec.Curve != elliptic.P256() {
		return nil, nil, errors.New("agent: SSH host key is not ECDSA P-256")
	}
	line := sshKeyType + " " + base64.StdEncoding.EncodeToString(sshPublicBlob(ec)) + " sigil-tpm-host-key\n"
	if old, err := os.ReadFile(a.cfg.SSHTPMHostKey); err != nil || !bytes.Equal(old, []byte(line)) {
		err := os.MkdirAll(filepath.Dir(a.cfg.SSHTPMHostKey), 0o755)
		if err == nil {
			err = writeFileAtomic(a.cfg.SSHTPMHostKey, []byte(line), 0o644)
		}
		if err != nil {
			return nil, nil, fmt.Errorf("agent: writing the SSH host public key: %w", err)
		}
	}
	return key, ec, nil
}

// serveSSHAgent listens on the agent socket until ctx ends.
func (a *Agent) serveSSHAgent(ctx context.Context) (stop func(), err error) {
	key, pub, err := a.sshHostKey()
	if err != nil {
		return nil, err
	}
	signer, err := a.tpm.Signer(key)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	path := a.cfg.SSHAgentSocket
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("agent: ssh agent socket: %w", err)
	}
	_ = os.Remove(path) // a socket left by a previous run
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("agent: ssh agent socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("agent: ssh agent socket: %w", err)
	}
	srv := &sshAgentServer{blob: sshPublicBlob(pub), signer: signer, log: a.log}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { srv.serve(ctx, c) })
		}
	})
	a.log.Info("serving the TPM SSH host key to sshd", "socket", path, "public_key", a.cfg.SSHTPMHostKey)
	return func() { ln.Close(); wg.Wait() }, nil
}

// sshAgentServer answers sshd's agent requests for one key.
type sshAgentServer struct {
	blob   []byte // SSH wire public key
	signer crypto.Signer
	log    interface {
		Warn(string, ...any)
	}
}

func (s *sshAgentServer) serve(ctx context.Context, c net.Conn) {
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	for {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Minute))
		msg, err := readAgentMessage(c)
		if err != nil {
			return
		}
		if _, err := c.Write(frame(s.handle(msg))); err != nil {
			return
		}
	}
}

func readAgentMessage(r io.Reader) ([]byte, error) {
	var n uint32
	if err := binary.Read(r, binary.BigEndian, &n); err != nil {
		return nil, err
	}
	if n == 0 || n > agentMaxMessage {
		return nil, fmt.Errorf("agent message of %d bytes", n)
	}
	msg := make([]byte, n)
	_, err := io.ReadFull(r, msg)
	return msg, err
}

func frame(msg []byte) []byte {
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(msg))), msg...)
}

// handle answers one request (without its length prefix).
func (s *sshAgentServer) handle(msg []byte) []byte {
	switch msg[0] {
	case agentRequestIDs:
		out := []byte{agentIdentitiesAnswer}
		out = binary.BigEndian.AppendUint32(out, 1)
		out = appendString(out, s.blob)
		return appendString(out, []byte("sigil-tpm-host-key"))
	case agentSignRequest:
		rest := msg[1:]
		blob, rest, ok1 := readString(rest)
		data, rest, ok2 := readString(rest)
		if !ok1 || !ok2 || len(rest) != 4 || !bytes.Equal(blob, s.blob) {
			return []byte{agentFailure}
		}
		// Flags ask for RSA SHA-2 variants; for ECDSA P-256 the hash is
		// always SHA-256.
		sum := sha256.Sum256(data)
		der, err := s.signer.Sign(rand.Reader, sum[:], crypto.SHA256)
		if err != nil {
			s.log.Warn("SSH host key signature failed", "err", err)
			return []byte{agentFailure}
		}
		var sig struct{ R, S *big.Int }
		if _, err := asn1.Unmarshal(der, &sig); err != nil {
			return []byte{agentFailure}
		}
		inner := appendMPInt(appendMPInt(nil, sig.R), sig.S)
		sigBlob := appendString(appendString(nil, []byte(sshKeyType)), inner)
		return appendString([]byte{agentSignResponse}, sigBlob)
	}
	return []byte{agentFailure}
}

// sshPublicBlob is the SSH wire encoding of an ECDSA P-256 public key
// (RFC 5656 section 3.1).
func sshPublicBlob(pub *ecdsa.PublicKey) []byte {
	var point []byte
	if k, err := pub.ECDH(); err == nil {
		point = k.Bytes() // uncompressed point
	}
	b := appendString(nil, []byte(sshKeyType))
	b = appendString(b, []byte("nistp256"))
	return appendString(b, point)
}

func appendString(b, s []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

// appendMPInt appends a non-negative SSH mpint (RFC 4251 section 5).
func appendMPInt(b []byte, n *big.Int) []byte {
	v := n.Bytes()
	if len(v) > 0 && v[0]&0x80 != 0 {
		v = append([]byte{0}, v...)
	}
	return appendString(b, v)
}

func readString(b []byte) (s, rest []byte, ok bool) {
	if len(b) < 4 {
		return nil, nil, false
	}
	n := binary.BigEndian.Uint32(b)
	if uint64(n) > uint64(len(b)-4) {
		return nil, nil, false
	}
	return b[4 : 4+n], b[4+n:], true
}
