package link

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/device/link/internal/packet"
	"github.com/sigil-iot/sigil/fleet/broker"
	"github.com/sigil-iot/sigil/internal/wait"
	"github.com/sigil-iot/sigil/pkg/wire"
)

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// refusedCredential is the agent's test for a refused CONNECT
// (device/agent authRefused): a *ConnackError with code 4 or 5.
func refusedCredential(err error) bool {
	c, ok := errors.AsType[*ConnackError](err)
	return ok && (c.Code == ConnackBadCredentials || c.Code == ConnackNotAuthorized)
}

// TestEmbeddedBroker runs the session against the fleet's own broker
// (mochi-mqtt behind fleet/broker), with a device certificate whose key is
// only a crypto.Signer.
func TestEmbeddedBroker(t *testing.T) {
	e := startFleetBroker(t)
	certA := e.ca.device(t, devA)
	up := make(chan msg, 10)
	if err := e.b.Subscribe(topics.Filter(wire.SegDevice, "+", wire.Up), func(id broker.Identity, topic string, payload []byte) {
		if id.DeviceID == devA {
			up <- msg{topic, payload}
		}
	}); err != nil {
		t.Fatal(err)
	}
	c := dial(t, Config{Broker: e.addr, ClientID: devA, TLS: e.ca.clientTLS(&certA)})
	if certA.signs.Load() == 0 {
		t.Fatal("the TLS handshake did not sign with the device key")
	}
	if !c.Connected() || c.Err() != nil {
		t.Fatalf("Connected=%v Err=%v right after Dial", c.Connected(), c.Err())
	}
	ctx := context.Background()
	down, h := collector(10)
	if err := c.Subscribe(ctx, topics.Filter(wire.SegDevice, devA, wire.Down), h); err != nil {
		t.Fatalf("Subscribe own down topics: %v", err)
	}

	t.Run("publish QoS 1", func(t *testing.T) {
		if err := c.Publish(ctx, topics.DeviceUp(devA, "hello"), []byte("hi")); err != nil {
			t.Fatal(err)
		}
		m := wait.Recv(t, up, "the device's message at the fleet")
		if m.topic != topics.DeviceUp(devA, "hello") || string(m.payload) != "hi" {
			t.Fatalf("fleet got %s %q", m.topic, m.payload)
		}
	})
	for _, qos := range []byte{0, 1} {
		t.Run("receive QoS "+string('0'+qos), func(t *testing.T) {
			if err := e.b.Publish(topics.DeviceDown(devA, "cmd"), []byte{'q', '0' + qos}, qos); err != nil {
				t.Fatal(err)
			}
			m := wait.Recv(t, down, "the fleet's message at the device")
			if m.topic != topics.DeviceDown(devA, "cmd") || string(m.payload) != string([]byte{'q', '0' + qos}) {
				t.Fatalf("device got %s %q", m.topic, m.payload)
			}
		})
	}
	t.Run("512 KiB both ways", func(t *testing.T) {
		big := randomBytes(t, 512<<10)
		if err := c.Publish(ctx, topics.DeviceUp(devA, "attest"), big); err != nil {
			t.Fatal(err)
		}
		if m := wait.Recv(t, up, "512 KiB at the fleet"); !bytes.Equal(m.payload, big) {
			t.Fatalf("fleet got %d bytes, not the 512 KiB sent", len(m.payload))
		}
		if err := e.b.Publish(topics.DeviceDown(devA, "big"), big, 1); err != nil {
			t.Fatal(err)
		}
		if m := wait.Recv(t, down, "512 KiB at the device"); !bytes.Equal(m.payload, big) {
			t.Fatalf("device got %d bytes, not the 512 KiB sent", len(m.payload))
		}
	})
	t.Run("refused subscription", func(t *testing.T) {
		other, h := collector(1)
		err := c.Subscribe(ctx, topics.Filter(wire.SegDevice, devB, wire.Down), h)
		if !errors.Is(err, ErrRefused) {
			t.Fatalf("Subscribe to another device's topics: %v, want ErrRefused", err)
		}
		// The session survives a refusal, and the refused filter gets nothing.
		if err := e.b.Publish(topics.DeviceDown(devB, "cmd"), []byte("for B"), 1); err != nil {
			t.Fatal(err)
		}
		if err := c.Publish(ctx, topics.DeviceUp(devA, "hello"), []byte("still here")); err != nil {
			t.Fatalf("publish after a refused subscription: %v", err)
		}
		wait.Recv(t, up, "message after refusal")
		select {
		case m := <-other:
			t.Fatalf("refused subscription received %s", m.topic)
		case <-time.After(100 * time.Millisecond):
		}
	})
	t.Run("cancelled publish", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if err := c.Publish(cctx, topics.DeviceUp(devA, "hello"), []byte("x")); !errors.Is(err, context.Canceled) {
			t.Fatalf("Publish with a cancelled context: %v", err)
		}
	})
	t.Run("broker disconnects the device", func(t *testing.T) {
		e.b.Disconnect(devA)
		expectDone(t, c, 5*time.Second, "the broker dropped the device")
		if err := c.Publish(ctx, topics.DeviceUp(devA, "hello"), []byte("x")); err == nil {
			t.Fatal("Publish succeeded on a lost connection")
		}
	})
}

