// Package identity names devices: the device ID derived from the endorsement
// key, the EK fingerprint, and the SPIFFE ID carried in device certificates.
package identity

import (
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// Fingerprint is the SHA-256 of the EK's PKIX public key, in hex. It is what
// allow-lists hold and what an operator compares with a vendor's record.
func Fingerprint(ek crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(ek)
	if err != nil {
		return "", fmt.Errorf("identity: %w", err)
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:]), nil
}

// DeviceID derives the device ID from the EK: the first 16 bytes of the
// fingerprint in hex. It is stable across re-enrollment because the EK is.
func DeviceID(ek crypto.PublicKey) (string, error) {
	fp, err := Fingerprint(ek)
	if err != nil {
		return "", err
	}
	return fp[:32], nil
}

// SPIFFEID returns spiffe://<trustDomain>/device/<id>.
func SPIFFEID(trustDomain, id string) *url.URL {
	return &url.URL{Scheme: "spiffe", Host: trustDomain, Path: "/device/" + id}
}

// FromSPIFFE returns the device ID from a device SPIFFE ID in trustDomain.
func FromSPIFFE(u *url.URL, trustDomain string) (string, error) {
	if u == nil || u.Scheme != "spiffe" || u.Host != trustDomain || !strings.HasPrefix(u.Path, "/device/") {
		return "", errors.New("identity: not a device SPIFFE ID of this trust domain")
	}
	id := strings.TrimPrefix(u.Path, "/device/")
	if id == "" || strings.Contains(id, "/") {
		return "", errors.New("identity: malformed device SPIFFE ID")
	}
	return id, nil
}

// FromCertificate returns the device ID carried by a device certificate's
// single SPIFFE URI SAN, which must agree with its common name.
func FromCertificate(c *x509.Certificate, trustDomain string) (string, error) {
	if len(c.URIs) != 1 {
		return "", errors.New("identity: certificate must carry exactly one URI SAN")
	}
	id, err := FromSPIFFE(c.URIs[0], trustDomain)
	if err != nil {
		return "", err
	}
	if c.Subject.CommonName != id {
		return "", errors.New("identity: common name differs from SPIFFE ID")
	}
	return id, nil
}

// BridgeSPIFFEID returns spiffe://<trustDomain>/bridge/<site>: the identity
// of a plant broker that bridges a site's devices to the fleet.
func BridgeSPIFFEID(trustDomain, site string) *url.URL {
	return &url.URL{Scheme: "spiffe", Host: trustDomain, Path: "/bridge/" + site}
}

// BridgeFromCertificate returns the site of a bridge certificate: its
// single URI SAN is a bridge SPIFFE ID of trustDomain, and its common name
// is BridgeClientID(site). A device certificate is not a bridge's, and a
// bridge certificate is not a device's (FromCertificate refuses it).
func BridgeFromCertificate(c *x509.Certificate, trustDomain string) (string, error) {
	if len(c.URIs) != 1 {
		return "", errors.New("identity: certificate must carry exactly one URI SAN")
	}
	u := c.URIs[0]
	if u == nil || u.Scheme != "spiffe" || u.Host != trustDomain || !strings.HasPrefix(u.Path, "/bridge/") {
		return "", errors.New("identity: not a bridge SPIFFE ID of this trust domain")
	}
	site := strings.TrimPrefix(u.Path, "/bridge/")
	if site == "" || strings.Contains(site, "/") {
		return "", errors.New("identity: malformed bridge SPIFFE ID")
	}
	if c.Subject.CommonName != BridgeClientID(site) {
		return "", errors.New("identity: common name differs from the bridge's SPIFFE ID")
	}
	return site, nil
}

// BridgeClientID is the MQTT client ID (and certificate common name) of
// the bridge of a site: "bridge-<site>".
func BridgeClientID(site string) string { return "bridge-" + site }
