package verifier

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/sigil-iot/sigil/pkg/identity"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// maxCachedIssuers bounds the cache of verified intermediates. Entries are
// only ever certificates that chained to a configured root, so the bound is
// generous.
const maxCachedIssuers = 1024

// EKTrust holds what the fleet trusts about endorsement keys. Set the fields
// before first use and do not change them afterwards; an EKTrust is safe for
// concurrent use. Build a new one to change the roots.
type EKTrust struct {
	Roots         *x509.CertPool  // manufacturer CA roots; nil or empty: no certificate chains
	Intermediates *x509.CertPool  // known manufacturer intermediates; nil: none
	AllowList     map[string]bool // EK fingerprints (identity.Fingerprint) trusted without a certificate
	Now           func() time.Time

	mu    sync.Mutex
	cache map[[32]byte]*cachedIssuer // by SHA-256 of the issuer certificate's DER
}

// cachedIssuer is an intermediate certificate that chained to a root.
type cachedIssuer struct {
	cert      *x509.Certificate
	pool      *x509.CertPool      // holds only cert, used as the anchor
	above     []*x509.Certificate // cert's verified chain up to the root, cert first
	notBefore time.Time           // the window in which every certificate above cert is valid
	notAfter  time.Time
}

// EK is an endorsement key that passed VerifyEK. VerifyEK does not decide
// whether the EK is trusted: the caller combines ChainVerified, AllowListed,
// tokens and operator approval.
type EK struct {
	Public      tpm2.TPMTPublic
	Key         crypto.PublicKey // *rsa.PublicKey or *ecdsa.PublicKey
	Fingerprint string           // identity.Fingerprint of Key
	DeviceID    string           // identity.DeviceID of Key

	Cert          *x509.Certificate   // the EK certificate presented, nil if none (or unparseable: see ChainErr)
	ChainVerified bool                // Cert chains to a root in EKTrust.Roots
	Chain         []*x509.Certificate // the verified chain, Cert first, root last; nil unless ChainVerified
	ChainErr      error               // why a presented certificate is not trusted; nil if none was presented or it chained
	AllowListed   bool                // Fingerprint is in EKTrust.AllowList
}

// VerifyEK decodes an endorsement key and checks its certificate, if any.
// Checks, in order:
//
//  1. ekPublic decodes canonically as a TPMT_PUBLIC of a TCG endorsement
//     key: restricted, decrypt, fixedTPM, fixedParent, sensitiveDataOrigin
//     set, sign clear; nameAlg SHA-256 or SHA-384; symmetric AES-CFB; RSA
//     2048 or 3072 bits, or ECC NIST P-256 or P-384 with a valid point
//     (refused with wire.ReasonBadRequest);
//  2. if ekCertDER is present and parses, its public key must equal the EK
//     public key (refused with wire.ReasonEKMismatch); if it does not parse,
//     the EK is returned with Cert nil and ChainErr set;
//  3. the certificate chains to Roots, through Intermediates, the presented
//     chain and intermediates verified earlier, at Now, for any extended key
//     usage (EK certificates carry the TCG EK usage 2.23.133.8.1); a
//     critical subject alternative name holding only a directoryName (as
//     the TCG profile prescribes) is accepted. Failure is not a refusal:
//     the EK is returned with ChainVerified false and ChainErr saying why;
//  4. AllowListed is set when the fingerprint is in AllowList.
//
// A verified intermediate is remembered: the next EK certificate it issued
// is verified against it alone (one signature instead of the whole chain),
// while the cached chain above it is still within its validity.
//
// A nil EKTrust trusts nothing: no roots, an empty allow-list.
func (t *EKTrust) VerifyEK(ekPublic, ekCertDER []byte, chain [][]byte) (*EK, error) {
	if t == nil {
		t = &EKTrust{}
	}
	pub, key, err := decodeEK(ekPublic)
	if err != nil {
		return nil, wire.Refuse(wire.ReasonBadRequest, "EK public area is not an endorsement key", err)
	}
	fp, err := identity.Fingerprint(key)
	if err != nil {
		return nil, wire.Refuse(wire.ReasonBadRequest, "EK public key", fmt.Errorf("verifier: %w", err))
	}
	id, err := identity.DeviceID(key)
	if err != nil {
		return nil, wire.Refuse(wire.ReasonBadRequest, "EK public key", fmt.Errorf("verifier: %w", err))
	}
	ek := &EK{Public: pub.tpm(), Key: key, Fingerprint: fp, DeviceID: id}
	ek.AllowListed = t.AllowList[fp]

	if len(ekCertDER) == 0 {
		return ek, nil
	}
	cert, err := x509.ParseCertificate(ekCertDER)
	if err != nil {
		ek.ChainErr = fmt.Errorf("verifier: EK certificate does not parse: %w", err)
		return ek, nil
	}
	if !equalKeys(key, cert.PublicKey) {
		return nil, refuse(wire.ReasonEKMismatch, "EK certificate is for another key",
			"EK certificate key (%T) differs from the EK public area", cert.PublicKey)
	}
	ek.Cert = cert
	ek.Chain, ek.ChainErr = t.verifyChain(cert, chain)
	ek.ChainVerified = ek.ChainErr == nil
	return ek, nil
}

