package broker

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	polling "github.com/sigil-iot/sigil/internal/wait" // this package has a func wait
)

const (
	devA = "0123456789abcdef0123456789abcdef"
	devB = "fedcba9876543210fedcba9876543210"
)

func TestDevicePublishesToOwnUpTopic(t *testing.T) {
	e := startBroker(t, nil)
	got := e.fleetSub(t, topics.Filter("dev", "+", "up"))
	certA := e.ca.device(t, devA)
	a := e.mustClient(t, devA, &certA)

	wait(t, a.Publish(topics.DeviceUp(devA, "hello"), 1, false, "hi"))
	m := polling.Recv(t, got, "fleet message")
	if m.id.DeviceID != devA || m.id.ClientID != devA || m.id.Cert == nil || m.id.Fleet {
		t.Fatalf("identity = %+v, want device %s with certificate", m.id, devA)
	}
	if m.id.Cert.SerialNumber.Cmp(certA.tls.Leaf.SerialNumber) != 0 {
		t.Fatal("identity carries another certificate")
	}
	if m.topic != topics.DeviceUp(devA, "hello") || m.payload != "hi" {
		t.Fatalf("got %+v", m)
	}
	if !e.b.Connected(devA) || e.b.Connected(devB) {
		t.Fatal("Connected disagrees")
	}
	st := e.b.Stats()
	if st.Connections != 1 || st.DeviceConnections != 1 || st.BootstrapConnections != 0 {
		t.Fatalf("stats = %+v", st)
	}
}

// TestRestrictedAccess: a device admitted with Access.UpKinds (quarantine)
// may publish only those kinds; anything else disconnects it.
func TestRestrictedAccess(t *testing.T) {
	e := startBroker(t, func(c *Config) {
		c.Gate = GateFunc(func(string, *x509.Certificate) (Access, error) { return Access{UpKinds: []string{"attest"}}, nil })
	})
	got := e.fleetSub(t, topics.Filter("dev", "+", "up"))
	certA := e.ca.device(t, devA)
	lost := make(chan struct{})
	a, err := e.client(t, devA, &certA, func(o *paho.ClientOptions) {
		o.SetConnectionLostHandler(func(paho.Client, error) { close(lost) })
	})
	if err != nil {
		t.Fatal(err)
	}
	wait(t, a.Publish(topics.DeviceUp(devA, "attest"), 1, false, "evidence"))
	if m := polling.Recv(t, got, "attest message"); m.payload != "evidence" || m.id.DeviceID != devA {
		t.Fatalf("got %+v", m)
	}
	a.Publish(topics.DeviceUp(devA, "telemetry"), 1, false, "not now").WaitTimeout(2 * time.Second)
	polling.Recv(t, lost, "restricted device to be disconnected")
	expectNone(t, got, 200*time.Millisecond, "telemetry from a restricted device")
}

func TestDevicePublishToOtherDeviceIsDroppedAndDisconnects(t *testing.T) {
	for _, qos := range []byte{0, 1} {
		t.Run(fmt.Sprintf("qos%d", qos), func(t *testing.T) {
			e := startBroker(t, nil)
			got := e.fleetSub(t, "#")
			certA, certB := e.ca.device(t, devA), e.ca.device(t, devB)
			lost := make(chan struct{})
			a, err := e.client(t, devA, &certA, func(o *paho.ClientOptions) {
				o.SetConnectionLostHandler(func(paho.Client, error) { close(lost) })
			})
			if err != nil {
				t.Fatal(err)
			}
			b := e.mustClient(t, devB, &certB)

			a.Publish(topics.DeviceUp(devB, "telemetry"), qos, false, "forged").WaitTimeout(2 * time.Second)
			polling.Recv(t, lost, "A to be disconnected")
			if e.b.Stats().ACLDenials == 0 {
				t.Fatal("denial not counted")
			}
			// Control: B's own message arrives, and nothing forged came before it.
			wait(t, b.Publish(topics.DeviceUp(devB, "telemetry"), 1, false, "real"))
			m := polling.Recv(t, got, "B's message")
			if m.payload != "real" || m.id.DeviceID != devB {
				t.Fatalf("fleet got %+v, want only B's real message", m)
			}
			expectNone(t, got, 200*time.Millisecond, "fleet message")
		})
	}
}

