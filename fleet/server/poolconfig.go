package server

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/fleet/mqttpool"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// poolCRLValidity is how long the CRL of a new pool member's
// configuration is valid: Mosquitto refuses every client once it has
// passed, so the fleet must replace it before (docs/BROKERS.md).
const poolCRLValidity = 7 * 24 * time.Hour

// PoolMember completes the configuration of a broker of the pool (its
// role, directory, listeners and topic tree set) from the fleet's CA and
// data directory: the trust bundle, a new server certificate of the CA
// for names (and its key), the CA's CRL of revoked (RoleDevice), and the
// fleet's user name and password (PoolSecret).
func PoolMember(c *ca.CA, dataDir string, m mqttpool.Member, names []string, revoked []ca.Revoked) (mqttpool.Member, error) {
	secret, err := PoolSecret(dataDir)
	if err != nil {
		return m, err
	}
	m.Username, m.Password = PoolUsername, secret
	m.CAPEM = nil
	for _, der := range c.TrustBundle() {
		m.CAPEM = append(m.CAPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return m, fmt.Errorf("server: broker key: %w", err)
	}
	cert, err := c.IssueServer(names, key.Public(), 0)
	if err != nil {
		return m, fmt.Errorf("server: broker certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return m, fmt.Errorf("server: broker key: %w", err)
	}
	m.CertPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
	m.KeyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	if m.Role == mqttpool.RoleDevice {
		der, err := c.CRL(revoked, poolCRLValidity)
		if err != nil {
			return m, err
		}
		m.CRLPEM = pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der})
	}
	return m, nil
}

// BrokerConfig writes the configuration of a broker of the pool into out
// (`sigil broker-config`): m's role, directory (on the broker's host),
// listeners and names for its certificate given; the topic tree, CA and
// fleet credentials from cfg's data directory, which must hold the fleet
// CA already (`sigil serve` creates it). crl, when not empty, is the
// fleet's current CRL (DER or PEM, as GET /crl serves it); otherwise the
// CRL written lists nothing. It returns the names of the files written.
func BrokerConfig(cfg Config, m mqttpool.Member, names []string, crl []byte, out string) ([]string, error) {
	cfg.setDefaults()
	if _, err := os.Stat(filepath.Join(cfg.DataDir, CACertFile)); err != nil {
		return nil, fmt.Errorf("server: no fleet CA in %s (start sigil serve once first): %w", cfg.DataDir, err)
	}
	c, err := ca.Open(ca.Config{Dir: filepath.Join(cfg.DataDir, "ca"), TrustDomain: cfg.TrustDomain})
	if err != nil {
		return nil, err
	}
	m.Topics = wire.Topics{Prefix: cfg.TopicPrefix}
	if m, err = PoolMember(c, cfg.DataDir, m, names, nil); err != nil {
		return nil, err
	}
	if len(crl) > 0 && m.Role == mqttpool.RoleDevice {
		der := crl
		if b, _ := pem.Decode(crl); b != nil && b.Type == "X509 CRL" {
			der = b.Bytes
		}
		list, err := x509.ParseRevocationList(der)
		if err != nil {
			return nil, fmt.Errorf("server: CRL: %w", err)
		}
		if err := list.CheckSignatureFrom(c.Certificate()); err != nil {
			return nil, fmt.Errorf("server: the CRL is not the fleet CA's: %w", err)
		}
		m.CRLPEM = pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der})
	}
	files, modes, err := m.Files()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	var written []string
	for _, name := range slices.Sorted(maps.Keys(files)) {
		path := filepath.Join(out, name)
		if err := os.WriteFile(path, files[name], fs.FileMode(modes[name])); err != nil {
			return written, fmt.Errorf("server: %w", err)
		}
		if err := os.Chmod(path, fs.FileMode(modes[name])); err != nil { // an existing file keeps its mode otherwise
			return written, fmt.Errorf("server: %w", err)
		}
		written = append(written, path)
	}
	return written, nil
}