func TestEmbeddedBrokerRefusals(t *testing.T) {
	e := startFleetBroker(t)
	certA := e.ca.device(t, devA)
	ctx := context.Background()

	t.Run("CONNECT with another device's client ID", func(t *testing.T) {
		_, err := Dial(ctx, Config{Broker: e.addr, ClientID: devB, TLS: e.ca.clientTLS(&certA), Timeout: 5 * time.Second})
		if err == nil || !refusedCredential(err) || !strings.Contains(err.Error(), "CONNACK") {
			t.Fatalf("Dial: %v, want a refusal the agent recognizes", err)
		}
		t.Log(err)
	})
	t.Run("forbidden publish ends the session", func(t *testing.T) {
		c := dial(t, Config{Broker: e.addr, ClientID: devA, TLS: e.ca.clientTLS(&certA)})
		_ = c.Publish(ctx, topics.DeviceUp(devB, "hello"), []byte("forged"))
		expectDone(t, c, 5*time.Second, "a forbidden publish")
	})
	t.Run("Close sends DISCONNECT", func(t *testing.T) {
		for len(e.events) > 0 {
			<-e.events
		}
		c, err := Dial(ctx, Config{Broker: e.addr, ClientID: devA, TLS: e.ca.clientTLS(&certA)})
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		waitStopped(t, c)
		if c.Connected() || !errors.Is(c.Err(), errClosed) {
			t.Fatalf("after Close: Connected=%v Err=%v", c.Connected(), c.Err())
		}
		for {
			ev := wait.Recv(t, e.events, "the broker's Disconnected event")
			if ev.Kind == broker.Disconnected {
				break
			}
		}
		c.Close() // again: nothing happens
	})
	t.Run("bootstrap client", func(t *testing.T) {
		c := dial(t, Config{Broker: e.addr, ClientID: "e-" + devA, TLS: e.ca.clientTLS(nil)})
		_, h := collector(1)
		if err := c.Subscribe(ctx, topics.Filter(wire.SegEnroll, "e-"+devA, wire.Down), h); err != nil {
			t.Fatal(err)
		}
		if err := c.Subscribe(ctx, topics.Filter(wire.SegDevice, devA, wire.Down), h); !errors.Is(err, ErrRefused) {
			t.Fatalf("bootstrap subscription to device topics: %v", err)
		}
	})
}

