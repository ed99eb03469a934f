package broker

import (
	"crypto/x509"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"

	paho "github.com/eclipse/paho.mqtt.golang"

	polling "github.com/sigil-iot/sigil/internal/wait" // this package has a func wait
)

// fromLocal makes a paho client connect from a given loopback address.
func fromLocal(ip string) func(*paho.ClientOptions) {
	return func(o *paho.ClientOptions) {
		o.SetDialer(&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}})
	}
}

func nextOf(t *testing.T, ch <-chan Event, kind EventKind) Event {
	t.Helper()
	for {
		ev := polling.Recv(t, ch, kind.String()+" event")
		if ev.Kind == kind {
			return ev
		}
	}
}

// TestTakeoverReportsEveryConnection: a device's session taken over from
// another address yields Connected for the new connection and Closed (not
// Disconnected) for the old one, each with its remote address; the end of
// the last connection is Disconnected.
func TestTakeoverReportsEveryConnection(t *testing.T) {
	e := startBroker(t, nil)
	certA := e.ca.device(t, devA)
	first := e.mustClient(t, devA, &certA)
	ev := nextOf(t, e.events, Connected)
	host, _, err := net.SplitHostPort(ev.Remote)
	if err != nil || host != "127.0.0.1" {
		t.Fatalf("connected event remote %q", ev.Remote)
	}
	firstRemote := ev.Remote

	second, err := e.client(t, devA, &certA, fromLocal("127.0.0.2"))
	if err != nil {
		t.Fatal(err)
	}
	ev = polling.Recv(t, e.events, "connected event of the second connection")
	if ev.Kind != Connected || !strings.HasPrefix(ev.Remote, "127.0.0.2:") || ev.Identity.DeviceID != devA {
		t.Fatalf("second connection: %+v", ev)
	}
	secondRemote := ev.Remote
	ev = polling.Recv(t, e.events, "end of the first connection")
	if ev.Kind != Closed || ev.Remote != firstRemote || ev.Identity.DeviceID != devA {
		t.Fatalf("taken-over connection: %+v, want Closed from %s", ev, firstRemote)
	}
	if !e.b.Connected(devA) {
		t.Fatal("device not connected after the takeover")
	}
	first.Disconnect(0)
	second.Disconnect(50)
	ev = nextOf(t, e.events, Disconnected)
	if ev.Remote != secondRemote {
		t.Fatalf("disconnected event remote %q, want %q", ev.Remote, secondRemote)
	}
}

// TestForeignCertificateReported: a client certificate from another CA is
// refused by the handshake and reported with the certificate presented.
func TestForeignCertificateReported(t *testing.T) {
	e := startBroker(t, nil)
	forged := newCA(t, "other").device(t, devA)
	if _, err := e.client(t, devA, &forged, nil); err == nil {
		t.Fatal("certificate from another CA accepted")
	}
	ev := nextOf(t, e.events, Refused)
	if ev.Presented == nil || !ev.Presented.Equal(forged.tls.Leaf) {
		t.Fatalf("refused event does not carry the presented certificate: %+v", ev)
	}
	if ev.Identity.DeviceID != "" || ev.Identity.Cert != nil || !strings.HasPrefix(ev.Remote, "127.0.0.1:") {
		t.Fatalf("refused event %+v", ev)
	}
}

// TestScreen: Screen sees client ID, device ID and address of every
// CONNECT, and its error refuses the client before any other check.
func TestScreen(t *testing.T) {
	var blockAddr, blockID atomic.Value
	blockAddr.Store("")
	blockID.Store("")
	type seen struct{ client, device, remote string }
	calls := make(chan seen, 10)
	e := startBroker(t, func(c *Config) {
		c.BootstrapAuth = func(string, string, []byte, *x509.Certificate) error { return nil }
		c.Screen = func(clientID, deviceID, remote string) error {
			calls <- seen{clientID, deviceID, remote}
			host, _, _ := net.SplitHostPort(remote)
			if host == blockAddr.Load().(string) || clientID == blockID.Load().(string) {
				return errors.New("blocked")
			}
			return nil
		}
	})
	certA := e.ca.device(t, devA)
	e.mustClient(t, devA, &certA)
	if s := polling.Recv(t, calls, "screen call"); s.client != devA || s.device != devA || !strings.HasPrefix(s.remote, "127.0.0.1:") {
		t.Fatalf("screen saw %+v", s)
	}
	e.mustClient(t, "boot-1", nil)
	if s := polling.Recv(t, calls, "screen call"); s.client != "boot-1" || s.device != "" {
		t.Fatalf("screen saw %+v", s)
	}

	blockID.Store("boot-2")
	if _, err := e.client(t, "boot-2", nil, nil); err == nil {
		t.Fatal("screened-out client ID connected")
	}
	ev := nextOf(t, e.events, Refused)
	if ev.Identity.ClientID != "boot-2" || !strings.Contains(ev.Reason, "blocked") {
		t.Fatalf("refused event %+v", ev)
	}
	blockAddr.Store("127.0.0.3")
	if _, err := e.client(t, "boot-3", nil, fromLocal("127.0.0.3")); err == nil {
		t.Fatal("screened-out address connected")
	}
	certB := e.ca.device(t, devB)
	if _, err := e.client(t, devB, &certB, fromLocal("127.0.0.3")); err == nil {
		t.Fatal("device from a screened-out address connected")
	}
	if e.b.Connected(devB) {
		t.Fatal("device B connected")
	}
	// The same device from another address is fine.
	e.mustClient(t, devB, &certB)
}