// decodeEK implements check 1 of VerifyEK.
func decodeEK(b []byte) (*public, crypto.PublicKey, error) {
	pub, err := parsePublic(b)
	if err != nil {
		return nil, nil, fmt.Errorf("verifier: EK public area: %w", err)
	}
	if pub.nameAlg != algSHA256 && pub.nameAlg != uint16(tpm2.TPMAlgSHA384) {
		return nil, nil, fmt.Errorf("verifier: EK nameAlg %#04x", pub.nameAlg)
	}
	if err := checkAttributes(pub.attrs,
		attribute{"restricted", attrRestricted, true},
		attribute{"decrypt", attrDecrypt, true},
		attribute{"sign", attrSign, false},
		attribute{"fixedTPM", attrFixedTPM, true},
		attribute{"fixedParent", attrFixedParent, true},
		attribute{"sensitiveDataOrigin", attrSensitiveDataOrigin, true},
	); err != nil {
		return nil, nil, fmt.Errorf("verifier: EK attributes: %w", err)
	}
	var key crypto.PublicKey
	switch pub.typ {
	case algRSA:
		k, err := rsaKey(pub, 2048, 3072)
		if err != nil {
			return nil, nil, fmt.Errorf("verifier: EK: %w", err)
		}
		key = k
	case algECC:
		k, err := eccKey(pub, tpm2.TPMECCNistP256, tpm2.TPMECCNistP384)
		if err != nil {
			return nil, nil, fmt.Errorf("verifier: EK: %w", err)
		}
		key = k
	default: // parsePublic accepts only RSA and ECC
		return nil, nil, fmt.Errorf("verifier: EK type %#04x", pub.typ)
	}
	if pub.symAlg != algAES {
		return nil, nil, fmt.Errorf("verifier: EK symmetric algorithm %#04x, want AES", pub.symAlg)
	}
	if pub.symMode != algCFB {
		return nil, nil, errors.New("verifier: EK symmetric mode is not CFB")
	}
	return pub, key, nil
}

// verifyChain implements check 3 of VerifyEK on a freshly parsed leaf (it
// may edit the leaf's UnhandledCriticalExtensions).
func (t *EKTrust) verifyChain(leaf *x509.Certificate, presented [][]byte) ([]*x509.Certificate, error) {
	if t.Roots == nil {
		return nil, errors.New("verifier: no manufacturer CA roots configured")
	}
	if err := acceptDirectoryNameSAN(leaf); err != nil {
		return nil, err
	}
	now := time.Now()
	if t.Now != nil {
		now = t.Now()
	}
	if c := t.cachedIssuerFor(leaf, now); c != nil {
		_, err := leaf.Verify(x509.VerifyOptions{
			Roots:       c.pool,
			CurrentTime: now,
			KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
		})
		if err == nil {
			return append([]*x509.Certificate{leaf}, c.above...), nil
		}
		// Not this issuer after all (or the leaf is bad): the full
		// verification below decides and explains.
	}

	inter := x509.NewCertPool()
	if t.Intermediates != nil {
		inter = t.Intermediates.Clone()
	}
	var parseErrs []error
	for i, der := range presented {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			parseErrs = append(parseErrs, fmt.Errorf("presented chain certificate %d: %w", i, err))
			continue
		}
		inter.AddCert(c)
	}
	chains, err := leaf.Verify(x509.VerifyOptions{
		Roots:         t.Roots,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return nil, fmt.Errorf("verifier: EK certificate chain: %w", errors.Join(append([]error{err}, parseErrs...)...))
	}
	chain := chains[0]
	if len(chain) > 2 {
		t.remember(chain[1:])
	}
	return chain, nil
}

// cachedIssuerFor returns a remembered intermediate that may have issued
// leaf and whose cached chain is valid at now.
func (t *EKTrust) cachedIssuerFor(leaf *x509.Certificate, now time.Time) *cachedIssuer {
	t.mu.Lock()
	defer t.mu.Unlock()
	for k, c := range t.cache {
		if !bytes.Equal(c.cert.RawSubject, leaf.RawIssuer) {
			continue
		}
		if len(leaf.AuthorityKeyId) > 0 && len(c.cert.SubjectKeyId) > 0 && !bytes.Equal(leaf.AuthorityKeyId, c.cert.SubjectKeyId) {
			continue
		}
		if now.Before(c.notBefore) || now.After(c.notAfter) {
			delete(t.cache, k)
			continue
		}
		return c
	}
	return nil
}

