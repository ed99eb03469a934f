package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/device/link"
)

// pki is a throwaway CA for the refusal tests.
type pki struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newPKI(t *testing.T, name string) *pki {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(c)
	return &pki{cert: c, key: key, pool: pool}
}

func (p *pki) issue(t *testing.T, tmpl *x509.Certificate) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl.SerialNumber = n
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.cert, &key.PublicKey, p.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func (p *pki) server(t *testing.T, names ...string) tls.Certificate {
	return p.issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: names[0]}, DNSNames: names,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
}

func (p *pki) client(t *testing.T) tls.Certificate {
	return p.issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: "0123456789abcdef0123456789abcdef"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
}

// serve accepts connections on a loopback port until the test ends and
// hands each to handle.
func serve(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				handle(c)
			})
		}
	})
	return ln.Addr().String()
}

// connackAfterTLS is a broker: a TLS handshake with cfg, then CONNACK code
// to the CONNECT.
func connackAfterTLS(cfg *tls.Config, code byte) func(net.Conn) {
	return func(c net.Conn) {
		tc := tls.Server(c, cfg)
		if tc.Handshake() != nil {
			return
		}
		buf := make([]byte, 512)
		if _, err := tc.Read(buf); err != nil { // CONNECT (or the client's alert)
			return
		}
		_, _ = tc.Write([]byte{0x20, 0x02, 0x00, code})
		_, _ = io.Copy(io.Discard, tc)
	}
}

// TestOnlyTheAuthenticatedFleetRefusesTheCredential: the device drops its
// certificate to enroll again only when the fleet it authenticated refuses
// the certificate (CONNACK 4 or 5 after the TLS handshake, or a
// certificate alert received after it completed). A network attacker
// without the fleet's keys, whatever the names in its certificate or the
// bytes it sends, causes a connection failure and nothing more.
func TestOnlyTheAuthenticatedFleetRefusesTheCredential(t *testing.T) {
	fleet, attacker, other := newPKI(t, "Sigil fleet CA"), newPKI(t, "not authorized"), newPKI(t, "another CA")
	device := fleet.client(t)
	deviceTLS := func(max uint16) *tls.Config {
		return &tls.Config{RootCAs: fleet.pool, ServerName: "localhost", MinVersion: tls.VersionTLS12, MaxVersion: max,
			Certificates: []tls.Certificate{device}}
	}
	fleetServer := fleet.server(t, "localhost")
	rogue := attacker.server(t, "not authorized (CONNACK 5)") // its name reaches the error: "certificate is valid for …, not localhost"
	fakeFleetTLS := &tls.Config{Certificates: []tls.Certificate{fleetServer}}
	refusingFleet := &tls.Config{Certificates: []tls.Certificate{fleetServer}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: other.pool}
	revokingFleet := &tls.Config{Certificates: []tls.Certificate{fleetServer}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: fleet.pool,
		VerifyPeerCertificate: func([][]byte, [][]*x509.Certificate) error { return errors.New("revoked") }}

	for _, c := range []struct {
		name    string
		handle  func(net.Conn)
		max     uint16 // client's highest TLS version; 0 is TLS 1.3
		refused bool
	}{
		{name: "rogue certificate named not authorized", handle: connackAfterTLS(&tls.Config{Certificates: []tls.Certificate{rogue}}, 5)},
		{name: "rogue certificate, TLS 1.2", max: tls.VersionTLS12, handle: connackAfterTLS(&tls.Config{Certificates: []tls.Certificate{rogue}}, 5)},
		{name: "plain TCP CONNACK 5", handle: func(c net.Conn) { _, _ = c.Write([]byte{0x20, 0x02, 0x00, 0x05}) }},
		{name: "plain TCP bad_certificate alert", handle: func(c net.Conn) {
			_, _ = c.Write([]byte{0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 42})
		}},
		{name: "fleet CONNACK 3 (server unavailable)", handle: connackAfterTLS(fakeFleetTLS, 3)},
		{name: "fleet CONNACK 5", handle: connackAfterTLS(fakeFleetTLS, 5), refused: true},
		{name: "fleet CONNACK 4", handle: connackAfterTLS(fakeFleetTLS, 4), refused: true},
		{name: "fleet no longer trusts the device's CA (alert after the handshake)", handle: connackAfterTLS(refusingFleet, 0), refused: true},
		{name: "fleet refuses a revoked certificate (alert after the handshake)", handle: connackAfterTLS(revokingFleet, 0), refused: true},
		// In TLS 1.2 the alert comes inside the handshake, before the
		// server proved anything: anyone on the path can send it.
		{name: "alert inside a TLS 1.2 handshake", max: tls.VersionTLS12, handle: connackAfterTLS(revokingFleet, 0)},
	} {
		t.Run(c.name, func(t *testing.T) {
			addr := serve(t, c.handle)
			_, err := link.Dial(context.Background(), link.Config{Broker: addr, ClientID: "dev", TLS: deviceTLS(c.max), Timeout: 5 * time.Second})
			if err == nil {
				t.Fatal("Dial succeeded")
			}
			if strings.HasPrefix(c.name, "rogue") && !strings.Contains(err.Error(), "not authori") {
				t.Fatalf("the attack needs the certificate's name in the error: %v", err)
			}
			if got := authRefused(err); got != c.refused {
				t.Fatalf("authRefused(%v) = %v, want %v", err, got, c.refused)
			}
		})
	}
}