// TestMosquitto runs the session against an independent broker.
func TestMosquitto(t *testing.T) {
	const dev = "devicea"
	m := startMosquitto(t, dev)
	cert := m.ca.device(t, dev)
	ctx := context.Background()
	c := dial(t, Config{Broker: m.addr, ClientID: dev, TLS: m.ca.clientTLS(&cert)})
	if cert.signs.Load() == 0 {
		t.Fatal("the TLS handshake did not sign with the device key")
	}
	got, h := collector(10)
	if err := c.Subscribe(ctx, topics.Filter(wire.SegDevice, dev, wire.Down), h); err != nil {
		t.Fatal(err)
	}
	t.Run("round trip QoS 1", func(t *testing.T) {
		if err := c.Publish(ctx, topics.DeviceDown(dev, "echo"), []byte("ping")); err != nil {
			t.Fatal(err)
		}
		if m := wait.Recv(t, got, "own message back"); m.topic != topics.DeviceDown(dev, "echo") || string(m.payload) != "ping" {
			t.Fatalf("got %s %q", m.topic, m.payload)
		}
	})
	t.Run("512 KiB round trip", func(t *testing.T) {
		big := randomBytes(t, 512<<10)
		if err := c.Publish(ctx, topics.DeviceDown(dev, "big"), big); err != nil {
			t.Fatal(err)
		}
		if m := wait.Recv(t, got, "512 KiB back"); !bytes.Equal(m.payload, big) {
			t.Fatalf("got %d bytes back, not the 512 KiB sent", len(m.payload))
		}
	})
	t.Run("refused subscription", func(t *testing.T) {
		_, h := collector(1)
		if err := c.Subscribe(ctx, topics.Filter(wire.SegDevice, "deviceb", wire.Down), h); !errors.Is(err, ErrRefused) {
			t.Fatalf("Subscribe to another device's topics: %v, want ErrRefused", err)
		}
		if !c.Connected() {
			t.Fatal("refusal ended the session")
		}
	})
	t.Run("CONNACK not authorized", func(t *testing.T) {
		_, err := Dial(ctx, Config{Broker: m.anonAddr, ClientID: "anon", TLS: m.ca.clientTLS(nil), Timeout: 5 * time.Second})
		if err == nil || !strings.Contains(err.Error(), "not authorized (CONNACK 5)") || !refusedCredential(err) {
			t.Fatalf("anonymous Dial: %v, want not authorized (CONNACK 5)", err)
		}
	})
	t.Run("unknown server certificate", func(t *testing.T) {
		other := newCA(t)
		_, err := Dial(ctx, Config{Broker: m.addr, ClientID: dev, TLS: other.clientTLS(&cert), Timeout: 5 * time.Second})
		if err == nil || !strings.Contains(err.Error(), "TLS handshake") {
			t.Fatalf("Dial trusting another CA: %v", err)
		}
		if _, ok := errors.AsType[*AlertError](err); ok || refusedCredential(err) {
			t.Fatalf("an unverified server's answer is typed as a refusal: %v", err)
		}
	})
	t.Run("client certificate from another CA", func(t *testing.T) {
		// OpenSSL refuses it with an alert after the TLS 1.3 handshake.
		stranger := newCA(t).device(t, dev)
		_, err := Dial(ctx, Config{Broker: m.addr, ClientID: dev, TLS: m.ca.clientTLS(&stranger), Timeout: 5 * time.Second})
		a, ok := errors.AsType[*AlertError](err)
		if !ok || a.Alert != 48 { // unknown_ca
			t.Fatalf("Dial with a certificate mosquitto does not trust: %v, want an *AlertError unknown_ca", err)
		}
	})
}

// TestKeepAlive: PINGREQs go out every KeepAlive while the broker answers;
// when it stops answering, Done closes within two intervals.
func TestKeepAlive(t *testing.T) {
	f := startFake(t)
	const ka = 300 * time.Millisecond
	c, fc, connect := f.dial(t, Config{ClientID: "ka", KeepAlive: ka})
	if connect.KeepAlive != 1 || !connect.CleanSession || connect.ClientID != "ka" {
		t.Fatalf("CONNECT = %+v, want keepalive 1s (rounded up), clean session, client ID ka", connect)
	}
	var last time.Time
	for i := range 3 {
		p := fc.read()
		if p.Type != packet.Pingreq {
			t.Fatalf("got %v, want PINGREQ", p.Type)
		}
		if i > 0 {
			if gap := time.Since(last); gap < ka/2 || gap > 3*ka {
				t.Fatalf("PINGREQ after %v, want about %v", gap, ka)
			}
		}
		fc.send(packet.Packet{Type: packet.Pingresp})
		last = time.Now()
	}
	if !c.Connected() {
		t.Fatalf("lost while the broker answered: %v", c.Err())
	}
	// The broker goes silent but keeps the TCP connection open.
	expectDone(t, c, 2*ka+500*time.Millisecond, "the broker stopped answering PINGREQ")
	if d := time.Since(last); d < ka {
		t.Fatalf("declared lost %v after the last PINGRESP, before one interval", d)
	}
	if !strings.Contains(c.Err().Error(), "keepalive") {
		t.Fatalf("Err = %v, want a keepalive error", c.Err())
	}
}

