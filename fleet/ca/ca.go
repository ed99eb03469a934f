// Package ca is the fleet's certificate authority: a self-signed root that
// issues short-lived device certificates (SPIFFE ID in the URI SAN) and the
// server certificates of the fleet's own broker and API.
//
// The CA key is a crypto.Signer: by default an ECDSA P-256 key in a PKCS#8
// PEM file (ca.key, mode 0600) next to the certificate (ca.crt) in the
// configured directory; any other signer (an HSM, a cloud KMS) plugs in
// through Config.Signer.
package ca

import (
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/sigil-iot/sigil/fleet/internal/fsutil"
	"github.com/sigil-iot/sigil/pkg/identity"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// File names in Config.Dir.
const (
	KeyFile        = "ca.key"
	CertFile       = "ca.crt"
	ServerKeyFile  = "server.key"
	ServerCertFile = "server.crt"
)

// Defaults.
const (
	DefaultDeviceLifetime = 24 * time.Hour
	DefaultServerLifetime = 365 * 24 * time.Hour
	rootLifetime          = 10 * 365 * 24 * time.Hour
	backdate              = time.Minute // NotBefore is this far in the past, for clock skew
)

// Config configures a CA.
type Config struct {
	// Dir holds ca.crt, ca.key (unless Signer is set) and the server key
	// and certificate. It is created (mode 0700) if missing. Required.
	Dir string
	// TrustDomain is the SPIFFE trust domain of device IDs, e.g.
	// "fleet.example.com". Required.
	TrustDomain string
	// DeviceLifetime is the lifetime of device certificates when
	// IssueDevice is given none; 0 means DefaultDeviceLifetime.
	DeviceLifetime time.Duration
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
	// Rand is the entropy for serial numbers; nil means crypto/rand.
	Rand io.Reader
	// Signer is the CA key; nil means FileSigner(Dir/ca.key).
	Signer crypto.Signer
	// NewSigner returns the key of CA generation n > 1 (created on first
	// call, loaded after), for rotation with an external key store; nil
	// means key files ca-<n>.key in Dir. Rotation refuses to run when
	// Signer is set and NewSigner is not.
	NewSigner func(n int) (crypto.Signer, error)
	// Logger receives lifecycle events; nil discards them.
	Logger *slog.Logger
}

// CA issues certificates. It is safe for concurrent use if its Signer is.
type CA struct {
	cfg Config
	log *slog.Logger

	mu sync.Mutex // serializes ServerTLS's and rotation's file updates

	gmu    sync.RWMutex  // guards the fields below; rotation swaps them
	signer crypto.Signer // the active generation's key
	cert   *x509.Certificate
	gens   []*generation // every generation, oldest first
	pool   *x509.CertPool

	shared  *sharing // set by Share; guarded by mu
	adopted []func() // OnAdopt's; guarded by mu
	changed []func() // OnGenerations'; guarded by mu
}

// Open loads the CA from cfg.Dir, or creates it on first start: the key
// (unless cfg.Signer is given) and a self-signed root certificate valid for
// ten years, named "Sigil fleet CA <trust domain>". On later starts the
// certificate is loaded and must match the key.
func Open(cfg Config) (*CA, error) {
	if cfg.Dir == "" {
		return nil, errors.New("ca: Dir is required")
	}
	if !validTrustDomain(cfg.TrustDomain) {
		return nil, fmt.Errorf("ca: trust domain %q is not a lowercase DNS-like name", cfg.TrustDomain)
	}
	if cfg.DeviceLifetime < 0 {
		return nil, errors.New("ca: negative device lifetime")
	}
	if cfg.DeviceLifetime == 0 {
		cfg.DeviceLifetime = DefaultDeviceLifetime
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	signer := cfg.Signer
	if signer == nil {
		s, err := FileSigner(filepath.Join(cfg.Dir, KeyFile))
		if err != nil {
			return nil, err
		}
		signer = s
	}
	c := &CA{cfg: cfg, signer: signer, log: log}

	certPath := filepath.Join(cfg.Dir, CertFile)
	b, err := os.ReadFile(certPath)
	switch {
	case err == nil:
		cert, err := parseCertPEM(b)
		if err != nil {
			return nil, fmt.Errorf("ca: %s: %w", certPath, err)
		}
		if !publicKeyEqual(signer.Public(), cert.PublicKey) {
			return nil, fmt.Errorf("ca: %s does not match the CA key", certPath)
		}
		if !cert.IsCA {
			return nil, fmt.Errorf("ca: %s is not a CA certificate", certPath)
		}
		c.cert = cert
		log.Info("ca: loaded", "subject", cert.Subject.String(), "not_after", cert.NotAfter)
	case errors.Is(err, fs.ErrNotExist):
		cert, err := c.createRoot()
		if err != nil {
			return nil, err
		}
		if err := writeFileAtomic(certPath, pemCert(cert.Raw), 0o644); err != nil {
			return nil, fmt.Errorf("ca: %w", err)
		}
		c.cert = cert
		log.Info("ca: created", "subject", cert.Subject.String(), "cert", certPath, "not_after", cert.NotAfter)
	default:
		return nil, fmt.Errorf("ca: %w", err)
	}
	if err := c.loadGenerations(); err != nil {
		return nil, err
	}
	if now := cfg.Now(); now.After(c.cert.NotAfter) {
		return nil, fmt.Errorf("ca: certificate expired at %s", c.cert.NotAfter.Format(time.RFC3339))
	}
	return c, nil
}

func (c *CA) createRoot() (*x509.Certificate, error) {
	return c.createRootFor(c.signer, "Sigil fleet CA "+c.cfg.TrustDomain)
}

// createRootFor makes a self-signed root certificate for signer.
func (c *CA) createRootFor(signer crypto.Signer, name string) (*x509.Certificate, error) {
	serial, err := c.serial()
	if err != nil {
		return nil, err
	}
	now := c.cfg.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"Sigil"}, CommonName: name},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(rootLifetime),
		IsCA:                  true,
		BasicConstraintsValid: true,
		// One level below the root: the cross certificate that links the
		// next generation to this one (see rotate.go). Leaves are issued
		// by the root directly.
		MaxPathLen: 1,
		KeyUsage:   x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(c.cfg.Rand, tmpl, tmpl, signer.Public(), signer)
	if err != nil {
		return nil, fmt.Errorf("ca: create root certificate: %w", err)
	}
	return x509.ParseCertificate(der)
}

