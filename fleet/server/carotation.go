package server

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/fleet/rotation"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// CA rotation as the operator drives it (see fleet/ca for the generations):
// prepare, activate (server certificate re-issued with the cross
// certificate, trust bundle pushed, every active device re-issued by a
// forced rotation job), retire (old generation out of the bundle; devices
// still connected with its certificates are disconnected and come back
// through re-enrollment from their EK).

// PrepareCA creates the next CA generation and pushes the new trust bundle
// to every connected device.
func (s *Server) PrepareCA(by string) (ca.Generation, error) {
	g, err := s.CA.Prepare()
	if err != nil {
		return g, err
	}
	s.log.Info("CA generation prepared", "generation", g.N, "by", by)
	s.pushTrustBundle()
	return g, nil
}

// ActivateCA makes the prepared generation the signing one, presents a new
// server certificate, pushes the bundle and, when rate > 0, starts a forced
// rotation of every active device at that rate (per second) so each gets a
// certificate of the new generation. It returns the job (nil without one).
func (s *Server) ActivateCA(by string, rate float64) (ca.Generation, *rotation.Job, error) {
	g, err := s.CA.Activate()
	if err != nil {
		return g, nil, err
	}
	// The CA has switched: whatever follows fails or not, devices must
	// get the bundle and be re-issued.
	if err := s.refreshServerCert(); err != nil {
		s.log.Error("CA activated, but the server certificate could not be re-issued; the previous one stays in use", "err", err)
	}
	s.log.Info("CA generation activated", "generation", g.N, "by", by)
	s.pushTrustBundle()
	if rate <= 0 {
		return g, nil, nil
	}
	job, err := s.Rotation.Start(rotation.Selector{All: true}, rate, fmt.Sprintf("CA generation %d activated", g.N), by)
	if err != nil && !errors.Is(err, rotation.ErrNoMatch) {
		return g, nil, err
	}
	return g, job, nil
}

// RetireCA retires the superseded generations, pushes the reduced bundle
// and disconnects devices still connected with a certificate they issued:
// the broker refuses those from now on, and the devices enroll again.
func (s *Server) RetireCA(by string) ([]ca.Generation, error) {
	gens, err := s.CA.Retire()
	if err != nil {
		return nil, err
	}
	s.log.Info("CA generations retired", "generations", len(gens), "by", by)
	s.pushTrustBundle()
	stale := s.transport.ConnectedDevices(func(_ string, cert *x509.Certificate) bool {
		_, err := s.CA.Issuer(cert)
		return errors.Is(err, ca.ErrRetiredGenerator)
	})
	for _, id := range stale {
		s.transport.Disconnect(id)
	}
	if len(stale) > 0 {
		s.log.Info("disconnected devices holding retired-generation certificates", "devices", len(stale))
	}
	return gens, nil
}

// pushTrustBundle sends the current bundle to every connected device.
func (s *Server) pushTrustBundle() {
	for _, id := range s.transport.ConnectedDevices(nil) {
		s.sendTrustBundle(id)
	}
}

func (s *Server) sendTrustBundle(deviceID string) {
	b, err := wire.Encode(wire.TypeTrustBundle, nil, time.Now(), &wire.TrustBundle{Roots: s.CA.TrustBundle()})
	if err != nil {
		s.log.Error("encoding trust bundle", "err", err)
		return
	}
	if err := s.sendDevice(deviceID, "trust", b); err != nil {
		s.log.Warn("sending trust bundle", "device_id", deviceID, "err", err)
	}
}

// refreshServerCert issues (if needed) and installs the server certificate
// of the active generation for the broker and the API.
func (s *Server) refreshServerCert() error {
	c, err := s.CA.ServerTLS(s.cfg.Hostnames)
	if err != nil {
		return err
	}
	s.serverCert.Store(&c)
	return nil
}

// getCertificate serves the current server certificate to TLS handshakes.
func (s *Server) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return s.serverCert.Load(), nil
}
