package rotation

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"path/filepath"
	"slices"
	"testing"

	"github.com/sigil-iot/sigil/fleet/ca"
)

// pool is the Sessions of a pool of brokers presenting the certificates
// given (by address), or failing to be checked with err.
type pool struct {
	oneDevice
	certs map[string]*x509.Certificate
	err   error
}

func (p *pool) ServerCertificates(context.Context) (map[string]*x509.Certificate, error) {
	return p.certs, p.err
}

// TestRetireRefusedWhileBrokersPresentTheOldGeneration: a retirement is
// refused (ErrBrokersOnRetiringCA, naming the brokers) while a broker of
// the pool presents a certificate of the generation to retire, whose
// root would leave the devices' trust bundle (they would refuse the
// broker), and when a broker cannot be checked; once every broker
// presents a certificate of the active generation it is made.
func TestRetireRefusedWhileBrokersPresentTheOldGeneration(t *testing.T) {
	c, err := ca.Open(ca.Config{Dir: filepath.Join(t.TempDir(), "ca"), TrustDomain: "brokers.test"})
	if err != nil {
		t.Fatal(err)
	}
	serverCert := func() *x509.Certificate {
		t.Helper()
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		cert, err := c.IssueServer([]string{"mqtt.brokers.test"}, k.Public(), 0)
		if err != nil {
			t.Fatal(err)
		}
		return cert
	}
	old := serverCert()
	if _, err := c.Prepare(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Activate(); err != nil {
		t.Fatal(err)
	}
	p := &pool{oneDevice: "dev", certs: map[string]*x509.Certificate{"10.0.0.1:8884": serverCert(), "10.0.0.2:8884": old}}
	r := NewCARotation(CARotationConfig{CA: c, Sessions: p, Send: func(string, string, []byte) error { return nil }})
	_, err = r.RetireCA("test")
	be, ok := errors.AsType[*BrokersError](err)
	if !errors.Is(err, ErrBrokersOnRetiringCA) || !ok || !slices.Equal(be.Brokers, []string{"10.0.0.2:8884"}) {
		t.Fatalf("RetireCA with a broker on the old generation = %v; want ErrBrokersOnRetiringCA naming 10.0.0.2:8884", err)
	}
	p.certs["10.0.0.2:8884"], p.err = serverCert(), errors.New("dial tcp 10.0.0.3:8884: connection refused")
	if _, err := r.RetireCA("test"); !errors.Is(err, ErrBrokersOnRetiringCA) {
		t.Fatalf("RetireCA with a broker that cannot be checked = %v; want ErrBrokersOnRetiringCA", err)
	}
	if len(c.TrustBundle()) != 2 {
		t.Fatal("a refused retirement changed the trust bundle")
	}
	p.err = nil
	if _, err := r.RetireCA("test"); err != nil {
		t.Fatalf("RetireCA with every broker on the new generation: %v", err)
	}
	if len(c.TrustBundle()) != 1 {
		t.Fatal("the old generation was not retired")
	}
}
