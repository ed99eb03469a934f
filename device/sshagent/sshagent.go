// Package sshagent serves one SSH host key whose private half stays in the
// TPM to sshd, over the ssh-agent protocol (draft-miller-ssh-agent). sshd
// is configured with
//
//	HostKeyAgent /run/sigild/ssh-agent.sock
//	HostKey /etc/ssh/sigil_host_ecdsa_key.pub
//	HostCertificate /etc/ssh/sigil_host_ecdsa_key-cert.pub
//
// and asks the agent for each host-key signature. The key is ECDSA P-256
// behind a crypto.Signer (device/tpm's transport-key template:
// non-exportable). Only the two requests sshd uses are served (list
// identities, sign with that key); everything else is answered with a
// failure, and a malformed or oversized frame ends the connection. The
// package links no SSH library: it encodes the few wire structures it
// needs itself.
package sshagent

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
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// ssh-agent protocol message numbers (draft-miller-ssh-agent).
const (
	agentFailure          = 5
	agentRequestIDs       = 11
	agentIdentitiesAnswer = 12
	agentSignRequest      = 13
	agentSignResponse     = 14
)

// MaxMessage bounds a request frame; a longer one ends the connection.
const MaxMessage = 256 << 10

// idleTimeout ends a connection that sends no request for this long.
const idleTimeout = 5 * time.Minute

// KeyType is the SSH name of the only key type served.
const KeyType = "ecdsa-sha2-nistp256"

// Server answers ssh-agent requests for one ECDSA P-256 key.
type Server struct {
	blob    []byte // SSH wire public key
	comment string
	signer  crypto.Signer
	log     *slog.Logger
}

// New returns a server for signer's key, listed with comment. The key must
// be ECDSA P-256. A nil logger discards.
func New(signer crypto.Signer, comment string, log *slog.Logger) (*Server, error) {
	pub, ok := signer.Public().(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, errors.New("sshagent: the key is not ECDSA P-256")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{blob: PublicBlob(pub), comment: comment, signer: signer, log: log}, nil
}

// AuthorizedKey is the key as one OpenSSH public key line (with its
// newline), as sshd's HostKey file holds it.
func (s *Server) AuthorizedKey() string {
	return KeyType + " " + base64.StdEncoding.EncodeToString(s.blob) + " " + s.comment + "\n"
}

// Listen listens on a Unix socket at path, mode 0600 (sshd runs as root),
// creating its directory and replacing a socket left by a previous run.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("sshagent: %w", err)
	}
	_ = os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("sshagent: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("sshagent: %w", err)
	}
	return ln, nil
}

// Serve answers the connections ln accepts until ctx ends or ln is
// closed; it closes ln and returns once every connection has ended.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			ln.Close()
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("sshagent: %w", err)
		}
		wg.Go(func() { s.ServeConn(ctx, c) })
	}
}

// ServeConn answers requests on c until the peer closes it, sends a frame
// that is not a request, stays silent for five minutes, or ctx ends; then
// it closes c.
func (s *Server) ServeConn(ctx context.Context, c net.Conn) {
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	for {
		_ = c.SetReadDeadline(time.Now().Add(idleTimeout))
		msg, err := readMessage(c)
		if err != nil {
			return
		}
		if _, err := c.Write(frame(s.handle(msg))); err != nil {
			return
		}
	}
}

func readMessage(r io.Reader) ([]byte, error) {
	var n uint32
	if err := binary.Read(r, binary.BigEndian, &n); err != nil {
		return nil, err
	}
	if n == 0 || n > MaxMessage {
		return nil, fmt.Errorf("sshagent: message of %d bytes", n)
	}
	msg := make([]byte, n)
	_, err := io.ReadFull(r, msg)
	return msg, err
}

func frame(msg []byte) []byte {
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(msg))), msg...)
}

// handle answers one request (without its length prefix, at least one
// byte).
func (s *Server) handle(msg []byte) []byte {
	switch msg[0] {
	case agentRequestIDs:
		out := []byte{agentIdentitiesAnswer}
		out = binary.BigEndian.AppendUint32(out, 1)
		out = appendString(out, s.blob)
		return appendString(out, []byte(s.comment))
	case agentSignRequest:
		rest := msg[1:]
		blob, rest, ok1 := readString(rest)
		data, rest, ok2 := readString(rest)
		if !ok1 || !ok2 || len(rest) != 4 || !bytes.Equal(blob, s.blob) {
			return []byte{agentFailure}
		}
		// The flags ask for RSA SHA-2 variants; for ECDSA P-256 the hash
		// is always SHA-256.
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
		sigBlob := appendString(appendString(nil, []byte(KeyType)), inner)
		return appendString([]byte{agentSignResponse}, sigBlob)
	}
	return []byte{agentFailure}
}

// PublicBlob is the SSH wire encoding of an ECDSA P-256 public key (RFC
// 5656 section 3.1).
func PublicBlob(pub *ecdsa.PublicKey) []byte {
	var point []byte
	if k, err := pub.ECDH(); err == nil {
		point = k.Bytes() // uncompressed point
	}
	b := appendString(nil, []byte(KeyType))
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
