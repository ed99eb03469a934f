package ca

import (
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"math/big"
	"time"
)

// Revoked is one entry of a CRL.
type Revoked struct {
	Serial string // hex
	Time   time.Time
	Reason int // RFC 5280 CRLReason
}

// CRL signs a certificate revocation list valid for validity (NextUpdate =
// now + validity). Its number increases with time, so a newer CRL always
// has a higher number.
func (c *CA) CRL(entries []Revoked, validity time.Duration) ([]byte, error) {
	return c.CRLNumbered(big.NewInt(c.cfg.Now().UnixNano()), entries, validity)
}

// CRLNumbered is CRL with the CRL number given (several replicas number
// their CRLs from one sequence: fleet/crl Numbers).
func (c *CA) CRLNumbered(number *big.Int, entries []Revoked, validity time.Duration) ([]byte, error) {
	now := c.cfg.Now()
	caCert, signer := c.active()
	list := make([]x509.RevocationListEntry, 0, len(entries))
	for _, e := range entries {
		b, err := hex.DecodeString(e.Serial)
		if err != nil {
			return nil, fmt.Errorf("ca: crl: serial %q: %w", e.Serial, err)
		}
		list = append(list, x509.RevocationListEntry{SerialNumber: new(big.Int).SetBytes(b), RevocationTime: e.Time.UTC(), ReasonCode: e.Reason})
	}
	der, err := x509.CreateRevocationList(c.cfg.Rand, &x509.RevocationList{
		Number:                    number,
		ThisUpdate:                now.Add(-time.Minute),
		NextUpdate:                now.Add(validity),
		RevokedCertificateEntries: list,
	}, caCert, signer)
	if err != nil {
		return nil, fmt.Errorf("ca: crl: %w", err)
	}
	return der, nil
}
