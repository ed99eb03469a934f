package ca

import (
	"crypto"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
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
	list, err := revocationEntries(entries)
	if err != nil {
		return nil, err
	}
	caCert, signer := c.active()
	return c.signCRL(caCert, signer, number, list, validity)
}

// CRLSet is what a broker of the fleet needs to check device
// certificates during a CA rotation (CRLsNumbered).
type CRLSet struct {
	// Active is the active generation's CRL (DER): what CRLNumbered
	// signs.
	Active []byte
	// PEM holds, in this order, the trust bundle's roots (TrustBundle:
	// the active generation's first), the cross certificate of each
	// trusted generation after the first (its root certified by the
	// generation before it: how a broker that trusts an older root
	// verifies a newer one), and one CRL per trusted generation whose key
	// this CA holds, the active one's first, all with the same number and
	// entries.
	PEM []byte
}

// CRLsNumbered signs with the number given one CRL per generation of the
// trust bundle (prepared, active, superseded) whose key c holds, each
// listing every entry (serials are unique across generations), and
// returns them with the trust bundle (CRLSet). A broker that checks CRLs
// (OpenSSL's, Mosquitto's) refuses a certificate whose issuer has no CRL:
// one CRL per trusted generation lets it accept the certificates of each.
func (c *CA) CRLsNumbered(number *big.Int, entries []Revoked, validity time.Duration) (CRLSet, error) {
	list, err := revocationEntries(entries)
	if err != nil {
		return CRLSet{}, err
	}
	c.gmu.RLock()
	active, activeSigner := c.cert, c.signer
	var others []*generation
	var cross [][]byte
	for _, g := range c.gens {
		if g.State == GenRetired {
			continue
		}
		if g.cross != nil {
			cross = append(cross, g.cross.Raw)
		}
		if g.State != GenActive {
			others = append(others, g)
		}
	}
	c.gmu.RUnlock()
	var set CRLSet
	if set.Active, err = c.signCRL(active, activeSigner, number, list, validity); err != nil {
		return CRLSet{}, err
	}
	crls := [][]byte{set.Active}
	for _, g := range others {
		if g.signer == nil {
			continue // an external key this replica cannot use
		}
		der, err := c.signCRL(g.cert, g.signer, number, list, validity)
		if err != nil {
			return CRLSet{}, err
		}
		crls = append(crls, der)
	}
	var out []byte
	for _, der := range c.TrustBundle() {
		out = append(out, pemCert(der)...)
	}
	for _, der := range cross {
		out = append(out, pemCert(der)...)
	}
	for _, der := range crls {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der})...)
	}
	set.PEM = out
	return set, nil
}

func revocationEntries(entries []Revoked) ([]x509.RevocationListEntry, error) {
	list := make([]x509.RevocationListEntry, 0, len(entries))
	for _, e := range entries {
		b, err := hex.DecodeString(e.Serial)
		if err != nil {
			return nil, fmt.Errorf("ca: crl: serial %q: %w", e.Serial, err)
		}
		list = append(list, x509.RevocationListEntry{SerialNumber: new(big.Int).SetBytes(b), RevocationTime: e.Time.UTC(), ReasonCode: e.Reason})
	}
	return list, nil
}

func (c *CA) signCRL(issuer *x509.Certificate, signer crypto.Signer, number *big.Int, list []x509.RevocationListEntry, validity time.Duration) ([]byte, error) {
	now := c.cfg.Now()
	der, err := x509.CreateRevocationList(c.cfg.Rand, &x509.RevocationList{
		Number:                    number,
		ThisUpdate:                now.Add(-time.Minute),
		NextUpdate:                now.Add(validity),
		RevokedCertificateEntries: list,
	}, issuer, signer)
	if err != nil {
		return nil, fmt.Errorf("ca: crl: %w", err)
	}
	return der, nil
}
