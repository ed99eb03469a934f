package softtpm

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"time"
)

// Files of a CA directory (OpenCA). The certificates sit at the top, where
// the fleet's EK CA directory loader (fleet/verifier.LoadCADir) reads them;
// the issuing key sits in a subdirectory, which that loader skips.
const (
	RootCertFile         = "root.pem"
	IntermediateCertFile = "intermediate.pem"
	issuerKeyFile        = "private/intermediate.key"
)

// Manufacturer identity in EK certificates: the TCG vendor ID "SIGL" (as
// hex), a model and a version.
const (
	tpmManufacturer = "id:5349474C"
	tpmModel        = "sigil-softtpm"
	tpmVersion      = "id:00010000"
)

// OIDs of the TCG EK credential profile.
var (
	oidSAN                 = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidSubjectDirAttrs     = asn1.ObjectIdentifier{2, 5, 29, 9}
	oidTPMManufacturer     = asn1.ObjectIdentifier{2, 23, 133, 2, 1}
	oidTPMModel            = asn1.ObjectIdentifier{2, 23, 133, 2, 2}
	oidTPMVersion          = asn1.ObjectIdentifier{2, 23, 133, 2, 3}
	oidTPMSpecification    = asn1.ObjectIdentifier{2, 23, 133, 2, 16}
	oidEKCertificateKeyUse = asn1.ObjectIdentifier{2, 23, 133, 8, 1}
)

// CA is a simulated TPM manufacturer: a root certificate and an issuing
// intermediate that signs EK certificates, as swtpm's localca (sim/swtpm)
// and real TPM vendors have. The fleet trusts it like any manufacturer CA,
// from an EK CA directory (sigil serve's ek_ca_dir): see OpenCA. Keys are
// ECDSA P-256, so that issuing an EK certificate costs a fraction of a
// millisecond. A CA is safe for concurrent use.
type CA struct {
	root, issuer *x509.Certificate
	key          *ecdsa.PrivateKey // the issuer's
}

// NewCA makes a CA in memory: a root and an intermediate valid from an hour
// ago for 30 years. The root's key is discarded once it signed the
// intermediate.
func NewCA() (*CA, error) {
	now := time.Now()
	rootKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("softtpm: new CA: %w", err)
	}
	issuerKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("softtpm: new CA: %w", err)
	}
	tmpl := func(cn string, pathLen int) *x509.Certificate {
		return &x509.Certificate{
			SerialNumber:          randomSerial(),
			Subject:               pkix.Name{Organization: []string{"Sigil simulated TPM manufacturer"}, CommonName: cn},
			NotBefore:             now.Add(-time.Hour),
			NotAfter:              now.AddDate(30, 0, 0),
			KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
			BasicConstraintsValid: true,
			IsCA:                  true,
			MaxPathLen:            pathLen,
			MaxPathLenZero:        pathLen == 0,
		}
	}
	rootTmpl := tmpl("Sigil Simulated TPM Root CA", 1)
	rootDER, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, &rootKey.PublicKey, rootKey)
	if err != nil {
		return nil, fmt.Errorf("softtpm: new CA: %w", err)
	}
	root, err := x509.ParseCertificate(rootDER)
	if err != nil {
		return nil, fmt.Errorf("softtpm: new CA: %w", err)
	}
	issuerDER, err := x509.CreateCertificate(rand.Reader, tmpl("Sigil Simulated TPM EK Issuing CA", 0), root, &issuerKey.PublicKey, rootKey)
	if err != nil {
		return nil, fmt.Errorf("softtpm: new CA: %w", err)
	}
	issuer, err := x509.ParseCertificate(issuerDER)
	if err != nil {
		return nil, fmt.Errorf("softtpm: new CA: %w", err)
	}
	return &CA{root: root, issuer: issuer, key: issuerKey}, nil
}

func randomSerial() *big.Int {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	b[0] &= 0x7f
	b[0] |= 0x40 // positive, 16 bytes
	return new(big.Int).SetBytes(b)
}

// OpenCA loads the CA kept in dir, or makes one (NewCA) and keeps it there
// when dir holds none. The layout:
//
//	dir/root.pem                  root certificate
//	dir/intermediate.pem          issuing certificate
//	dir/private/intermediate.key  issuing key (PKCS #8, mode 0600)
//
// dir itself is then a valid EK CA directory for the fleet (ek_ca_dir):
// verifier.LoadCADir reads the two certificates and skips the private
// subdirectory. Opening the same new directory from two processes at once
// is not supported.
func OpenCA(dir string) (*CA, error) {
	c, err := loadCA(dir)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return c, err
	}
	if _, statErr := os.Stat(filepath.Join(dir, RootCertFile)); statErr == nil {
		return nil, err // a partial CA: do not overwrite it
	}
	if c, err = NewCA(); err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(c.key)
	if err != nil {
		return nil, fmt.Errorf("softtpm: open CA: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(dir, filepath.Dir(issuerKeyFile)), 0o700); err != nil {
		return nil, fmt.Errorf("softtpm: open CA: %w", err)
	}
	// The key first: a directory with certificates but no key is refused
	// above, one with a key but no certificates is made again.
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{issuerKeyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600},
		{IntermediateCertFile, c.IntermediateCertPEM(), 0o644},
		{RootCertFile, c.RootCertPEM(), 0o644},
	} {
		if err := writeFile(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return nil, fmt.Errorf("softtpm: open CA: %w", err)
		}
	}
	return c, nil
}

