// Package sshca is the fleet's SSH certificate authority: it issues OpenSSH
// host certificates for devices' host keys, bound to their attested
// identity, so that operators trust every device's sshd with one
// `@cert-authority` line instead of trust-on-first-use.
//
// The CA key is a crypto.Signer: by default an ECDSA P-256 key in a PKCS#8
// PEM file (mode 0600, created at first start, see fleet/ca.FileSigner);
// any other signer plugs in through Config.Signer. A certificate's key ID is
// the device ID, its principals are names derived from the ID (by default
// the ID and <id>.<trust domain>), and its validity is the device
// certificate lifetime.
//
// Issuer answers the devices' ssh.request messages (pkg/wire): only an
// active device whose last attestation passed gets certificates.
package sshca

import (
	"crypto"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/pkg/wire"
	"golang.org/x/crypto/ssh"
)

// KeyFile is the SSH host CA key's file in the fleet's data directory.
const KeyFile = "ssh_ca.key"

// DefaultPrincipals are the principal templates when Config.Principals is
// empty: "{id}" is replaced by the device ID, "{domain}" by the trust
// domain.
var DefaultPrincipals = []string{"{id}", "{id}.{domain}"}

// backdate is how far in the past a certificate becomes valid, for skew.
const backdate = time.Minute

// MaxValidity bounds a certificate's lifetime.
const MaxValidity = 366 * 24 * time.Hour

// Config configures a CA.
type Config struct {
	// KeyFile is the CA key (PKCS#8 PEM, mode 0600), created at first
	// start. Required unless Signer is set.
	KeyFile string
	// Signer is the CA key; nil means the key in KeyFile. It must be an
	// ECDSA, Ed25519 or RSA key.
	Signer crypto.Signer
	// TrustDomain names the fleet, e.g. "fleet.example.com": it is the
	// suffix of the default principals and the known_hosts host pattern
	// "*.<TrustDomain>". Required.
	TrustDomain string
	// Principals are templates of the names put on a device's host
	// certificate ("{id}", "{domain}"); empty means DefaultPrincipals.
	Principals []string
	// Rand is the entropy for serials and nonces; nil means crypto/rand.
	Rand io.Reader
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
	// Logger receives lifecycle events; nil discards them.
	Logger *slog.Logger
}

// CA signs OpenSSH host certificates. It is safe for concurrent use if its
// Signer and Rand are.
type CA struct {
	cfg    Config
	signer ssh.Signer
	log    *slog.Logger
}

// Open loads the CA key from cfg.KeyFile, creating it at first start, or
// uses cfg.Signer.
func Open(cfg Config) (*CA, error) {
	if cfg.TrustDomain == "" || !validName(cfg.TrustDomain) {
		return nil, fmt.Errorf("sshca: trust domain %q is not a lowercase DNS-like name", cfg.TrustDomain)
	}
	if len(cfg.Principals) == 0 {
		cfg.Principals = DefaultPrincipals
	}
	for _, p := range cfg.Principals {
		if !validName(expand(p, "dev0", cfg.TrustDomain)) {
			return nil, fmt.Errorf("sshca: principal template %q does not make a host name", p)
		}
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	key := cfg.Signer
	if key == nil {
		if cfg.KeyFile == "" {
			return nil, errors.New("sshca: KeyFile or Signer is required")
		}
		var err error
		if key, err = ca.FileSigner(cfg.KeyFile); err != nil {
			return nil, fmt.Errorf("sshca: %w", err)
		}
	}
	signer, err := ssh.NewSignerFromSigner(key)
	if err != nil {
		return nil, fmt.Errorf("sshca: CA key: %w", err)
	}
	c := &CA{cfg: cfg, signer: signer, log: log}
	log.Info("sshca: ready", "key_file", cfg.KeyFile, "fingerprint", c.Fingerprint())
	return c, nil
}

// PublicKey returns the CA's public key.
func (c *CA) PublicKey() ssh.PublicKey { return c.signer.PublicKey() }

// AuthorizedKey returns the CA public key as one authorized_keys line
// (without newline), commented with the trust domain.
func (c *CA) AuthorizedKey() string {
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(c.PublicKey()))) + " sigil-ssh-ca@" + c.cfg.TrustDomain
}

// KnownHostsPattern is the host pattern of KnownHosts: "*.<trust domain>".
func (c *CA) KnownHostsPattern() string { return "*." + c.cfg.TrustDomain }

