package wire

import (
	"errors"
	"fmt"
	"strings"
)

// SSH host certificate message types (protocol version 3).
const (
	TypeSSHRequest = "ssh.request" // device -> fleet (up "ssh"): SSHRequest
	TypeSSHCerts   = "ssh.certs"   // fleet -> device (down "ssh"): SSHCerts
)

// Limits on SSH host keys and certificates. Lines are OpenSSH
// authorized_keys text: "<type> <base64> [comment]". An RSA-16384 public
// key is about 2.8 KB of text, its certificate a little more.
const (
	MaxSSHHostKeys = 8
	MaxSSHKeyLine  = 4096
	MaxSSHCertLine = 8192
)

// SSHRequest asks for OpenSSH host certificates for the device's host
// public keys, one authorized_keys line each. Private keys never leave the
// device. The fleet answers with SSHCerts, whose Corr is this message's ID.
type SSHRequest struct {
	HostKeys []string `cbor:"1,keyasint"`
}

// Validate bounds the keys and checks that each looks like an
// authorized_keys line; the fleet parses them fully.
func (r *SSHRequest) Validate() error {
	if len(r.HostKeys) == 0 || len(r.HostKeys) > MaxSSHHostKeys {
		return fmt.Errorf("host keys: %d, want 1 to %d", len(r.HostKeys), MaxSSHHostKeys)
	}
	var errs []error
	for i, k := range r.HostKeys {
		if err := SSHLine(k, MaxSSHKeyLine); err != nil {
			errs = append(errs, fmt.Errorf("host key %d: %w", i, err))
		}
	}
	return errors.Join(errs...)
}

// SSHCert is the certificate for the request's host key at Index.
type SSHCert struct {
	Index int    `cbor:"1,keyasint"`
	Cert  string `cbor:"2,keyasint"` // authorized_keys line, "<type>-cert-v01@openssh.com <base64> <comment>"
}

// SSHCerts answers an SSHRequest. Status is StatusActive with a
// certificate for each key the fleet signed (keys it refused are named in
// Message), or StatusRefused with the reason (e.g. ReasonQuarantined,
// ReasonAttestationFailed: ask again after the next passing attestation).
type SSHCerts struct {
	Status  string    `cbor:"1,keyasint"`
	Reason  Reason    `cbor:"2,keyasint"`
	Message string    `cbor:"3,keyasint,omitempty"`
	Certs   []SSHCert `cbor:"4,keyasint,omitempty"`
	// Validity is the certificates' lifetime in seconds: the device asks
	// again before it ends, on its own clock (which may not know the date).
	Validity int64 `cbor:"5,keyasint,omitempty"`
}

// Validate checks the status, the indexes and the lines.
func (c *SSHCerts) Validate() error {
	switch c.Status {
	case StatusActive:
		if len(c.Certs) == 0 || c.Validity <= 0 {
			return errors.New("active answer without certificates or validity")
		}
	case StatusRefused:
		if len(c.Certs) != 0 {
			return errors.New("refusal with certificates")
		}
	default:
		return errors.New("status")
	}
	if len(c.Certs) > MaxSSHHostKeys || len(c.Message) > 512 || c.Validity < 0 {
		return errors.New("sizes")
	}
	seen := make(map[int]bool, len(c.Certs))
	for _, ct := range c.Certs {
		if ct.Index < 0 || ct.Index >= MaxSSHHostKeys || seen[ct.Index] {
			return fmt.Errorf("certificate index %d", ct.Index)
		}
		seen[ct.Index] = true
		if err := SSHLine(ct.Cert, MaxSSHCertLine); err != nil {
			return fmt.Errorf("certificate %d: %w", ct.Index, err)
		}
		if !strings.HasSuffix(SSHKeyType(ct.Cert), "-cert-v01@openssh.com") {
			return fmt.Errorf("certificate %d: not an OpenSSH certificate", ct.Index)
		}
	}
	return nil
}

// SSHLine checks that s is one authorized_keys-style line of at most max
// bytes: a key type of [a-z0-9@.-], one space, standard base64, and an
// optional comment of printable ASCII. It does not decode the key.
func SSHLine(s string, max int) error {
	if s == "" || len(s) > max {
		return errors.New("line empty or too long")
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return errors.New("line has control or non-ASCII characters")
		}
	}
	typ, rest, ok := strings.Cut(s, " ")
	if !ok || typ == "" || len(typ) > 64 {
		return errors.New("no key type")
	}
	for i := 0; i < len(typ); i++ {
		c := typ[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '@' || c == '.' || c == '-') {
			return errors.New("key type has invalid characters")
		}
	}
	b64, _, _ := strings.Cut(rest, " ")
	if len(b64) < 16 || len(b64)%4 != 0 {
		return errors.New("key data is not base64")
	}
	for i := 0; i < len(b64); i++ {
		c := b64[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '+' || c == '/' || c == '=') {
			return errors.New("key data is not base64")
		}
	}
	return nil
}

// SSHKeyType returns the first field of an authorized_keys line.
func SSHKeyType(line string) string {
	typ, _, _ := strings.Cut(line, " ")
	return typ
}
