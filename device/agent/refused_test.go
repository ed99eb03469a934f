package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/device/link"
	"github.com/sigil-iot/sigil/internal/pkitest"
)

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
	fleet, attacker, other := pkitest.NewCA(t, "Sigil fleet CA"), pkitest.NewCA(t, "not authorized"), pkitest.NewCA(t, "another CA")
	device := fleet.Client(t, "0123456789abcdef0123456789abcdef")
	deviceTLS := func(max uint16) *tls.Config {
		return &tls.Config{RootCAs: fleet.Pool, ServerName: "localhost", MinVersion: tls.VersionTLS12, MaxVersion: max,
			Certificates: []tls.Certificate{device}}
	}
	fleetServer := fleet.Server(t, "localhost")
	rogue := attacker.Server(t, "not authorized (CONNACK 5)") // its name reaches the error: "certificate is valid for …, not localhost"
	fakeFleetTLS := &tls.Config{Certificates: []tls.Certificate{fleetServer}}
	refusingFleet := &tls.Config{Certificates: []tls.Certificate{fleetServer}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: other.Pool}
	revokingFleet := &tls.Config{Certificates: []tls.Certificate{fleetServer}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: fleet.Pool,
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