// KnownHosts returns the known_hosts line that trusts the CA for the
// fleet's host names: "@cert-authority *.<trust domain> <key> <comment>".
// A client connecting by the bare device ID (or an address) needs
// HostKeyAlias=<id>.<trust domain>, or its own pattern.
func (c *CA) KnownHosts() string {
	return "@cert-authority " + c.KnownHostsPattern() + " " + c.AuthorizedKey()
}

// Fingerprint is the CA key's SHA-256 fingerprint as ssh-keygen -l prints
// it ("SHA256:...").
func (c *CA) Fingerprint() string { return ssh.FingerprintSHA256(c.PublicKey()) }

// Principals returns the configured principals for a device.
func (c *CA) Principals(deviceID string) []string {
	out := make([]string, 0, len(c.cfg.Principals))
	for _, p := range c.cfg.Principals {
		out = append(out, expand(p, deviceID, c.cfg.TrustDomain))
	}
	return out
}

func expand(tmpl, id, domain string) string {
	return strings.NewReplacer("{id}", id, "{domain}", domain).Replace(tmpl)
}

// ErrHostKey reports a host key the CA does not certify.
var ErrHostKey = errors.New("sshca: unacceptable host key")

// CheckHostKey reports why the CA would not certify k: certificates,
// security-key and DSA keys are refused, and RSA keys shorter than 2048
// bits.
func CheckHostKey(k ssh.PublicKey) error {
	switch k.Type() {
	case ssh.KeyAlgoED25519, ssh.KeyAlgoECDSA256, ssh.KeyAlgoECDSA384, ssh.KeyAlgoECDSA521:
		return nil
	case ssh.KeyAlgoRSA:
		ck, ok := k.(ssh.CryptoPublicKey)
		if !ok {
			return fmt.Errorf("%w: RSA key of unknown size", ErrHostKey)
		}
		if rk, ok := ck.CryptoPublicKey().(interface{ Size() int }); !ok || rk.Size()*8 < 2048 {
			return fmt.Errorf("%w: RSA keys must have at least 2048 bits", ErrHostKey)
		}
		return nil
	}
	return fmt.Errorf("%w: type %s", ErrHostKey, k.Type())
}

// Sign issues a host certificate for hostKey: type HostCert, key ID
// deviceID, the given principals (nil means the configured ones), valid
// from a minute ago for validity. It checks the device ID, the key
// (CheckHostKey), the principals and the validity (at most MaxValidity).
func (c *CA) Sign(deviceID string, hostKey ssh.PublicKey, principals []string, validity time.Duration) (*ssh.Certificate, error) {
	if !wire.ValidID(deviceID) {
		return nil, fmt.Errorf("sshca: invalid device ID %q", deviceID)
	}
	if hostKey == nil {
		return nil, fmt.Errorf("%w: none", ErrHostKey)
	}
	if err := CheckHostKey(hostKey); err != nil {
		return nil, err
	}
	if principals == nil {
		principals = c.Principals(deviceID)
	}
	if len(principals) == 0 {
		return nil, errors.New("sshca: no principals")
	}
	for _, p := range principals {
		if !validName(p) {
			return nil, fmt.Errorf("sshca: principal %q is not a host name", p)
		}
	}
	if validity <= 0 || validity > MaxValidity {
		return nil, fmt.Errorf("sshca: validity %s out of range", validity)
	}
	var serial [8]byte
	if _, err := io.ReadFull(c.cfg.Rand, serial[:]); err != nil {
		return nil, fmt.Errorf("sshca: serial: %w", err)
	}
	now := c.cfg.Now()
	cert := &ssh.Certificate{
		Key:             hostKey,
		Serial:          binary.BigEndian.Uint64(serial[:]),
		CertType:        ssh.HostCert,
		KeyId:           deviceID,
		ValidPrincipals: append([]string(nil), principals...),
		ValidAfter:      uint64(now.Add(-backdate).Unix()),
		ValidBefore:     uint64(now.Add(validity).Unix()),
	}
	if err := cert.SignCert(c.cfg.Rand, c.signer); err != nil {
		return nil, fmt.Errorf("sshca: sign: %w", err)
	}
	return cert, nil
}

// validName reports whether s is a lowercase DNS-like host name (labels of
// [a-z0-9_-] separated by dots), safe in a known_hosts pattern and a
// principal list.
func validName(s string) bool {
	if s == "" || len(s) > 253 || s[0] == '.' || s[len(s)-1] == '.' || strings.Contains(s, "..") {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_') {
			return false
		}
	}
	return true
}