// remember caches the leaf's issuer from a verified chain (issuer first,
// root last).
func (t *EKTrust) remember(above []*x509.Certificate) {
	issuer := above[0]
	entry := &cachedIssuer{cert: issuer, pool: x509.NewCertPool(), above: above}
	entry.pool.AddCert(issuer)
	for i, c := range above[1:] {
		if i == 0 || c.NotBefore.After(entry.notBefore) {
			entry.notBefore = c.NotBefore
		}
		if i == 0 || c.NotAfter.Before(entry.notAfter) {
			entry.notAfter = c.NotAfter
		}
	}
	key := sha256.Sum256(issuer.Raw)
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.cache == nil {
		t.cache = make(map[[32]byte]*cachedIssuer)
	}
	if _, ok := t.cache[key]; !ok && len(t.cache) >= maxCachedIssuers {
		return
	}
	t.cache[key] = entry
}

var oidSAN = asn1.ObjectIdentifier{2, 5, 29, 17}

// acceptDirectoryNameSAN removes the subject alternative name from the
// leaf's unhandled critical extensions when it holds only directoryName
// entries, which is how the TCG EK credential profile carries the TPM
// manufacturer, model and version (crypto/x509 does not interpret them and
// would refuse the certificate). Any other unhandled content stays and fails
// verification.
func acceptDirectoryNameSAN(c *x509.Certificate) error {
	idx := -1
	for i, oid := range c.UnhandledCriticalExtensions {
		if oid.Equal(oidSAN) {
			idx = i
		}
	}
	if idx < 0 {
		return nil
	}
	for _, ext := range c.Extensions {
		if !ext.Id.Equal(oidSAN) {
			continue
		}
		if !onlyDirectoryNames(ext.Value) {
			return errors.New("verifier: EK certificate has a critical subject alternative name with entries other than directoryName")
		}
		c.UnhandledCriticalExtensions = append(c.UnhandledCriticalExtensions[:idx:idx], c.UnhandledCriticalExtensions[idx+1:]...)
		return nil
	}
	return nil
}

// onlyDirectoryNames reports whether a GeneralNames value holds at least one
// entry and only directoryName ([4]) entries.
func onlyDirectoryNames(der []byte) bool {
	var names []asn1.RawValue
	rest, err := asn1.Unmarshal(der, &names)
	if err != nil || len(rest) != 0 || len(names) == 0 {
		return false
	}
	for _, n := range names {
		if n.Class != asn1.ClassContextSpecific || n.Tag != 4 || !n.IsCompound {
			return false
		}
	}
	return true
}

// LoadCADir reads manufacturer CA certificates from the regular files in
// dir, PEM (any number of CERTIFICATE blocks) or DER (one certificate).
// Self-issued certificates (subject equals issuer) go to roots, the others
// to intermediates. Subdirectories and files whose names start with '.' are
// skipped; any other file that holds no certificate is an error naming it.
func LoadCADir(dir string) (roots, intermediates *x509.CertPool, err error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("verifier: CA directory: %w", err)
	}
	roots, intermediates = x509.NewCertPool(), x509.NewCertPool()
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") || !e.Type().IsRegular() {
			continue
		}
		path := filepath.Join(dir, e.Name())
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, nil, fmt.Errorf("verifier: %w", err)
		}
		certs, err := parseCertFile(b)
		if err != nil {
			return nil, nil, fmt.Errorf("verifier: %s: %w", path, err)
		}
		for _, c := range certs {
			if selfIssued(c) {
				roots.AddCert(c)
			} else {
				intermediates.AddCert(c)
			}
		}
	}
	return roots, intermediates, nil
}

// parseCertFile parses PEM certificates, or one DER certificate.
func parseCertFile(b []byte) ([]*x509.Certificate, error) {
	if bytes.Contains(b, []byte("-----BEGIN")) {
		var certs []*x509.Certificate
		for {
			var block *pem.Block
			block, b = pem.Decode(b)
			if block == nil {
				break
			}
			if block.Type != "CERTIFICATE" {
				continue
			}
			c, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return nil, err
			}
			certs = append(certs, c)
		}
		if len(certs) == 0 {
			return nil, errors.New("PEM file without a CERTIFICATE block")
		}
		return certs, nil
	}
	c, err := x509.ParseCertificate(b)
	if err != nil {
		return nil, fmt.Errorf("neither PEM nor a DER certificate: %w", err)
	}
	return []*x509.Certificate{c}, nil
}

// selfIssued reports whether c names itself as issuer (and, when both key
// identifiers are present, identifies its own key as the signer).
func selfIssued(c *x509.Certificate) bool {
	if !bytes.Equal(c.RawSubject, c.RawIssuer) {
		return false
	}
	return len(c.AuthorityKeyId) == 0 || len(c.SubjectKeyId) == 0 || bytes.Equal(c.AuthorityKeyId, c.SubjectKeyId)
}