// TestBrokerClosesConnection: a broker that closes the connection ends the
// session, and waiting requests return at once.
func TestBrokerClosesConnection(t *testing.T) {
	f := startFake(t)
	c, fc, _ := f.dial(t, Config{ClientID: "x", Timeout: 10 * time.Second})
	errc := make(chan error, 1)
	go func() { errc <- c.Publish(context.Background(), "a/b", []byte("x")) }()
	if p := fc.read(); p.Type != packet.Publish || p.QoS != 1 || p.Topic != "a/b" || p.ID == 0 {
		t.Fatalf("got %+v, want a QoS 1 PUBLISH", p)
	}
	start := time.Now()
	fc.c.Close()
	expectDone(t, c, 2*time.Second, "the broker closed the connection")
	if err := wait.Recv(t, errc, "Publish to return"); err == nil || time.Since(start) > 2*time.Second {
		t.Fatalf("Publish = %v after %v", err, time.Since(start))
	}
	if !strings.Contains(c.Err().Error(), "closed the connection") {
		t.Fatalf("Err = %v", c.Err())
	}
	waitStopped(t, c)
}

// TestIncomingPublish: QoS 1 is acknowledged only after the handler
// returned, QoS 0 not at all; a message matching no subscription is still
// acknowledged.
func TestIncomingPublish(t *testing.T) {
	f := startFake(t)
	c, fc, _ := f.dial(t, Config{ClientID: "x"})
	release := make(chan struct{})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unblock) // registered after dial's: runs before Close waits
	got := make(chan msg, 10)
	errc := make(chan error, 1)
	go func() {
		errc <- c.Subscribe(context.Background(), "d/#", func(topic string, payload []byte) {
			got <- msg{topic, payload}
			if string(payload) == "hold" {
				<-release
			}
		})
	}()
	sub := fc.read()
	if sub.Type != packet.Subscribe || len(sub.Filters) != 1 || sub.Filters[0] != (packet.Filter{Topic: "d/#", QoS: 1}) {
		t.Fatalf("got %+v, want SUBSCRIBE d/# QoS 1", sub)
	}
	fc.send(packet.Packet{Type: packet.Suback, ID: sub.ID, Codes: []byte{1}})
	if err := wait.Recv(t, errc, "Subscribe"); err != nil {
		t.Fatal(err)
	}

	fc.send(packet.Packet{Type: packet.Publish, QoS: 1, ID: 7, Topic: "d/1", Payload: []byte("hold")})
	if m := wait.Recv(t, got, "QoS 1 message"); m.topic != "d/1" {
		t.Fatalf("handler got %s", m.topic)
	}
	if p, err := fc.readWithin(200 * time.Millisecond); err == nil {
		t.Fatalf("client sent %v while the handler still ran", p.Type)
	}
	unblock()
	if p := fc.read(); p.Type != packet.Puback || p.ID != 7 {
		t.Fatalf("got %+v, want PUBACK 7", p)
	}

	fc.send(packet.Packet{Type: packet.Publish, Topic: "d/2", Payload: []byte("q0")})
	fc.send(packet.Packet{Type: packet.Publish, QoS: 1, ID: 8, Topic: "elsewhere", Payload: []byte("nobody")})
	if m := wait.Recv(t, got, "QoS 0 message"); m.topic != "d/2" || string(m.payload) != "q0" {
		t.Fatalf("handler got %s %q", m.topic, m.payload)
	}
	if p := fc.read(); p.Type != packet.Puback || p.ID != 8 {
		t.Fatalf("got %+v, want PUBACK 8 (and nothing for QoS 0)", p)
	}
	select {
	case m := <-got:
		t.Fatalf("handler got %s, which its filter does not match", m.topic)
	default:
	}
	if !c.Connected() {
		t.Fatal(c.Err())
	}
}

// TestRequestTimeouts: Publish and Subscribe give up after Timeout or with
// their context; a late answer is ignored and the session goes on.
func TestRequestTimeouts(t *testing.T) {
	f := startFake(t)
	const timeout = 300 * time.Millisecond
	c, fc, _ := f.dial(t, Config{ClientID: "x", Timeout: timeout})

	start := time.Now()
	err := c.Publish(context.Background(), "a", []byte("1"))
	if err == nil || !strings.Contains(err.Error(), "no PUBACK") || time.Since(start) > timeout+time.Second {
		t.Fatalf("Publish without PUBACK: %v after %v", err, time.Since(start))
	}
	first := fc.read()

	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	if err := c.Subscribe(ctx, "a/#", func(string, []byte) {}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Subscribe: %v", err)
	}
	fc.read()

	fc.send(packet.Packet{Type: packet.Puback, ID: first.ID}) // late: ignored
	errc := make(chan error, 1)
	go func() { errc <- c.Publish(context.Background(), "a", []byte("2")) }()
	p := fc.read()
	if p.ID == first.ID {
		t.Fatal("packet identifier reused at once")
	}
	fc.send(packet.Packet{Type: packet.Puback, ID: p.ID})
	if err := wait.Recv(t, errc, "Publish"); err != nil {
		t.Fatalf("Publish after late PUBACK: %v", err)
	}
	if !c.Connected() {
		t.Fatal(c.Err())
	}
}