// Certificate returns the active generation's CA certificate: the one that
// signs what the CA issues now.
func (c *CA) Certificate() *x509.Certificate {
	c.gmu.RLock()
	defer c.gmu.RUnlock()
	return c.cert
}

// CertPEM returns the trust bundle in PEM: the root certificates of every
// generation that is prepared or active, the active one first.
func (c *CA) CertPEM() []byte {
	var out []byte
	for _, der := range c.TrustBundle() {
		out = append(out, pemCert(der)...)
	}
	return out
}

// Pool returns a pool holding the root certificate of every generation,
// retired ones included, for verifying what the CA ever issued; Issuer
// tells whether the issuing generation is still trusted. The caller must
// not modify it; rotation replaces it, so ask again rather than keep it.
func (c *CA) Pool() *x509.CertPool {
	c.gmu.RLock()
	defer c.gmu.RUnlock()
	return c.pool
}

// active returns the signing generation's certificate and key.
func (c *CA) active() (*x509.Certificate, crypto.Signer) {
	c.gmu.RLock()
	defer c.gmu.RUnlock()
	return c.cert, c.signer
}

// IssueDevice issues a device certificate, an X509-SVID as the SPIFFE
// X509-SVID specification defines it: common name deviceID, exactly one
// URI SAN spiffe://<trust domain>/device/<deviceID> and no other name, not
// a CA, key usage digitalSignature only (critical), extended key usage
// serverAuth and clientAuth (the specification requires both when the
// extension is present; the device's certificate names no host, so no
// client that checks the server's name accepts it as a server), a subject
// key identifier, a random 128-bit serial, valid from a minute ago for
// lifetime (0 means Config.DeviceLifetime), never past the CA's own
// expiry. IDs that wire.ValidID refuses are refused.
func (c *CA) IssueDevice(deviceID string, pub crypto.PublicKey, lifetime time.Duration) (*x509.Certificate, error) {
	if !wire.ValidID(deviceID) {
		return nil, fmt.Errorf("ca: invalid device ID %q", deviceID)
	}
	if lifetime == 0 {
		lifetime = c.cfg.DeviceLifetime
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: deviceID},
		URIs:        []*url.URL{identity.SPIFFEID(c.cfg.TrustDomain, deviceID)},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	return c.issue(tmpl, pub, lifetime)
}

