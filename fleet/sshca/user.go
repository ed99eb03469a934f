package sshca

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

// UserCert is what an OpenSSH user certificate grants: SignUser puts
// exactly this on the certificate and nothing more.
type UserCert struct {
	// KeyID names the grant; sshd logs it with every login.
	KeyID string
	// Serial is the grant's serial, what a KRL revokes. Not zero.
	Serial uint64
	// Principals are the names sshd matches (AuthorizedPrincipalsFile).
	Principals []string
	// ValidAfter and ValidBefore bound the certificate.
	ValidAfter, ValidBefore time.Time
	// SourceAddress, if set, is the critical option source-address: a
	// comma-separated list of addresses or CIDR blocks.
	SourceAddress string
	// PortForwarding and AgentForwarding add the permit- extensions;
	// without them the certificate allows neither. A pty is always
	// permitted; X11 forwarding and user rc never.
	PortForwarding, AgentForwarding bool
}

// ErrUserCert reports a user certificate the CA will not sign.
var ErrUserCert = errors.New("sshca: unacceptable user certificate")

// SignUser issues a user certificate for key (an operator's own public
// key, checked with CheckHostKey's rules). It checks the key ID, serial,
// principals and validity (ordered, at most MaxValidity).
func (c *CA) SignUser(key ssh.PublicKey, u UserCert) (*ssh.Certificate, error) {
	if key == nil {
		return nil, fmt.Errorf("%w: no key", ErrUserCert)
	}
	if _, isCert := key.(*ssh.Certificate); isCert {
		return nil, fmt.Errorf("%w: the key is a certificate", ErrUserCert)
	}
	if err := CheckHostKey(key); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUserCert, err)
	}
	switch {
	case u.KeyID == "" || len(u.KeyID) > 256 || strings.ContainsFunc(u.KeyID, func(r rune) bool { return r <= ' ' || r > '~' }):
		return nil, fmt.Errorf("%w: key ID", ErrUserCert)
	case u.Serial == 0:
		return nil, fmt.Errorf("%w: serial 0", ErrUserCert)
	case len(u.Principals) == 0:
		return nil, fmt.Errorf("%w: no principals", ErrUserCert)
	case !u.ValidAfter.Before(u.ValidBefore) || u.ValidBefore.Sub(u.ValidAfter) > MaxValidity:
		return nil, fmt.Errorf("%w: validity", ErrUserCert)
	case strings.ContainsAny(u.SourceAddress, " \t\n"):
		return nil, fmt.Errorf("%w: source address", ErrUserCert)
	}
	for _, p := range u.Principals {
		if p == "" || strings.ContainsAny(p, ", \t\n") {
			return nil, fmt.Errorf("%w: principal %q", ErrUserCert, p)
		}
	}
	perms := ssh.Permissions{Extensions: map[string]string{"permit-pty": ""}}
	if u.PortForwarding {
		perms.Extensions["permit-port-forwarding"] = ""
	}
	if u.AgentForwarding {
		perms.Extensions["permit-agent-forwarding"] = ""
	}
	if u.SourceAddress != "" {
		perms.CriticalOptions = map[string]string{"source-address": u.SourceAddress}
	}
	cert := &ssh.Certificate{
		Key: key, Serial: u.Serial, CertType: ssh.UserCert, KeyId: u.KeyID,
		ValidPrincipals: slices.Clone(u.Principals),
		ValidAfter:      uint64(u.ValidAfter.Unix()), ValidBefore: uint64(u.ValidBefore.Unix()),
		Permissions: perms,
	}
	if err := cert.SignCert(c.cfg.Rand, c.signer); err != nil {
		return nil, fmt.Errorf("sshca: sign: %w", err)
	}
	return cert, nil
}

// KRL encodes an OpenSSH key revocation list (PROTOCOL.krl, format 1)
// that revokes the certificates signed by ca with the given serials
// (zeros are left out) and key IDs: sshd's RevokedKeys reads it. With no
// serial and no key ID it revokes nothing, which is what sshd needs to
// start admitting certificates. version orders lists (a newer replaces an
// older one).
func KRL(ca ssh.PublicKey, serials []uint64, keyIDs []string, version uint64, generated time.Time) []byte {
	b := []byte("SSHKRL\n\x00")
	b = binary.BigEndian.AppendUint32(b, 1)
	b = binary.BigEndian.AppendUint64(b, version)
	b = binary.BigEndian.AppendUint64(b, uint64(max(generated.Unix(), 0)))
	b = binary.BigEndian.AppendUint64(b, 0) // flags
	b = krlString(b, nil)                   // reserved
	b = krlString(b, nil)                   // comment
	serials = slices.Sorted(slices.Values(serials))
	serials = slices.Compact(serials)
	serials = slices.DeleteFunc(serials, func(s uint64) bool { return s == 0 })
	if len(serials) == 0 && len(keyIDs) == 0 {
		return b
	}
	sec := krlString(nil, ca.Marshal())
	sec = krlString(sec, nil) // reserved
	if len(serials) > 0 {
		var list []byte
		for _, s := range serials {
			list = binary.BigEndian.AppendUint64(list, s)
		}
		sec = krlString(append(sec, 0x20), list) // KRL_SECTION_CERT_SERIAL_LIST
	}
	if len(keyIDs) > 0 {
		var ids []byte
		for _, id := range slices.Compact(slices.Sorted(slices.Values(keyIDs))) {
			ids = krlString(ids, []byte(id))
		}
		sec = krlString(append(sec, 0x23), ids) // KRL_SECTION_CERT_KEY_ID
	}
	return krlString(append(b, 1), sec) // KRL_SECTION_CERTIFICATES
}

func krlString(b, s []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}