func TestDialTimeoutAndCancel(t *testing.T) {
	f := startFake(t)
	// The fake accepts TLS but never answers CONNECT.
	start := time.Now()
	_, err := Dial(context.Background(), Config{Broker: f.addr(), ClientID: "x", TLS: f.ca.clientTLS(nil), Timeout: 300 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "timed out") || time.Since(start) > 2*time.Second {
		t.Fatalf("Dial without CONNACK: %v after %v", err, time.Since(start))
	}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	if _, err := Dial(ctx, Config{Broker: f.addr(), ClientID: "x", TLS: f.ca.clientTLS(nil)}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Dial: %v", err)
	}
	if _, err := Dial(context.Background(), Config{Broker: f.addr(), ClientID: "x"}); err == nil {
		t.Fatal("Dial without TLS config succeeded")
	}
	if _, err := Dial(context.Background(), Config{Broker: f.addr(), ClientID: "bad\x00id", TLS: f.ca.clientTLS(nil)}); err == nil {
		t.Fatal("Dial with an invalid client ID succeeded")
	}
}

func TestConnackCodes(t *testing.T) {
	f := startFake(t)
	for code, want := range map[byte]string{
		1: "unacceptable protocol version (CONNACK 1)", 2: "identifier rejected (CONNACK 2)",
		3: "server unavailable (CONNACK 3)", 4: "bad user name or password (CONNACK 4)", 5: "not authorized (CONNACK 5)",
	} {
		errc := make(chan error, 1)
		go func() {
			_, err := Dial(context.Background(), Config{Broker: f.addr(), ClientID: "x", TLS: f.ca.clientTLS(nil), Timeout: 5 * time.Second})
			errc <- err
		}()
		f.accept(t, code)
		err := wait.Recv(t, errc, "Dial")
		if err == nil || err.Error() != "link: connect "+f.addr()+": "+want {
			t.Fatalf("CONNACK %d: %v, want %q", code, err, want)
		}
		if c, ok := errors.AsType[*ConnackError](err); !ok || c.Code != code {
			t.Fatalf("CONNACK %d: %v is not a *ConnackError with its code", code, err)
		}
		if refusedCredential(err) != (code == 4 || code == 5) {
			t.Fatalf("CONNACK %d: the agent would misread %q", code, err)
		}
	}
}

// TestProtocolViolations: bytes a broker must not send end the session with
// an explanation and never panic.
func TestProtocolViolations(t *testing.T) {
	for _, c := range []struct {
		name string
		raw  []byte
		want string
	}{
		{"remaining length of 5 bytes", []byte{0x30, 0xff, 0xff, 0xff, 0xff, 0x01}, "longer than 4 bytes"},
		{"packet over the limit", []byte{0x30, 0xff, 0xff, 0xff, 0x7f}, "exceeds the limit"},
		{"wildcard topic", []byte{0x30, 0x03, 0x00, 0x01, '#'}, "wildcard"},
		{"invalid UTF-8 topic", []byte{0x30, 0x04, 0x00, 0x02, 0xc3, 0x28}, "UTF-8"},
		{"second CONNACK", []byte{0x20, 0x02, 0x00, 0x00}, "unexpected CONNACK"},
		{"PINGREQ from the broker", []byte{0xc0, 0x00}, "unexpected PINGREQ"},
		{"QoS 2 publish", []byte{0x34, 0x05, 0x00, 0x01, 'x', 0x00, 0x01}, "QoS 2"},
		{"reserved type", []byte{0xf0, 0x00}, "invalid type"},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := startFake(t)
			conn, fc, _ := f.dial(t, Config{ClientID: "x"})
			fc.sendRaw(c.raw)
			expectDone(t, conn, 5*time.Second, "a protocol violation")
			if !strings.Contains(conn.Err().Error(), c.want) || !strings.HasPrefix(conn.Err().Error(), "link: ") {
				t.Fatalf("Err = %v, want mention of %q", conn.Err(), c.want)
			}
		})
	}
}

