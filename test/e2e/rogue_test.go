package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"io"
	"math/big"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/device/agent"
	"github.com/sigil-iot/sigil/device/state"
	"github.com/sigil-iot/sigil/sim/harness"
)

// rogueBroker listens on loopback and hands each connection to handle; it
// counts the connections.
func rogueBroker(t *testing.T, handle func(net.Conn)) (string, *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int64
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			wg.Go(func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				handle(c)
			})
		}
	})
	return ln.Addr().String(), &n
}

// attackerCertificate is a server certificate from the attacker's own CA
// whose names say "not authorized", the words sigild used to look for in
// error text.
func attackerCertificate(t *testing.T) tls.Certificate {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "not authorized"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ = x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "not authorized (CONNACK 5)"},
		DNSNames: []string{"not authorized (CONNACK 5)", "bad user name or password"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, leaf, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der, caDER}, PrivateKey: key}
}

// storedIdentity reads the identity in a stopped device's state store.
func storedIdentity(t *testing.T, dir string) *state.Identity {
	t.Helper()
	st, err := state.Open(filepath.Join(dir, "state.db"), state.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	id, err := st.Identity()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func certSerial(t *testing.T, der []byte) string {
	t.Helper()
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(c.SerialNumber.Bytes())
}

// TestRogueBrokerCannotCutTheDeviceOff: a network attacker without the
// fleet's keys stands between an enrolled device (real swtpm) and the
// fleet: a TLS server whose certificate is named "not authorized (CONNACK
// 5)", then a plain TCP server that answers CONNACK 5. The device fails to
// connect and keeps its certificate: it does not enroll again. Back at the
// real fleet it connects with the same certificate; when the fleet itself
// refuses the certificate (revoked), the device still enrolls again.
func TestRogueBrokerCannotCutTheDeviceOff(t *testing.T) {
	f := startFleet(t, withEKCA(t, nil))
	noLog := func(c *agentConfig) { c.EventLog = "-" }
	inst, dir := newTPM(t), t.TempDir()
	d := startDevice(t, f, inst, harness.DeviceConfig{Dir: dir, Tweak: noLog})
	st := waitConnected(t, d)
	d.Stop()

	rogue := &tls.Config{Certificates: []tls.Certificate{attackerCertificate(t)}}
	for _, c := range []struct {
		name   string
		handle func(net.Conn)
	}{
		{"TLS certificate named not authorized", func(c net.Conn) {
			tc := tls.Server(c, rogue)
			if tc.Handshake() == nil {
				_, _ = tc.Write([]byte{0x20, 0x02, 0x00, 0x05})
				_, _ = io.Copy(io.Discard, tc)
			}
		}},
		{"plain TCP CONNACK 5", func(c net.Conn) { _, _ = c.Write([]byte{0x20, 0x02, 0x00, 0x05}) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			addr, conns := rogueBroker(t, c.handle)
			d := startDevice(t, f, inst, harness.DeviceConfig{Dir: dir, Tweak: func(c *agentConfig) { noLog(c); c.Broker = addr }})
			// Two refusals in a row used to make the device forget its
			// certificate before its third connection.
			deadline := time.Now().Add(30 * time.Second)
			for conns.Load() < 4 {
				if time.Now().After(deadline) {
					t.Fatalf("the device connected %d times to the rogue broker in 30s", conns.Load())
				}
				select {
				case err := <-d.Done():
					t.Fatalf("sigild stopped: %v", err)
				case <-time.After(20 * time.Millisecond):
				}
			}
			if s := d.Status(); s.Connected || s.LastError == "" {
				t.Fatalf("status against the rogue broker: %+v", s)
			}
			d.Stop()
			id := storedIdentity(t, dir)
			if id.Status != state.StatusEnrolled || certSerial(t, id.Cert) != st.CertSerial {
				t.Fatalf("after the rogue broker the device is %q with certificate %s (was enrolled with %s)", id.Status, certSerial(t, id.Cert), st.CertSerial)
			}
		})
	}

	d = startDevice(t, f, inst, harness.DeviceConfig{Dir: dir, Tweak: noLog})
	if back := waitConnected(t, d); back.CertSerial != st.CertSerial || back.DeviceID != st.DeviceID {
		t.Fatalf("back at the fleet: %+v, was %+v", back, st)
	}
	c, _ := f.Client()
	ctx := context.Background()
	if _, err := c.Revoke(ctx, st.DeviceID, "superseded", "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Wait(ctx, 45*time.Second, func(s agent.Status) bool { return s.Connected && s.CertSerial != st.CertSerial }); err != nil {
		t.Fatalf("the fleet's refusal of a revoked certificate no longer makes the device enroll again: %v", err)
	}
}
