package mqttpool

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/internal/wait"
)

// TestBrokerTLSFollowsTheCA: with RootsFunc, the fleet verifies a broker
// with the CA's generations of the moment: a broker whose certificate a
// generation prepared after the connection's configuration was built
// issued is accepted (before, the roots were those of the replica's
// start), one of another CA is refused, and so is one for another name.
func TestBrokerTLSFollowsTheCA(t *testing.T) {
	fleetCA, err := ca.Open(ca.Config{Dir: filepath.Join(t.TempDir(), "ca"), TrustDomain: "tls.test"})
	if err != nil {
		t.Fatal(err)
	}
	otherCA, err := ca.Open(ca.Config{Dir: filepath.Join(t.TempDir(), "ca"), TrustDomain: "tls.test"})
	if err != nil {
		t.Fatal(err)
	}
	cfg := brokerTLS(nil, fleetCA.Pool, "")
	if _, err := fleetCA.Prepare(); err != nil {
		t.Fatal(err)
	}
	if _, err := fleetCA.Activate(); err != nil {
		t.Fatal(err)
	}
	handshake := func(issuer *ca.CA, name, dialName string) error {
		t.Helper()
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		cert, err := issuer.IssueServer([]string{name}, k.Public(), 0)
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		done := make(chan struct{})
		go func() {
			defer close(done)
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(wait.Timeout)) // bounds a handshake gone wrong, not a wait
			_ = tls.Server(conn, &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{cert.Raw}, PrivateKey: k}}}).Handshake()
		}()
		c := cfg.Clone()
		c.ServerName = dialName
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: wait.Timeout}, "tcp", ln.Addr().String(), c)
		if err == nil {
			conn.Close()
		}
		<-done
		return err
	}
	if err := handshake(fleetCA, "mqtt.tls.test", "mqtt.tls.test"); err != nil {
		t.Fatalf("a broker certificate of the new generation: %v", err)
	}
	if err := handshake(otherCA, "mqtt.tls.test", "mqtt.tls.test"); err == nil {
		t.Fatal("a broker certificate of another CA was accepted")
	}
	if err := handshake(fleetCA, "other.tls.test", "mqtt.tls.test"); err == nil {
		t.Fatal("a broker certificate for another name was accepted")
	}
}