func TestPublishTooLarge(t *testing.T) {
	f := startFake(t)
	c, _, _ := f.dial(t, Config{ClientID: "x"})
	if err := c.Publish(context.Background(), "a", make([]byte, MaxPacketSize)); err == nil || !strings.Contains(err.Error(), "exceeds the limit") {
		t.Fatalf("oversized Publish: %v", err)
	}
	if err := c.Publish(context.Background(), "a/+", nil); err == nil || !strings.Contains(err.Error(), "wildcard") {
		t.Fatalf("Publish to a filter: %v", err)
	}
	if err := c.Subscribe(context.Background(), "a/#/b", func(string, []byte) {}); err == nil {
		t.Fatal("Subscribe to an invalid filter succeeded")
	}
	if !c.Connected() {
		t.Fatal("a refused call ended the session")
	}
	if MaxPacketSize < wire.MaxMessageSize+2+len(topics.DeviceUp(strings.Repeat("a", 64), "attestation"))+2 {
		t.Fatal("MaxPacketSize cannot carry the largest protocol message")
	}
}

func TestMatch(t *testing.T) {
	for _, c := range []struct {
		filter, topic string
		want          bool
	}{
		{"a/b", "a/b", true},
		{"a/b", "a/c", false},
		{"a/b", "a/b/c", false},
		{"a/+", "a/b", true},
		{"a/+", "a", false},
		{"a/+", "a/b/c", false},
		{"a/#", "a", true},
		{"a/#", "a/b/c", true},
		{"#", "a/b", true},
		{"+/+", "/x", true},
		{"+", "/x", false},
		{"a/+/c", "a//c", true},
		{"#", "$SYS/x", false},
		{"+/x", "$SYS/x", false},
		{"$SYS/#", "$SYS/x", true},
		{"$share/g/a/+", "a/b", true},
		{"$share/g/a/+", "b/b", false},
		{"sigil/v1/dev/x/down/#", "sigil/v1/dev/x/down/cmd", true},
		{"sigil/v1/dev/x/down/#", "sigil/v1/dev/y/down/cmd", false},
	} {
		if got := match(c.filter, c.topic); got != c.want {
			t.Errorf("match(%q, %q) = %v, want %v", c.filter, c.topic, got, c.want)
		}
	}
}

// TestAlertsAfterTheHandshake: a TLS alert is an *AlertError only when the
// broker sent it after the handshake completed (TLS 1.3 refusing the
// client certificate); inside the handshake (TLS 1.2), or as plaintext
// bytes from anyone, it is not.
func TestAlertsAfterTheHandshake(t *testing.T) {
	ca, other := newCA(t), newCA(t)
	srv, dev := ca.server(t), ca.device(t, devA)
	listen := func(t *testing.T, cfg *tls.Config, plain []byte) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		t.Cleanup(func() { ln.Close(); <-done })
		go func() {
			defer close(done)
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			if plain != nil {
				_, _ = c.Write(plain)
				return
			}
			tc := tls.Server(c, cfg)
			if tc.Handshake() == nil {
				_, _ = io.Copy(io.Discard, tc)
			}
		}()
		return ln.Addr().String()
	}
	refusing := &tls.Config{Certificates: []tls.Certificate{srv.tls}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: other.Pool}
	for _, c := range []struct {
		name  string
		cfg   *tls.Config
		plain []byte
		max   uint16
		alert uint8 // 0: no *AlertError
	}{
		// The test CAs share a name, so the client presents its
		// certificate and Go's server answers unknown_ca.
		{name: "TLS 1.3 unknown CA", cfg: refusing, alert: 48},
		{name: "TLS 1.2 inside the handshake", cfg: refusing, max: tls.VersionTLS12},
		{name: "plaintext alert", plain: []byte{0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 48}},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := ca.clientTLS(&dev)
			cfg.MaxVersion = c.max
			_, err := Dial(context.Background(), Config{Broker: listen(t, c.cfg, c.plain), ClientID: devA, TLS: cfg, Timeout: 5 * time.Second})
			if err == nil {
				t.Fatal("Dial succeeded")
			}
			a, ok := errors.AsType[*AlertError](err)
			switch {
			case c.alert == 0 && ok:
				t.Fatalf("%v is an *AlertError", err)
			case c.alert != 0 && (!ok || a.Alert != c.alert):
				t.Fatalf("%v: want an *AlertError with alert %d", err, c.alert)
			}
			if _, ok := remoteAlert(err); !ok && c.alert != 0 {
				t.Fatalf("%v: no remote alert found", err)
			}
		})
	}
}

