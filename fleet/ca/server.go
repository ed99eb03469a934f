package ca

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
)

// ServerTLS returns the fleet server's TLS certificate for names (DNS
// names and IP addresses), issued by this CA. The key is server.key in Dir
// (created on first use, mode 0600); the certificate server.crt is reused
// while it was issued by this CA for that key and exactly these names and
// has more than a third of its lifetime left, and is issued anew otherwise.
func (c *CA) ServerTLS(names []string) (tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	key, err := FileSigner(filepath.Join(c.cfg.Dir, ServerKeyFile))
	if err != nil {
		return tls.Certificate{}, err
	}
	certPath := filepath.Join(c.cfg.Dir, ServerCertFile)
	cert, err := c.loadServerCert(certPath, key.Public(), names)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			c.log.Info("ca: reissuing server certificate", "reason", err.Error())
		}
		cert, err = c.IssueServer(names, key.Public(), 0)
		if err != nil {
			return tls.Certificate{}, err
		}
		if err := writeFileAtomic(certPath, pemCert(cert.Raw), 0o644); err != nil {
			return tls.Certificate{}, fmt.Errorf("ca: %w", err)
		}
		c.log.Info("ca: issued server certificate", "names", names, "not_after", cert.NotAfter)
	}
	chain := append([][]byte{cert.Raw}, c.serverChain()...)
	return tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: cert}, nil
}

// loadServerCert returns the server certificate at path if it may be used
// for pub and names, or an error saying why not.
func (c *CA) loadServerCert(path string, pub any, names []string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	cert, err := parseCertPEM(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if err := cert.CheckSignatureFrom(c.Certificate()); err != nil {
		return nil, errors.New("not issued by this CA")
	}
	if !publicKeyEqual(pub, cert.PublicKey) {
		return nil, errors.New("not for the server key")
	}
	if !slices.Equal(normalizeNames(names), certNames(cert)) {
		return nil, errors.New("names changed")
	}
	now := c.cfg.Now()
	if now.Before(cert.NotBefore) || now.After(cert.NotAfter.Add(-cert.NotAfter.Sub(cert.NotBefore)/3)) {
		return nil, errors.New("expiring or not yet valid")
	}
	return cert, nil
}

// normalizeNames returns names as a sorted set, IP addresses in canonical
// form.
func normalizeNames(names []string) []string {
	out := make([]string, 0, len(names))
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			n = ip.String()
		}
		out = append(out, n)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// certNames returns a certificate's DNS names and IP addresses as a sorted
// set.
func certNames(c *x509.Certificate) []string {
	out := slices.Clone(c.DNSNames)
	for _, ip := range c.IPAddresses {
		out = append(out, ip.String())
	}
	slices.Sort(out)
	return slices.Compact(out)
}
