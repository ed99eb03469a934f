package mqttpool

import (
	"crypto"
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
)

// crlValidity is how long the CRL of a new pool member's
// configuration is valid: Mosquitto refuses every client once it has
// passed, so the fleet must replace it before (docs/BROKERS.md).
const crlValidity = 7 * 24 * time.Hour

// CA is what a broker's configuration needs of the fleet CA (ca.CA): its
// trust bundle, a server certificate and its CRL.
type CA interface {
	TrustBundle() [][]byte
	IssueServer(names []string, pub crypto.PublicKey, lifetime time.Duration) (*x509.Certificate, error)
	CRL(revoked []ca.Revoked, validity time.Duration) ([]byte, error)
}

var _ CA = (*ca.CA)(nil)

// Complete completes the configuration of a broker of the pool (its
// role, directory, listeners and topic tree set) from the fleet's CA and
// data directory: the trust bundle, a new server certificate of the CA
// for names (and its key), the CA's CRL of revoked (RoleDevice), and the
// fleet's user name and password (Secret).
func Complete(c CA, dataDir string, m Member, names []string, revoked []ca.Revoked) (Member, error) {
	secret, err := Secret(dataDir)
	if err != nil {
		return m, err
	}
	m.Username, m.Password = Username, secret
	m.CAPEM = nil
	for _, der := range c.TrustBundle() {
		m.CAPEM = append(m.CAPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return m, fmt.Errorf("mqttpool: broker key: %w", err)
	}
	cert, err := c.IssueServer(names, key.Public(), 0)
	if err != nil {
		return m, fmt.Errorf("mqttpool: broker certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return m, fmt.Errorf("mqttpool: broker key: %w", err)
	}
	m.CertPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
	m.KeyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	if m.Role == RoleDevice {
		der, err := c.CRL(revoked, crlValidity)
		if err != nil {
			return m, err
		}
		m.CRLPEM = pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der})
	}
	return m, nil
}

// WriteConfig writes the configuration of a broker of the pool into out
// (`sigil broker-config`): m's role, directory (on the broker's host),
// listeners, topic tree and names for its certificate given; the CA and
// fleet credentials from c and the fleet's data directory. crl, when not
// empty, is the fleet's current CRL (DER or PEM, as GET /crl serves it),
// which must be c's; otherwise the CRL written lists nothing. It returns
// the names of the files written.
func WriteConfig(c *ca.CA, dataDir string, m Member, names []string, crl []byte, out string) ([]string, error) {
	m, err := Complete(c, dataDir, m, names, nil)
	if err != nil {
		return nil, err
	}
	if len(crl) > 0 && m.Role == RoleDevice {
		der := crl
		if b, _ := pem.Decode(crl); b != nil && b.Type == "X509 CRL" {
			der = b.Bytes
		}
		list, err := x509.ParseRevocationList(der)
		if err != nil {
			return nil, fmt.Errorf("mqttpool: CRL: %w", err)
		}
		if err := list.CheckSignatureFrom(c.Certificate()); err != nil {
			return nil, fmt.Errorf("mqttpool: the CRL is not the fleet CA's: %w", err)
		}
		m.CRLPEM = pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der})
	}
	files, modes, err := m.Files()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return nil, fmt.Errorf("mqttpool: %w", err)
	}
	var written []string
	for _, name := range slices.Sorted(maps.Keys(files)) {
		path := filepath.Join(out, name)
		if err := os.WriteFile(path, files[name], fs.FileMode(modes[name])); err != nil {
			return written, fmt.Errorf("mqttpool: %w", err)
		}
		if err := os.Chmod(path, fs.FileMode(modes[name])); err != nil { // an existing file keeps its mode otherwise
			return written, fmt.Errorf("mqttpool: %w", err)
		}
		written = append(written, path)
	}
	return written, nil
}