func TestForbiddenPublishTopics(t *testing.T) {
	e := startBroker(t, nil)
	got := e.fleetSub(t, "#")
	certA := e.ca.device(t, devA)
	for _, topic := range []string{
		"other/tree",
		topics.DeviceDown(devA, "x"),
		topics.EnrollUp(devA, "request"),
		topics.DeviceUp(devA, "x") + "/extra",
		"sigil/v1/dev/" + devA + "/up",
	} {
		lost := make(chan struct{})
		a, err := e.client(t, devA, &certA, func(o *paho.ClientOptions) {
			o.SetConnectionLostHandler(func(paho.Client, error) { close(lost) })
		})
		if err != nil {
			t.Fatal(err)
		}
		a.Publish(topic, 1, false, "x").WaitTimeout(2 * time.Second)
		select {
		case <-lost:
		case <-time.After(5 * time.Second):
			t.Fatalf("publish to %q: client not disconnected", topic)
		}
	}
	// '$' topics are dropped by mochi before the hook: not delivered either.
	sys := e.fleetSub(t, "$SYS/broker/x")
	a := e.mustClient(t, devA, &certA)
	wait(t, a.Publish("$SYS/broker/x", 0, false, "x")) // QoS 0: mochi sends no PUBACK for it
	expectNone(t, got, 200*time.Millisecond, "fleet message")
	expectNone(t, sys, 0, "$SYS message")
}

func TestDeviceSubscriptions(t *testing.T) {
	e := startBroker(t, nil)
	certA := e.ca.device(t, devA)
	a := e.mustClient(t, devA, &certA)
	recv := make(chan string, 10)
	h := func(_ paho.Client, m paho.Message) { recv <- m.Topic() }

	for _, f := range []string{
		topics.DeviceDown(devB, "cmd"),
		topics.Filter("dev", devB, "down"),
		topics.Filter("dev", "+", "down"),
		"sigil/v1/dev/#",
		"#",
		"$SYS/#",
		topics.DeviceUp(devA, "hello"),
		topics.EnrollDown(devA, "result"),
		topics.DeviceDown(devA, "cmd") + "/x",
		"sigil/v1/dev/" + devA + "/+/cmd",
		"$share/g/" + topics.DeviceDown(devB, "cmd"),
		"$share/g/#",
	} {
		if code := subCode(t, a.Subscribe(f, 1, h)); code != 0x80 {
			t.Errorf("subscribe %q: SUBACK code %#x, want 0x80", f, code)
		}
	}
	for _, f := range []string{topics.Filter("dev", devA, "down"), "sigil/v1/dev/" + devA + "/down/+", topics.DeviceDown(devA, "cmd")} {
		if code := subCode(t, a.Subscribe(f, 1, h)); code != 1 {
			t.Errorf("subscribe %q: SUBACK code %#x, want 1", f, code)
		}
	}
	if err := e.b.Publish(topics.DeviceDown(devB, "cmd"), []byte("for B"), 1); err != nil {
		t.Fatal(err)
	}
	if err := e.b.Publish(topics.DeviceDown(devA, "cmd"), []byte("for A"), 1); err != nil {
		t.Fatal(err)
	}
	if got := polling.Recv(t, recv, "A's message"); got != topics.DeviceDown(devA, "cmd") {
		t.Fatalf("A received %s", got)
	}
	for {
		select {
		case got := <-recv:
			if got != topics.DeviceDown(devA, "cmd") {
				t.Fatalf("A received %s", got)
			}
			continue
		case <-time.After(300 * time.Millisecond):
		}
		break
	}
}

func TestClientIDMustMatchCertificate(t *testing.T) {
	e := startBroker(t, nil)
	certA := e.ca.device(t, devA)
	if _, err := e.client(t, devB, &certA, nil); err == nil {
		t.Fatal("device A connected with client ID B")
	}
	if _, err := e.client(t, "boot-1", &certA, nil); err == nil {
		t.Fatal("device A connected with a bootstrap client ID")
	}
	if e.b.Stats().AuthRefusals != 2 {
		t.Fatalf("stats = %+v", e.b.Stats())
	}
	ev := polling.Recv(t, e.events, "refused event")
	if ev.Kind != Refused || ev.Identity.DeviceID != devA {
		t.Fatalf("event = %+v", ev)
	}
}

