package fakefleet

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sigil-iot/sigil/device/link"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// TestDialChecks: the fake fleet refuses what a TLS handshake and the
// fleet's broker refuse, with the errors device/link returns for them, so
// that the device's tests decide on the same types as with a real broker.
func TestDialChecks(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f, other := New(t, wire.Topics{}), New(t, wire.Topics{})
		const id = "0123456789abcdef0123456789abcdef"
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		wrong, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		roots := x509.NewCertPool()
		roots.AddCert(f.CA())
		cfg := func(cert []byte, k crypto.Signer, trust *x509.CertPool) link.Config {
			c := link.Config{Broker: Broker, ClientID: id, TLS: &tls.Config{RootCAs: trust, ServerName: ServerName}}
			if cert != nil {
				c.TLS.Certificates = []tls.Certificate{{Certificate: [][]byte{cert}, PrivateKey: k}}
			}
			return c
		}
		good := f.IssueCert(id, key.Public(), time.Now(), time.Hour)
		ctx := context.Background()
		if c, err := f.Dial(ctx, cfg(good, key, roots)); err != nil {
			t.Fatalf("a good certificate: %v", err)
		} else {
			c.Close()
		}
		var alert *link.AlertError
		var connack *link.ConnackError
		otherRoots := x509.NewCertPool()
		otherRoots.AddCert(other.CA())
		if _, err := f.Dial(ctx, cfg(good, key, otherRoots)); err == nil || errors.As(err, &alert) || errors.As(err, &connack) {
			t.Errorf("a device that does not trust the fleet: %v, want a handshake failure that is not the fleet's refusal", err)
		}
		if _, err := f.Dial(ctx, cfg(good, wrong, roots)); err == nil || errors.As(err, &alert) || errors.As(err, &connack) {
			t.Errorf("a certificate with another key: %v, want a handshake failure", err)
		}
		if _, err := f.Dial(ctx, cfg(other.IssueCert(id, key.Public(), time.Now(), time.Hour), key, roots)); !errors.As(err, &alert) || alert.Alert != 48 {
			t.Errorf("a certificate from another CA: %v, want alert 48", err)
		}
		time.Sleep(2 * time.Hour)
		if _, err := f.Dial(ctx, cfg(good, key, roots)); !errors.As(err, &alert) || alert.Alert != 45 {
			t.Errorf("an expired certificate: %v, want alert 45", err)
		}
		fresh := f.IssueCert(id, key.Public(), time.Now(), time.Hour)
		f.Revoke(id)
		if _, err := f.Dial(ctx, cfg(fresh, key, roots)); !errors.As(err, &connack) || connack.Code != link.ConnackNotAuthorized {
			t.Errorf("a revoked certificate: %v, want CONNACK 5", err)
		}
		later := f.IssueCert(id, key.Public(), time.Now(), time.Hour)
		c, err := f.Dial(ctx, cfg(later, key, roots))
		if err != nil {
			t.Fatalf("a certificate issued after the revocation: %v", err)
		}
		defer c.Close()
		if err := c.Subscribe(ctx, wire.Topics{}.Filter(wire.SegDevice, "other", wire.Down), func(string, []byte) {}); !errors.Is(err, link.ErrRefused) {
			t.Errorf("a subscription to another device's topics: %v", err)
		}
		f.SetOnline(false)
		if _, err := f.Dial(ctx, cfg(later, key, roots)); err == nil {
			t.Error("an offline fleet accepted a connection")
		}
		select {
		case <-c.Done():
		default:
			t.Error("going offline left a session up")
		}
	})
}
