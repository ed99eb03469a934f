package server

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"time"

	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/fleet/mqttpool"
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