func TestCertificateFromAnotherCARefused(t *testing.T) {
	e := startBroker(t, nil)
	other := newCA(t, "other")
	forged := other.device(t, devA)
	if _, err := e.client(t, devA, &forged, nil); err == nil {
		t.Fatal("certificate from another CA accepted")
	}
	eventually(t, "handshake failure counted", func() bool { return e.b.Stats().HandshakeFailures > 0 })
	if e.b.Connected(devA) {
		t.Fatal("device connected")
	}
}

func TestCertificateWithoutDeviceIdentityRefused(t *testing.T) {
	e := startBroker(t, nil)
	// Chains to the CA but names no device of this trust domain.
	c := e.ca.issue(t, &x509.Certificate{
		Subject:     pkix.Name{CommonName: devA},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if _, err := e.client(t, devA, &c, nil); err == nil {
		t.Fatal("certificate without SPIFFE ID accepted")
	}
}

func TestBootstrapClientIDsRefused(t *testing.T) {
	e := startBroker(t, nil)
	for _, id := range []string{"a+b", "#", "+", "a/b", "$SYS", "", "inline", "UPPER", strings.Repeat("a", 65)} {
		if c, err := e.client(t, id, nil, nil); err == nil {
			c.Disconnect(0)
			t.Errorf("bootstrap client ID %q accepted", id)
		}
	}
}

func TestBootstrapCannotTakeConnectedDeviceID(t *testing.T) {
	e := startBroker(t, nil)
	certA := e.ca.device(t, devA)
	lost := make(chan struct{})
	if _, err := e.client(t, devA, &certA, func(o *paho.ClientOptions) {
		o.SetConnectionLostHandler(func(paho.Client, error) { close(lost) })
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.client(t, devA, nil, nil); err == nil {
		t.Fatal("bootstrap client took a connected device's ID")
	}
	expectNone(t, lost, 200*time.Millisecond, "device disconnect")
}

func TestSessionNotInheritedAcrossIdentities(t *testing.T) {
	e := startBroker(t, nil)
	certA := e.ca.device(t, devA)
	// Device A leaves a persistent session subscribed to its down topics.
	a, err := e.client(t, devA, &certA, func(o *paho.ClientOptions) { o.SetCleanSession(false) })
	if err != nil {
		t.Fatal(err)
	}
	wait(t, a.Subscribe(topics.Filter("dev", devA, "down"), 1, nil))
	a.Disconnect(50)
	eventually(t, "A gone", func() bool { return !e.b.Connected(devA) })

	// An anonymous client takes the ID: it must not inherit A's subscription.
	recv := make(chan string, 10)
	_, err = e.client(t, devA, nil, func(o *paho.ClientOptions) {
		o.SetCleanSession(false)
		o.SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { recv <- m.Topic() })
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.b.Publish(topics.DeviceDown(devA, "secret"), []byte("x"), 1); err != nil {
		t.Fatal(err)
	}
	expectNone(t, recv, 300*time.Millisecond, "message for A")
}

func TestDisconnectAndGate(t *testing.T) {
	var refuse atomic.Bool
	e := startBroker(t, func(c *Config) {
		c.Gate = GateFunc(func(id string, cert *x509.Certificate) (Access, error) {
			if cert == nil || id != devA {
				return Access{}, errors.New("unexpected gate call")
			}
			if refuse.Load() {
				return Access{}, errors.New("decommissioned")
			}
			return Access{}, nil
		})
	})
	certA := e.ca.device(t, devA)
	lost := make(chan struct{})
	if _, err := e.client(t, devA, &certA, func(o *paho.ClientOptions) {
		o.SetConnectionLostHandler(func(paho.Client, error) { close(lost) })
	}); err != nil {
		t.Fatal(err)
	}
	if ev := polling.Recv(t, e.events, "connected event"); ev.Kind != Connected || ev.Identity.DeviceID != devA {
		t.Fatalf("event = %+v", ev)
	}
	refuse.Store(true)
	e.b.Disconnect(devA)
	polling.Recv(t, lost, "device kicked")
	if ev := polling.Recv(t, e.events, "disconnected event"); ev.Kind != Disconnected || ev.Identity.DeviceID != devA {
		t.Fatalf("event = %+v", ev)
	}
	eventually(t, "not connected", func() bool { return !e.b.Connected(devA) })
	if _, err := e.client(t, devA, &certA, nil); err == nil {
		t.Fatal("gate did not block reconnect")
	}
	ev := polling.Recv(t, e.events, "refused event")
	if ev.Kind != Refused || !strings.Contains(ev.Reason, "decommissioned") {
		t.Fatalf("event = %+v", ev)
	}
	refuse.Store(false)
	e.mustClient(t, devA, &certA)
}

func TestWillAndRetain(t *testing.T) {
	e := startBroker(t, nil)
	got := e.fleetSub(t, topics.Filter("dev", "+", "up"))
	certA := e.ca.device(t, devA)
	for _, w := range []struct {
		topic  string
		retain bool
	}{{topics.DeviceUp(devB, "gone"), false}, {"other", false}, {topics.DeviceUp(devA, "gone"), true}} {
		if _, err := e.client(t, devA, &certA, func(o *paho.ClientOptions) { o.SetWill(w.topic, "bye", 1, w.retain) }); err == nil {
			t.Errorf("will %+v accepted", w)
		}
	}
	// A will on its own up topic is allowed and reaches the fleet with A's identity.
	var raw net.Conn
	a, err := e.client(t, devA, &certA, func(o *paho.ClientOptions) {
		o.SetWill(topics.DeviceUp(devA, "gone"), "bye", 1, false)
		o.SetCustomOpenConnectionFn(func(_ *url.URL, o paho.ClientOptions) (net.Conn, error) {
			c, err := tls.Dial("tcp", e.addr, o.TLSConfig)
			raw = c
			return c, err
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	// Retained publishes are not retained.
	wait(t, a.Publish(topics.DeviceUp(devA, "state"), 1, true, "r"))
	polling.Recv(t, got, "state")
	if n := len(e.b.srv.Topics.Messages("sigil/#")); n != 0 {
		t.Fatalf("%d retained messages", n)
	}
	_ = raw.Close() // an unclean end sends the will
	m := polling.Recv(t, got, "will")
	if m.topic != topics.DeviceUp(devA, "gone") || m.id.DeviceID != devA {
		t.Fatalf("will = %+v", m)
	}
}

// TestBootstrapCap: never more than MaxBootstrapClients bootstrap
// connections are open; a new one takes the place of the least active
// (TestBootstrapEvictsLeastActive). Devices are not capped.
func TestBootstrapCap(t *testing.T) {
	e := startBroker(t, func(c *Config) { c.MaxBootstrapClients, c.BootstrapDisplaceIdle = 1, time.Nanosecond })
	first := e.mustClient(t, "boot-1", nil)
	second := e.mustClient(t, "boot-2", nil)
	gone(t, first, "the first bootstrap client to make room")
	eventually(t, "the first connection's slot to be released", func() bool { return e.b.Stats().BootstrapConnections == 1 })
	if st := e.b.Stats(); st.BootstrapOverCap != 1 || !second.IsConnectionOpen() {
		t.Fatalf("stats = %+v", st)
	}
	certA := e.ca.device(t, devA)
	e.mustClient(t, devA, &certA) // devices are not capped
}

// TestBootstrapCapPerSource: one address holds at most
// MaxBootstrapPerSource bootstrap connections, and its newcomers displace
// its own connections, not other addresses'.
func TestBootstrapCapPerSource(t *testing.T) {
	e := startBroker(t, func(c *Config) { c.MaxBootstrapPerSource, c.BootstrapDisplaceIdle = 2, time.Nanosecond })
	other := e.mustClientWith(t, "boot-other", fromLocal("127.0.0.2"))
	var mine []paho.Client
	for i := range 5 {
		mine = append(mine, e.mustClient(t, fmt.Sprintf("boot-%d", i), nil))
	}
	for i, c := range mine[:3] {
		gone(t, c, fmt.Sprintf("connection %d of the address to make room", i))
	}
	eventually(t, "the displaced connections' slots to be released", func() bool { return e.b.Stats().BootstrapConnections == 3 })
	if !other.IsConnectionOpen() || !mine[3].IsConnectionOpen() || !mine[4].IsConnectionOpen() {
		t.Fatal("a connection within the caps was closed")
	}
}

func TestBootstrapRefusedWhenDisabled(t *testing.T) {
	e := startBroker(t, func(c *Config) { c.AllowBootstrap = false })
	if _, err := e.client(t, "boot-1", nil, nil); err == nil {
		t.Fatal("bootstrap client accepted")
	}
	certA := e.ca.device(t, devA)
	e.mustClient(t, devA, &certA)
}

// flakyListener fails its first n accepts the way an exhausted process does.
type flakyListener struct {
	net.Listener
	fail atomic.Int32
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if l.fail.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: syscall.EMFILE}
	}
	return l.Listener.Accept()
}

func TestAcceptLoopSurvivesErrors(t *testing.T) {
	ca := newCA(t, "sigil")
	srv := ca.server(t)
	b, err := New(Config{
		Addr:           "127.0.0.1:0",
		TLS:            &tls.Config{Certificates: []tls.Certificate{srv.tls}},
		ClientCAs:      ca.Pool,
		TrustDomain:    trustDomain,
		AllowBootstrap: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	b.ln.listen = func(network, addr string) (net.Listener, error) {
		ln, err := net.Listen(network, addr)
		if err != nil {
			return nil, err
		}
		fl := &flakyListener{Listener: ln}
		fl.fail.Store(5)
		return fl, nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- b.Run(ctx) }()
	e := &env{ca: ca, srv: srv, b: b, addr: b.Addr().String()}
	e.mustClient(t, "boot-1", nil)
	if n := b.Stats().AcceptErrors; n != 5 {
		t.Fatalf("accept errors = %d, want 5", n)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestBootstrapWithMosquitto(t *testing.T) {
	pub, sub := needTool(t, "mosquitto_pub"), needTool(t, "mosquitto_sub")
	e := startBroker(t, nil)
	host, port, _ := net.SplitHostPort(e.addr)
	base := []string{"-h", host, "-p", port, "--cafile", e.ca.pem, "-V", "mqttv311"}
	got := e.fleetSub(t, "#")

	// Publish to its own enrollment topic: the fleet sees the client ID, no device.
	out, err := exec.Command(pub, append(base, "-i", "boot-7", "-q", "1", "-t", topics.EnrollUp("boot-7", "request"), "-m", "req")...).CombinedOutput()
	if err != nil {
		t.Fatalf("mosquitto_pub: %v: %s", err, out)
	}
	m := polling.Recv(t, got, "enrollment request")
	if m.id.ClientID != "boot-7" || m.id.DeviceID != "" || m.id.Cert != nil || m.payload != "req" {
		t.Fatalf("got %+v", m)
	}
	// Someone else's enrollment topic and a device topic: never delivered.
	for _, topic := range []string{topics.EnrollUp("boot-8", "request"), topics.DeviceUp(devA, "hello")} {
		_ = exec.Command(pub, append(base, "-i", "boot-7", "-q", "1", "-t", topic, "-m", "forged")...).Run()
	}
	expectNone(t, got, 300*time.Millisecond, "forged message")

	// A bootstrap client ID that could widen a filter is refused.
	for _, id := range []string{"a+b", "#"} {
		out, err := exec.Command(pub, append(base, "-i", id, "-t", topics.EnrollUp("x", "request"), "-m", "x")...).CombinedOutput()
		if err == nil {
			t.Errorf("mosquitto_pub -i %q succeeded: %s", id, out)
		}
	}

	// Subscribing to its own enrollment answers works...
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var own bytes.Buffer
	cmd := exec.CommandContext(ctx, sub, append(base, "-i", "boot-7", "-q", "1", "-C", "1", "-t", topics.Filter("enroll", "boot-7", "down"))...)
	cmd.Stdout, cmd.Stderr = &own, &own
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "subscriber connected", func() bool {
		return e.b.srv.Topics.Subscribers(topics.EnrollDown("boot-7", "result")).Subscriptions["boot-7"].Filter != ""
	})
	if err := e.b.Publish(topics.EnrollDown("boot-8", "result"), []byte("not yours"), 1); err != nil {
		t.Fatal(err)
	}
	if err := e.b.Publish(topics.EnrollDown("boot-7", "result"), []byte("yours"), 1); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("mosquitto_sub: %v: %s", err, own.String())
	}
	if strings.TrimSpace(own.String()) != "yours" {
		t.Fatalf("mosquitto_sub got %q", own.String())
	}

	// ...someone else's is refused and receives nothing.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel2()
	var other bytes.Buffer
	cmd = exec.CommandContext(ctx2, sub, append(base, "-i", "boot-9", "-q", "1", "-v", "-t", topics.Filter("enroll", "boot-7", "down"), "-t", topics.Filter("dev", devA, "down"))...)
	cmd.Stdout, cmd.Stderr = &other, &other
	err = cmd.Start()
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "subscription refused", func() bool { return e.b.Stats().ACLDenials >= 2 })
	_ = e.b.Publish(topics.EnrollDown("boot-7", "result"), []byte("leak"), 1)
	_ = e.b.Publish(topics.DeviceDown(devA, "cmd"), []byte("leak"), 1)
	_ = cmd.Wait()
	if strings.Contains(other.String(), "leak") {
		t.Fatalf("mosquitto_sub received another client's messages: %q", other.String())
	}
	if !strings.Contains(other.String(), "denied") {
		t.Errorf("mosquitto_sub did not report the denial: %q", other.String())
	}
}

func TestDeviceWithMosquitto(t *testing.T) {
	sub := needTool(t, "mosquitto_sub")
	pub := needTool(t, "mosquitto_pub")
	e := startBroker(t, nil)
	host, port, _ := net.SplitHostPort(e.addr)
	certA := e.ca.device(t, devA)
	base := []string{"-h", host, "-p", port, "--cafile", e.ca.pem, "--cert", certA.certPath, "--key", certA.keyPath, "-V", "mqttv311", "-q", "1"}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, sub, append(base, "-i", devA, "-C", "1", "-v", "-t", topics.Filter("dev", devA, "down"))...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "device connected", func() bool {
		return e.b.Connected(devA) && len(e.b.srv.Topics.Subscribers(topics.DeviceDown(devA, "cmd")).Subscriptions) == 1
	})
	if err := e.b.Publish(topics.DeviceDown(devA, "cmd"), []byte("reboot"), 1); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("mosquitto_sub: %v: %s", err, out.String())
	}
	if want := topics.DeviceDown(devA, "cmd") + " reboot"; strings.TrimSpace(out.String()) != want {
		t.Fatalf("mosquitto_sub got %q, want %q", out.String(), want)
	}

	// mosquitto_pub with the device certificate but another client ID is refused.
	o, err := exec.Command(pub, append(base, "-i", devB, "-t", topics.DeviceUp(devB, "x"), "-m", "x")...).CombinedOutput()
	if err == nil {
		t.Fatalf("mosquitto_pub with a foreign client ID succeeded: %s", o)
	}
}

// TestClaimAndBootstrapCredential: a claim certificate makes a bootstrap
// client, never a device; BootstrapAuth sees the claim and the MQTT
// password and refuses clients without a credential.
func TestClaimAndBootstrapCredential(t *testing.T) {
	claimCA := newCA(t, "claim")
	var seen struct {
		sync.Mutex
		claims []string
	}
	e := startBroker(t, func(c *Config) {
		c.ClaimCAs = []*x509.Certificate{claimCA.Cert}
		c.BootstrapAuth = func(clientID, user string, pass []byte, claim *x509.Certificate) error {
			seen.Lock()
			defer seen.Unlock()
			if claim != nil {
				seen.claims = append(seen.claims, claim.Subject.CommonName)
				return nil
			}
			if string(pass) == "sgt_valid" {
				return nil
			}
			return errors.New("no credential")
		}
	})
	got := e.fleetSub(t, topics.Filter("enroll", "+", "up"))
	// A claim certificate: bootstrap access to its own enrollment topics only.
	claim := claimCA.device(t, devA)
	c := e.mustClient(t, "e-claimed", &claim)
	wait(t, c.Publish(topics.EnrollUp("e-claimed", "enroll"), 1, false, "hello"))
	if m := polling.Recv(t, got, "enrollment message"); m.id.DeviceID != "" || m.id.ClientID != "e-claimed" {
		t.Fatalf("claim client identity %+v", m.id)
	}
	if code := subCode(t, c.Subscribe(topics.Filter("dev", devA, "down"), 1, nil)); code != 0x80 {
		t.Fatalf("claim client subscribed to a device's topics (code %#x)", code)
	}
	// No credential: refused. A token as the password: admitted.
	if _, err := e.client(t, "e-nothing", nil, nil); err == nil {
		t.Fatal("bootstrap client without a credential admitted")
	}
	if _, err := e.client(t, "e-token", nil, func(o *paho.ClientOptions) { o.SetUsername("token").SetPassword("sgt_valid") }); err != nil {
		t.Fatalf("token client refused: %v", err)
	}
}
