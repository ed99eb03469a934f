package ca

import (
	"crypto/tls"
	"sync/atomic"
)

// ServerCert is the fleet's TLS server certificate of the CA's active
// generation, for the broker's and the API's listeners: Refresh issues it
// when needed (ServerTLS) and installs it, GetCertificate serves it to
// handshakes. A CA rotation refreshes it when a new generation signs.
type ServerCert struct {
	ca    *CA
	names []string
	cur   atomic.Pointer[tls.Certificate]
}

// NewServerCert issues (if needed) and installs the server certificate
// for names (DNS names and IP addresses).
func NewServerCert(c *CA, names []string) (*ServerCert, error) {
	s := &ServerCert{ca: c, names: names}
	return s, s.Refresh()
}

// Refresh issues (if needed) and installs the server certificate of the
// active generation; on failure the previous one stays in use.
func (s *ServerCert) Refresh() error {
	c, err := s.ca.ServerTLS(s.names)
	if err != nil {
		return err
	}
	s.cur.Store(&c)
	return nil
}

// GetCertificate serves the current server certificate to TLS handshakes
// (tls.Config.GetCertificate).
func (s *ServerCert) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return s.cur.Load(), nil
}