// recorder is an Observer that keeps what it is told.
type recorder struct {
	mu        sync.Mutex
	published []string
	unacked   []string
	received  []string
	ended     []error
	endedN    int
}

func (r *recorder) Published(topic string, payload []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.published = append(r.published, topic+"="+string(payload))
}

func (r *recorder) Unacknowledged(topic string, payload []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.unacked = append(r.unacked, topic+"="+string(payload))
}

func (r *recorder) Received(topic string, payload []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.received = append(r.received, topic+"="+string(payload))
}

func (r *recorder) Ended(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ended = append(r.ended, err)
	r.endedN++
}

// TestDialAndObserver: Config.Dial opens the connection (here from
// another loopback source address, as a simulator spreads its devices);
// the Observer hears of acknowledged publishes as published, of one
// without PUBACK as unacknowledged, and of the end: nil
// for Close, the cause for a connection lost.
func TestDialAndObserver(t *testing.T) {
	f := startFake(t)
	local := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}
	var dialed atomic.Int32
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		dialed.Add(1)
		return (&net.Dialer{LocalAddr: local}).DialContext(ctx, network, addr)
	}
	for _, lost := range []bool{false, true} {
		rec := &recorder{}
		c, fc, _ := f.dial(t, Config{ClientID: "obs", Dial: dial, Observer: rec, Timeout: 5 * time.Second})
		if got := fc.c.RemoteAddr().(*net.TCPAddr).IP; !got.Equal(local.IP) {
			t.Fatalf("the broker sees the client at %v, want %v", got, local.IP)
		}
		errc := make(chan error, 1)
		go func() { errc <- c.Publish(context.Background(), "a/b", []byte("one")) }()
		p := fc.read()
		rec.mu.Lock()
		early := len(rec.published)
		rec.mu.Unlock()
		if early != 0 {
			t.Fatal("a publish was reported before its PUBACK")
		}
		fc.send(packet.Packet{Type: packet.Puback, ID: p.ID})
		if err := wait.Recv(t, errc, "Publish"); err != nil {
			t.Fatal(err)
		}
		got := make(chan string, 1)
		subErr := make(chan error, 1)
		go func() {
			subErr <- c.Subscribe(context.Background(), "down/#", func(topic string, payload []byte) { got <- topic + "=" + string(payload) })
		}()
		sub := fc.read()
		fc.send(packet.Packet{Type: packet.Suback, ID: sub.ID, Codes: []byte{1}})
		if err := wait.Recv(t, subErr, "Subscribe"); err != nil {
			t.Fatal(err)
		}
		fc.send(packet.Packet{Type: packet.Publish, Topic: "down/x", Payload: []byte("two")})
		if m := wait.Recv(t, got, "the subscription's message"); m != "down/x=two" {
			t.Fatalf("handler got %q", m)
		}
		if lost {
			// A publish the broker received but never acknowledged.
			go func() { errc <- c.Publish(context.Background(), "a/c", []byte("three")) }()
			fc.read()
			fc.c.Close()
			if err := wait.Recv(t, errc, "Publish"); err == nil {
				t.Fatal("a publish without PUBACK succeeded")
			}
			expectDone(t, c, 2*time.Second, "the broker closed the connection")
		} else {
			c.Close()
		}
		waitStopped(t, c)
		rec.mu.Lock()
		if fmt.Sprint(rec.published) != "[a/b=one]" || fmt.Sprint(rec.received) != "[down/x=two]" || rec.endedN != 1 || (rec.ended[0] != nil) != lost {
			t.Errorf("lost %v: published %q, received %q, ended %v", lost, rec.published, rec.received, rec.ended)
		}
		if want := map[bool]string{false: "[]", true: "[a/c=three]"}[lost]; fmt.Sprint(rec.unacked) != want {
			t.Errorf("lost %v: unacknowledged %q, want %s", lost, rec.unacked, want)
		}
		rec.mu.Unlock()
	}
	if dialed.Load() != 2 {
		t.Fatalf("Config.Dial called %d times, want 2", dialed.Load())
	}
}