// IssueWorkload issues a workload's X509-SVID: exactly one URI SAN, id,
// which must be a workload SPIFFE ID under a device of this trust domain
// (spiffe://<trust domain>/device/<ID>/workload/<name>), no common name
// (so the broker, which takes a device's identity from its one URI SAN
// and common name, refuses it: identity.FromCertificate), not a CA, key
// usage digitalSignature, extended key usage serverAuth and clientAuth,
// valid from a minute ago for lifetime (required).
func (c *CA) IssueWorkload(id *url.URL, pub crypto.PublicKey, lifetime time.Duration) (*x509.Certificate, error) {
	dev, name, ok := strings.Cut(strings.TrimPrefix(id.Path, "/device/"), "/workload/")
	if id.Scheme != "spiffe" || id.Host != c.cfg.TrustDomain || !strings.HasPrefix(id.Path, "/device/") || !ok ||
		!wire.ValidID(dev) || !wire.ValidWorkloadName(name) || id.RawQuery != "" || id.Fragment != "" || id.User != nil {
		return nil, fmt.Errorf("ca: %q is not a workload SPIFFE ID of this trust domain", id)
	}
	if lifetime <= 0 {
		return nil, errors.New("ca: workload SVID needs a lifetime")
	}
	tmpl := &x509.Certificate{
		URIs:        []*url.URL{id},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	return c.issue(tmpl, pub, lifetime)
}

// IssueBridge issues the credential of a site's plant broker: common name
// identity.BridgeClientID(site), exactly one URI SAN
// spiffe://<trust domain>/bridge/<site>, key usage digitalSignature,
// client authentication only (a bridge connects to the fleet's broker; it
// never serves with this certificate), valid from a minute ago for
// lifetime (required, never past the CA's expiry). Sites that
// wire.ValidID refuses are refused.
func (c *CA) IssueBridge(site string, pub crypto.PublicKey, lifetime time.Duration) (*x509.Certificate, error) {
	if !wire.ValidID(site) {
		return nil, fmt.Errorf("ca: invalid site %q", site)
	}
	if lifetime <= 0 {
		return nil, errors.New("ca: a bridge certificate needs a lifetime")
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: identity.BridgeClientID(site)},
		URIs:        []*url.URL{identity.BridgeSPIFFEID(c.cfg.TrustDomain, site)},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	return c.issue(tmpl, pub, lifetime)
}

// IssueServer issues a server certificate for the fleet's broker or API:
// names are DNS names or IP addresses (the first is also the common name),
// server authentication only; lifetime 0 means DefaultServerLifetime.
func (c *CA) IssueServer(names []string, pub crypto.PublicKey, lifetime time.Duration) (*x509.Certificate, error) {
	if len(names) == 0 {
		return nil, errors.New("ca: server certificate needs at least one name")
	}
	if lifetime == 0 {
		lifetime = DefaultServerLifetime
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: names[0]},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if n != "" && !strings.ContainsAny(n, " /\\") {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		} else {
			return nil, fmt.Errorf("ca: server name %q", n)
		}
	}
	return c.issue(tmpl, pub, lifetime)
}

// issue completes a leaf template (serial, validity, basic constraints,
// subject key identifier) and signs it.
func (c *CA) issue(tmpl *x509.Certificate, pub crypto.PublicKey, lifetime time.Duration) (*x509.Certificate, error) {
	if lifetime < 0 {
		return nil, errors.New("ca: negative lifetime")
	}
	if pub == nil {
		return nil, errors.New("ca: no public key")
	}
	ski, err := subjectKeyID(pub)
	if err != nil {
		return nil, err
	}
	tmpl.SubjectKeyId = ski
	serial, err := c.serial()
	if err != nil {
		return nil, err
	}
	now := c.cfg.Now()
	caCert, signer := c.active()
	tmpl.SerialNumber = serial
	tmpl.NotBefore = now.Add(-backdate)
	tmpl.NotAfter = now.Add(lifetime)
	if tmpl.NotAfter.After(caCert.NotAfter) {
		tmpl.NotAfter = caCert.NotAfter
	}
	tmpl.BasicConstraintsValid = true
	der, err := x509.CreateCertificate(c.cfg.Rand, tmpl, caCert, pub, signer)
	if err != nil {
		return nil, fmt.Errorf("ca: issue: %w", err)
	}
	return x509.ParseCertificate(der)
}

// subjectKeyID returns the key identifier of pub by method 1 of RFC 7093
// section 2: the leftmost 160 bits of the SHA-256 of the subjectPublicKey
// BIT STRING's value. crypto/x509 derives the CA certificates' identifiers
// the same way.
func subjectKeyID(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("ca: public key: %w", err)
	}
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if rest, err := asn1.Unmarshal(der, &spki); err != nil || len(rest) != 0 {
		return nil, fmt.Errorf("ca: public key: malformed SubjectPublicKeyInfo: %v", err)
	}
	sum := sha256.Sum256(spki.PublicKey.Bytes)
	return sum[:20], nil
}

// serial returns a random positive 128-bit serial number.
func (c *CA) serial() (*big.Int, error) {
	b := make([]byte, 16)
	if _, err := io.ReadFull(c.cfg.Rand, b); err != nil {
		return nil, fmt.Errorf("ca: serial: %w", err)
	}
	b[0] &= 0x7f // positive in DER without padding
	b[0] |= 0x40 // and never short or zero
	return new(big.Int).SetBytes(b), nil
}

// validTrustDomain accepts a SPIFFE trust domain: lowercase letters,
// digits, '.', '-' and '_', at most 255 characters.
func validTrustDomain(s string) bool {
	if s == "" || len(s) > 255 || s[0] == '.' || s[0] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		ch := s[i]
		if !(ch >= 'a' && ch <= 'z' || ch >= '0' && ch <= '9' || ch == '.' || ch == '-' || ch == '_') {
			return false
		}
	}
	return true
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func parseCertPEM(b []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM CERTIFICATE block")
	}
	return x509.ParseCertificate(block.Bytes)
}

func publicKeyEqual(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	return fsutil.WriteFileAtomic(path, data, mode)
}