// writeFile writes a file whole (temporary file, fsync, rename).
func writeFile(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

// loadCA reads a CA that OpenCA wrote.
func loadCA(dir string) (*CA, error) {
	read := func(name, typ string) ([]byte, error) {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("softtpm: open CA: %w", err)
		}
		blk, _ := pem.Decode(b)
		if blk == nil || blk.Type != typ {
			return nil, fmt.Errorf("softtpm: open CA: %s holds no %s", name, typ)
		}
		return blk.Bytes, nil
	}
	keyDER, err := read(issuerKeyFile, "PRIVATE KEY")
	if err != nil {
		return nil, err
	}
	k, err := x509.ParsePKCS8PrivateKey(keyDER)
	if err != nil {
		return nil, fmt.Errorf("softtpm: open CA: %s: %w", issuerKeyFile, err)
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("softtpm: open CA: %s holds a %T, want ECDSA", issuerKeyFile, k)
	}
	c := &CA{key: key}
	for _, f := range []struct {
		name string
		cert **x509.Certificate
	}{{RootCertFile, &c.root}, {IntermediateCertFile, &c.issuer}} {
		der, err := read(f.name, "CERTIFICATE")
		if err != nil {
			return nil, err
		}
		if *f.cert, err = x509.ParseCertificate(der); err != nil {
			return nil, fmt.Errorf("softtpm: open CA: %s: %w", f.name, err)
		}
	}
	if err := c.issuer.CheckSignatureFrom(c.root); err != nil {
		return nil, fmt.Errorf("softtpm: open CA: intermediate not issued by the root: %w", err)
	}
	if !c.key.PublicKey.Equal(c.issuer.PublicKey) {
		return nil, errors.New("softtpm: open CA: issuing key does not match the intermediate certificate")
	}
	return c, nil
}

// RootCertPEM returns the root certificate, PEM.
func (c *CA) RootCertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.root.Raw})
}

// IntermediateCertPEM returns the issuing certificate, PEM.
func (c *CA) IntermediateCertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.issuer.Raw})
}

// Roots returns a pool holding the root certificate.
func (c *CA) Roots() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c.root)
	return p
}

// Intermediates returns a pool holding the issuing certificate.
func (c *CA) Intermediates() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c.issuer)
	return p
}

// IssueEK issues the EK certificate of ek (an *ecdsa.PublicKey or
// *rsa.PublicKey) with the traits of real EK certificates (TCG EK
// credential profile) that the fleet copes with: an empty subject and a
// critical subject alternative name holding only a directoryName with the
// TPM manufacturer, model and version; the TCG EK certificate extended key
// usage (2.23.133.8.1); key usage keyAgreement (ECC) or keyEncipherment
// (RSA); the TPM specification in the subject directory attributes; and
// validity until 9999-12-31, as for a certificate with no well-defined
// expiration. The certificate is deterministic: the same key gets the same
// bytes from the same CA (the serial number is derived from the key and the
// signature is RFC 6979's).
func (c *CA) IssueEK(ek crypto.PublicKey) ([]byte, error) {
	spki, err := x509.MarshalPKIXPublicKey(ek)
	if err != nil {
		return nil, fmt.Errorf("softtpm: issue EK certificate: %w", err)
	}
	usage := x509.KeyUsageKeyAgreement
	if _, ok := ek.(*rsa.PublicKey); ok {
		usage = x509.KeyUsageKeyEncipherment
	}
	sum := sha256.Sum256(append(append([]byte(nil), c.issuer.Raw...), spki...))
	sum[0] = sum[0]&0x7f | 0x40
	tmpl := &x509.Certificate{
		SerialNumber:          new(big.Int).SetBytes(sum[:16]),
		NotBefore:             c.issuer.NotBefore,
		NotAfter:              time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC),
		KeyUsage:              usage,
		UnknownExtKeyUsage:    []asn1.ObjectIdentifier{oidEKCertificateKeyUse},
		BasicConstraintsValid: true,
		ExtraExtensions:       ekExtensions,
	}
	der, err := x509.CreateCertificate(nil, tmpl, c.issuer, ek, c.key)
	if err != nil {
		return nil, fmt.Errorf("softtpm: issue EK certificate: %w", err)
	}
	return der, nil
}

// ekExtensions are the TCG extensions every EK certificate of the CA
// carries.
var ekExtensions = func() []pkix.Extension {
	name, err := asn1.Marshal(pkix.RDNSequence{pkix.RelativeDistinguishedNameSET{
		{Type: oidTPMManufacturer, Value: tpmManufacturer},
		{Type: oidTPMModel, Value: tpmModel},
		{Type: oidTPMVersion, Value: tpmVersion},
	}})
	if err != nil {
		panic(err)
	}
	san, err := asn1.Marshal([]asn1.RawValue{{Class: asn1.ClassContextSpecific, Tag: 4, IsCompound: true, Bytes: name}})
	if err != nil {
		panic(err)
	}
	type tpmSpecification struct {
		Family   string `asn1:"utf8"`
		Level    int
		Revision int
	}
	type attribute struct {
		Type   asn1.ObjectIdentifier
		Values []tpmSpecification `asn1:"set"`
	}
	attrs, err := asn1.Marshal([]attribute{{Type: oidTPMSpecification, Values: []tpmSpecification{{"2.0", 0, 164}}}})
	if err != nil {
		panic(err)
	}
	return []pkix.Extension{
		{Id: oidSAN, Critical: true, Value: san},
		{Id: oidSubjectDirAttrs, Value: attrs},
	}
}()
