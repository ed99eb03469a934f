package swtpm

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
)

// Files of a CA directory. swtpm_localca creates the root and intermediate
// (issuer) certificates and keys on its first use, that is during the first
// Start of an instance that uses the CA.
const (
	rootCertFile   = "swtpm-localca-rootca-cert.pem"
	issuerCertFile = "issuercert.pem"
	localcaConf    = "swtpm-localca.conf"
	localcaOptions = "swtpm-localca.options"
	setupConf      = "swtpm_setup.conf"
)

// ErrCANotCreated is returned for the CA's certificates before any instance
// was set up with the CA: swtpm_localca creates them on first use.
var ErrCANotCreated = errors.New("swtpm: CA certificates not created yet (they appear after the first instance is set up with this CA)")

// CA is a private swtpm-localca: the manufacturer CA that signs the EK and
// platform certificates of the instances set up with it. Each CA lives in its
// own directory so tests never share /var/lib/swtpm-localca.
//
// The chain is root (swtpm-localca-rootca-cert.pem) -> intermediate
// (issuercert.pem) -> EK certificate. Both CA certificates are created by
// swtpm_localca on its first use, i.e. by the first Start of an instance with
// this CA; before that RootCertPEM and IntermediateCertPEM return
// ErrCANotCreated. Several instances may be set up with one CA at the same
// time: swtpm_localca locks its directory.
type CA struct {
	Dir string
}

// NewCA writes a private swtpm-localca configuration under dir (created if
// needed): swtpm-localca.conf (state, signing key, issuer certificate and
// serial number all inside dir), swtpm-localca.options and a
// swtpm_setup.conf that makes swtpm_setup use swtpm_localca with that
// configuration.
func NewCA(dir string) (*CA, error) {
	tool, err := exec.LookPath("swtpm_localca")
	if err != nil {
		return nil, fmt.Errorf("swtpm: new CA: %w", err)
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("swtpm: new CA: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("swtpm: new CA: %w", err)
	}
	files := map[string]string{
		localcaConf: fmt.Sprintf("statedir = %s\nsigningkey = %s\nissuercert = %s\ncertserial = %s\n",
			dir, filepath.Join(dir, "signkey.pem"), filepath.Join(dir, issuerCertFile), filepath.Join(dir, "certserial")),
		localcaOptions: "--platform-manufacturer Sigil\n--platform-version 2.1\n--platform-model swtpm\n",
		setupConf: fmt.Sprintf("create_certs_tool = %s\ncreate_certs_tool_config = %s\ncreate_certs_tool_options = %s\nactive_pcr_banks = sha256\n",
			tool, filepath.Join(dir, localcaConf), filepath.Join(dir, localcaOptions)),
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			return nil, fmt.Errorf("swtpm: new CA: %w", err)
		}
	}
	return &CA{Dir: dir}, nil
}

// SetupConfig is the swtpm_setup configuration file that uses this CA.
func (c *CA) SetupConfig() string { return filepath.Join(c.Dir, setupConf) }

// RootCertPEM returns the root CA certificate, PEM. It is ErrCANotCreated
// until the first instance was set up with this CA.
func (c *CA) RootCertPEM() ([]byte, error) { return c.readPEM(rootCertFile) }

// IntermediateCertPEM returns the issuing (intermediate) CA certificate that
// signs EK certificates, PEM. It is ErrCANotCreated until the first instance
// was set up with this CA.
func (c *CA) IntermediateCertPEM() ([]byte, error) { return c.readPEM(issuerCertFile) }

// Roots returns a pool holding the root certificate.
func (c *CA) Roots() (*x509.CertPool, error) { return c.pool(c.RootCertPEM) }

// Intermediates returns a pool holding the intermediate certificate.
func (c *CA) Intermediates() (*x509.CertPool, error) { return c.pool(c.IntermediateCertPEM) }

func (c *CA) readPEM(name string) ([]byte, error) {
	b, err := os.ReadFile(filepath.Join(c.Dir, name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrCANotCreated
	}
	if err != nil {
		return nil, fmt.Errorf("swtpm: CA: %w", err)
	}
	return b, nil
}

func (c *CA) pool(read func() ([]byte, error)) (*x509.CertPool, error) {
	b, err := read()
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, errors.New("swtpm: CA: certificate file is not PEM")
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("swtpm: CA: %w", err)
	}
	p := x509.NewCertPool()
	p.AddCert(cert)
	return p, nil
}
