package mqttpool_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/fleet/mqttpool"
	"github.com/sigil-iot/sigil/fleet/mqttpool/mosquittotest"
	"github.com/sigil-iot/sigil/internal/testenv"
	"github.com/sigil-iot/sigil/internal/wait"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// env is a fleet CA and data directory, a device broker and a bootstrap
// broker configured by mqttpool.Complete.
type env struct {
	ca        *ca.CA
	dataDir   string
	dev, boot *mosquittotest.Broker
	topics    wire.Topics
}

func newEnv(t *testing.T) *env {
	t.Helper()
	testenv.RequireBinaries(t, "mosquitto") // here too: scripts/tiers reads the test files
	dataDir := t.TempDir()
	c, err := ca.Open(ca.Config{Dir: filepath.Join(dataDir, "ca"), TrustDomain: "pool.test"})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{ca: c, dataDir: dataDir}
	for _, role := range []string{mqttpool.RoleDevice, mqttpool.RoleBootstrap} {
		m := mqttpool.Member{Role: role, Topics: e.topics, MaxConnections: 64}
		if role == mqttpool.RoleDevice {
			m.DynsecPlugin = mosquittotest.DynsecPlugin(t)
		}
		m, err := mqttpool.Complete(c, dataDir, m, []string{"127.0.0.1"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		b := mosquittotest.Start(t, m)
		if role == mqttpool.RoleDevice {
			e.dev = b
		} else {
			e.boot = b
		}
	}
	return e
}

// pool runs a pool of the env's brokers with the fleet's credentials
// (password overrides them when set) until the test ends.
func (e *env) pool(t *testing.T, password string, onDev, onEnroll func(mqttpool.Message)) *mqttpool.Pool {
	t.Helper()
	secret, err := mqttpool.Secret(e.dataDir)
	if err != nil {
		t.Fatal(err)
	}
	if password != "" {
		secret = password
	}
	p, err := mqttpool.New(mqttpool.Config{Devices: []string{e.dev.FleetAddr}, Bootstrap: []string{e.boot.FleetAddr},
		Username: mqttpool.Username, Password: secret, TLS: &tls.Config{RootCAs: e.ca.Pool()}, Topics: e.topics})
	if err != nil {
		t.Fatal(err)
	}
	if onDev != nil {
		if err := p.Subscribe(wire.SegDevice, onDev); err != nil {
			t.Fatal(err)
		}
	}
	if onEnroll != nil {
		if err := p.Subscribe(wire.SegEnroll, onEnroll); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = p.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return p
}

// deviceClient connects to the device broker with a certificate the
// fleet CA issued to id, under the client ID clientID.
func (e *env) deviceClient(t *testing.T, id, clientID string) mqtt.Client {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := e.ca.IssueDevice(id, key.Public(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return e.client(t, e.dev.Addr, clientID, &tls.Config{RootCAs: e.ca.Pool(),
		Certificates: []tls.Certificate{{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}}})
}

func (e *env) client(t *testing.T, addr, clientID string, cfg *tls.Config) mqtt.Client {
	t.Helper()
	o := mqtt.NewClientOptions().AddBroker("tls://" + addr).SetClientID(clientID).SetTLSConfig(cfg).
		SetProtocolVersion(4).SetAutoReconnect(false).SetCleanSession(true)
	c := mqtt.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect to %s as %s: %v", addr, clientID, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

// inbox collects messages.
type inbox struct {
	mu   sync.Mutex
	msgs []mqttpool.Message
}

func (b *inbox) add(m mqttpool.Message) { b.mu.Lock(); b.msgs = append(b.msgs, m); b.mu.Unlock() }

func (b *inbox) has(id, kind string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, m := range b.msgs {
		if m.Topic.ID == id && m.Topic.Kind == kind {
			return true
		}
	}
	return false
}

func publish(t *testing.T, c mqtt.Client, topic, payload string) {
	t.Helper()
	if tok := c.Publish(topic, 1, false, payload); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish %s: %v", topic, tok.Error())
	}
}

func subscribe(t *testing.T, c mqtt.Client, filter string, got chan<- string) {
	t.Helper()
	tok := c.Subscribe(filter, 1, func(_ mqtt.Client, m mqtt.Message) { got <- m.Topic() })
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe %s: %v", filter, tok.Error())
	}
}

// TestPoolIdentityFromTheBroker: through real Mosquitto brokers configured
// by mqttpool.Complete, the pool receives a device's messages on its own
// topics with the ID its certificate names, whatever client ID it asked
// for; a message on another device's topic never reaches the fleet; a
// message the fleet publishes reaches the device it names only; a
// bootstrap client is bound to the enroll topics of its client ID.
func TestPoolIdentityFromTheBroker(t *testing.T) {
	e := newEnv(t)
	var devs, enrolls inbox
	p := e.pool(t, "", devs.add, enrolls.add)
	wait.For(t, "the pool to subscribe on both brokers", p.Ready)

	a := e.deviceClient(t, "deva", "devb") // asks for another device's client ID
	b := e.deviceClient(t, "devb", "devb-x")
	gotA, gotB := make(chan string, 8), make(chan string, 8)
	subscribe(t, a, e.topics.Filter(wire.SegDevice, "deva", wire.Down), gotA)
	subscribe(t, a, e.topics.Filter(wire.SegDevice, "devb", wire.Down), gotA) // granted, never delivered
	subscribe(t, b, e.topics.Filter(wire.SegDevice, "devb", wire.Down), gotB)

	publish(t, a, e.topics.DeviceUp("devb", "hello"), "forged") // dropped by the ACL
	publish(t, a, e.topics.DeviceUp("deva", "hello"), "real")
	wait.For(t, "deva's hello at the fleet", func() bool { return devs.has("deva", "hello") })
	publish(t, b, e.topics.DeviceUp("devb", "attest"), "real")
	wait.For(t, "devb's attest at the fleet", func() bool { return devs.has("devb", "attest") })
	if devs.has("devb", "hello") {
		t.Fatal("the fleet received a hello on devb's topic that deva sent")
	}

	// The fleet shares the subscription: it is a competing consumer,
	// and sends down to every broker.
	mustPublish(t, p, e.topics.DeviceDown("devb", "nonce"))
	if got := <-gotB; got != e.topics.DeviceDown("devb", "nonce") {
		t.Fatalf("devb received %q", got)
	}
	mustPublish(t, p, e.topics.DeviceDown("deva", "nonce"))
	if got := <-gotA; got != e.topics.DeviceDown("deva", "nonce") {
		t.Fatalf("deva received %q (devb's message must never reach it)", got)
	}

	// A bootstrap client: its client ID is its identity.
	boot := e.client(t, e.boot.Addr, "e-0123456789abcdef-1", &tls.Config{RootCAs: e.ca.Pool()})
	gotBoot := make(chan string, 4)
	subscribe(t, boot, e.topics.Filter(wire.SegEnroll, "e-0123456789abcdef-1", wire.Down), gotBoot)
	publish(t, boot, e.topics.EnrollUp("e-other-1", "enroll"), "forged")
	publish(t, boot, e.topics.EnrollUp("e-0123456789abcdef-1", "enroll"), "real")
	wait.For(t, "the enrollment at the fleet", func() bool { return enrolls.has("e-0123456789abcdef-1", "enroll") })
	if enrolls.has("e-other-1", "enroll") {
		t.Fatal("the fleet received an enrollment on another client's topic")
	}
	mustPublish(t, p, e.topics.EnrollDown("e-0123456789abcdef-1", "challenge"))
	if got := <-gotBoot; got != e.topics.EnrollDown("e-0123456789abcdef-1", "challenge") {
		t.Fatalf("bootstrap client received %q", got)
	}
	if err := p.Publish(e.topics.DeviceUp("deva", "hello"), nil, 1); err == nil {
		t.Fatal("the pool published on an up topic")
	}
}

// mustPublish publishes from the fleet.
func mustPublish(t *testing.T, p *mqttpool.Pool, topic string) {
	t.Helper()
	if err := p.Publish(topic, []byte("x"), 1); err != nil {
		t.Fatal(err)
	}
}

// TestPoolRefusesWrongPassword: the brokers' fleet listeners take the
// fleet's password only (the generated hash is the one Mosquitto checks).
func TestPoolRefusesWrongPassword(t *testing.T) {
	e := newEnv(t)
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker("tls://" + e.dev.FleetAddr).SetClientID("x").
		SetUsername(mqttpool.Username).SetPassword("wrong").SetTLSConfig(&tls.Config{RootCAs: e.ca.Pool()}).SetProtocolVersion(4))
	tok := c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		t.Fatal("no CONNACK")
	}
	if tok.Error() == nil {
		c.Disconnect(0)
		t.Fatal("the device broker's fleet listener took a wrong password")
	}
	secret, err := mqttpool.Secret(e.dataDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, addr := range []string{e.dev.FleetAddr, e.boot.FleetAddr} {
		c = mqtt.NewClient(mqtt.NewClientOptions().AddBroker("tls://" + addr).SetClientID("y").
			SetUsername(mqttpool.Username).SetPassword(secret).SetTLSConfig(&tls.Config{RootCAs: e.ca.Pool()}).SetProtocolVersion(4))
		if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("fleet credentials refused by %s: %v", addr, tok.Error())
		}
		c.Disconnect(0)
	}
}

// TestMemberRefusesBadInput: a configuration that would not be what it
// claims is refused with ErrConfig.
func TestMemberRefusesBadInput(t *testing.T) {
	ok := mqttpool.Member{Role: mqttpool.RoleDevice, Dir: "/etc/mosquitto/sigil", Listen: ":8883", FleetListen: "10.0.0.1:8884",
		Username: "sigil-fleet", Password: "p", CAPEM: []byte("c"), CertPEM: []byte("c"), KeyPEM: []byte("k"), CRLPEM: []byte("l")}
	if _, _, err := ok.Files(); err != nil {
		t.Fatal(err)
	}
	for name, mut := range map[string]func(*mqttpool.Member){
		"role":        func(m *mqttpool.Member) { m.Role = "both" },
		"relative":    func(m *mqttpool.Member) { m.Dir = "etc" },
		"newline":     func(m *mqttpool.Member) { m.Dir = "/etc\nuser root" },
		"port":        func(m *mqttpool.Member) { m.Listen = ":99999" },
		"same":        func(m *mqttpool.Member) { m.FleetListen = m.Listen },
		"user":        func(m *mqttpool.Member) { m.Username = "a b" },
		"no password": func(m *mqttpool.Member) { m.Password = "" },
		"no crl":      func(m *mqttpool.Member) { m.CRLPEM = nil },
		"prefix":      func(m *mqttpool.Member) { m.Topics.Prefix = "a/#" },
		"connections": func(m *mqttpool.Member) { m.MaxConnections = -1 },
	} {
		m := ok
		mut(&m)
		if _, _, err := m.Files(); !errors.Is(err, mqttpool.ErrConfig) {
			t.Errorf("%s: %v, want ErrConfig", name, err)
		}
	}
}

// TestPoolKick: the fleet ends one device's session on its broker
// through the dynamic security plugin; another device's stays, and the
// kicked device may connect again with its topics as before.
func TestPoolKick(t *testing.T) {
	e := newEnv(t)
	var devs inbox
	p := e.pool(t, "", devs.add, nil)
	wait.For(t, "the pool to subscribe on both brokers", p.Ready)
	a := e.deviceClient(t, "deva", "deva")
	b := e.deviceClient(t, "devb", "devb")
	if err := p.Kick("deva"); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "deva's session to end", func() bool { return !a.IsConnectionOpen() })
	publish(t, b, e.topics.DeviceUp("devb", "hello"), "still here")
	wait.For(t, "devb's hello at the fleet", func() bool { return devs.has("devb", "hello") })
	if !b.IsConnectionOpen() {
		t.Fatal("kicking deva ended devb's session")
	}
	again := e.deviceClient(t, "deva", "deva")
	publish(t, again, e.topics.DeviceUp("deva", "hello"), "back")
	wait.For(t, "deva's hello after it came back", func() bool { return devs.has("deva", "hello") })
	if err := p.Kick("not/an-id"); err == nil {
		t.Fatal("kicked an invalid ID")
	}
}

// TestPoolReplicasCompete: two replicas' pools share the subscription,
// so each of a device's messages reaches one of them, once.
func TestPoolReplicasCompete(t *testing.T) {
	e := newEnv(t)
	var mu sync.Mutex
	seen := map[string]int{}
	count := func(m mqttpool.Message) { mu.Lock(); seen[string(m.Payload)]++; mu.Unlock() }
	p1 := e.pool(t, "", count, nil)
	p2 := e.pool(t, "", count, nil)
	wait.For(t, "both replicas to subscribe", func() bool { return p1.Ready() && p2.Ready() })
	a := e.deviceClient(t, "deva", "deva")
	const n = 40
	for i := 0; i < n; i++ {
		publish(t, a, e.topics.DeviceUp("deva", "telemetry"), fmt.Sprint(i))
	}
	wait.For(t, "every message at the fleet", func() bool { mu.Lock(); defer mu.Unlock(); return len(seen) == n })
	mu.Lock()
	defer mu.Unlock()
	for k, v := range seen {
		if v != 1 {
			t.Errorf("message %s handled %d times", k, v)
		}
	}
}

// TestPoolStopsWithBrokersDown: Run returns when its context ends even
// while a broker cannot be reached, and leaves nothing running (TestMain
// checks): the connection retries stop too.
func TestPoolStopsWithBrokersDown(t *testing.T) {
	addr := fmt.Sprintf("127.0.0.1:%d", mosquittotest.FreePort(t)) // nothing listens
	p, err := mqttpool.New(mqttpool.Config{Devices: []string{addr}, Username: "u", Password: "p", TLS: &tls.Config{}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	wait.For(t, "the pool to know its broker", func() bool { _, all := p.Connected(); return all == 1 })
	if p.Ready() {
		t.Fatal("ready without a broker")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := p.Publish(wire.Topics{}.DeviceDown("deva", "x"), nil, 1); !errors.Is(err, mqttpool.ErrNotConnected) {
		t.Fatalf("publish with no broker: %v", err)
	}
}

// TestPoolQuarantine: a quarantined device's session ends; when it comes
// back it may publish on the kinds it was left, not on the others, and
// still receives its down messages; another device is not limited;
// released, it publishes everything again.
func TestPoolQuarantine(t *testing.T) {
	e := newEnv(t)
	var devs inbox
	p := e.pool(t, "", devs.add, nil)
	wait.For(t, "the pool to subscribe on both brokers", p.Ready)
	a := e.deviceClient(t, "deva", "deva")
	if err := p.Quarantine("deva", []string{"attest", "hello"}); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "deva's session to end", func() bool { return !a.IsConnectionOpen() })

	a = e.deviceClient(t, "deva", "deva")
	got := make(chan string, 8)
	subscribe(t, a, e.topics.Filter(wire.SegDevice, "deva", wire.Down), got)
	publish(t, a, e.topics.DeviceUp("deva", "telemetry"), "t1") // PUBACKed and dropped
	publish(t, a, e.topics.DeviceUp("deva", "attest"), "a1")
	wait.For(t, "deva's attestation at the fleet", func() bool { return devs.has("deva", "attest") })
	mustPublish(t, p, e.topics.DeviceDown("deva", "nonce"))
	if m := <-got; m != e.topics.DeviceDown("deva", "nonce") {
		t.Fatalf("deva received %q", m)
	}
	b := e.deviceClient(t, "devb", "devb")
	publish(t, b, e.topics.DeviceUp("devb", "telemetry"), "tb")
	wait.For(t, "devb's telemetry at the fleet", func() bool { return devs.has("devb", "telemetry") })
	// deva's telemetry went before its attestation, on one connection:
	// had it passed, it would be there by now.
	if devs.has("deva", "telemetry") {
		t.Fatal("a quarantined device's telemetry reached the fleet")
	}

	if err := p.Release("deva"); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "deva's session to end at its release", func() bool { return !a.IsConnectionOpen() })
	a = e.deviceClient(t, "deva", "deva")
	publish(t, a, e.topics.DeviceUp("deva", "telemetry"), "t2")
	wait.For(t, "deva's telemetry after its release", func() bool { return devs.has("deva", "telemetry") })
}

// TestPoolQuarantinedAt: the pool reads the quarantines a device broker
// holds from its dynamic security plugin, and ReleaseAt undoes one on
// that broker only.
func TestPoolQuarantinedAt(t *testing.T) {
	e := newEnv(t)
	p := e.pool(t, "", func(mqttpool.Message) {}, nil)
	wait.For(t, "the pool to subscribe on both brokers", p.Ready)
	if _, err := p.QuarantinedAt(t.Context(), e.boot.FleetAddr); err == nil {
		t.Fatal("QuarantinedAt on a bootstrap broker")
	}
	held, err := p.QuarantinedAt(t.Context(), e.dev.FleetAddr)
	if err != nil || len(held) != 0 {
		t.Fatalf("a new broker holds %v quarantined (%v)", held, err)
	}
	for _, id := range []string{"deva", "devb"} {
		if err := p.Quarantine(id, []string{"attest"}); err != nil {
			t.Fatal(err)
		}
	}
	if held, err = p.QuarantinedAt(t.Context(), e.dev.FleetAddr); err != nil || !slices.Equal(sorted(held), []string{"deva", "devb"}) {
		t.Fatalf("the broker holds %v quarantined (%v), want deva and devb", held, err)
	}
	if err := p.ReleaseAt(e.dev.FleetAddr, "deva"); err != nil {
		t.Fatal(err)
	}
	if held, err = p.QuarantinedAt(t.Context(), e.dev.FleetAddr); err != nil || !slices.Equal(held, []string{"devb"}) {
		t.Fatalf("after releasing deva the broker holds %v quarantined (%v), want devb", held, err)
	}
}

func sorted(s []string) []string { slices.Sort(s); return s }

// TestPoolKeepsEachSendersOrder: a device's messages are handled in the
// order it sent them (as the embedded broker hands them over), however
// many arrive at once.
func TestPoolKeepsEachSendersOrder(t *testing.T) {
	e := newEnv(t)
	var mu sync.Mutex
	got := map[string][]int{}
	p := e.pool(t, "", func(m mqttpool.Message) {
		var n int
		fmt.Sscan(string(m.Payload), &n)
		mu.Lock()
		got[m.Topic.ID] = append(got[m.Topic.ID], n)
		mu.Unlock()
	}, nil)
	wait.For(t, "the pool to subscribe on both brokers", p.Ready)
	const n = 300
	var wg sync.WaitGroup
	for _, id := range []string{"deva", "devb"} {
		c := e.deviceClient(t, id, id)
		wg.Go(func() {
			toks := make([]mqtt.Token, n)
			for i := range n {
				toks[i] = c.Publish(e.topics.DeviceUp(id, "telemetry"), 1, false, fmt.Sprint(i))
			}
			for _, tok := range toks {
				tok.Wait()
			}
		})
	}
	wg.Wait()
	wait.For(t, "every message at the fleet", func() bool { mu.Lock(); defer mu.Unlock(); return len(got["deva"]) == n && len(got["devb"]) == n })
	mu.Lock()
	defer mu.Unlock()
	for id, seq := range got {
		for i, v := range seq {
			if v != i {
				t.Fatalf("%s's message %d handled at position %d: %v", id, v, i, seq[max(0, i-3):min(len(seq), i+3)])
			}
		}
	}
}

// TestPoolReconnects: when a broker restarts, the pool connects to it
// again and subscribes there again, and a device's messages through it
// reach the fleet.
func TestPoolReconnects(t *testing.T) {
	e := newEnv(t)
	var devs inbox
	p := e.pool(t, "", devs.add, nil)
	wait.For(t, "the pool to subscribe on both brokers", p.Ready)
	e.dev.Restart(t)
	a := e.deviceClient(t, "deva", "deva")
	// Until the pool has subscribed again, the broker drops what deva
	// sends: send until a hello arrives.
	wait.For(t, "deva's hello through the restarted broker", func() bool {
		publish(t, a, e.topics.DeviceUp("deva", "hello"), "after the restart")
		return devs.has("deva", "hello")
	})
	wait.For(t, "the pool to be ready again", p.Ready)
}

// TestPoolSessionsFromTheConnectionLog: with real Mosquitto, configured
// by Member, the pool reports device sessions from the broker's
// connection log (item 6 of the review of issue 14: clone detection
// without the embedded broker's connection events). One device identity
// used from two hosts, one connection taking the other over, shows as
// the second session opening while the first is still open, then the
// first closing, as the embedded broker's events show a takeover; the
// fleet's own connections are not devices.
func TestPoolSessionsFromTheConnectionLog(t *testing.T) {
	e := newEnv(t)
	secret, err := mqttpool.Secret(e.dataDir)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var events []mqttpool.SessionEvent
	p, err := mqttpool.New(mqttpool.Config{Devices: []string{e.dev.FleetAddr}, Bootstrap: []string{e.boot.FleetAddr},
		Username: mqttpool.Username, Password: secret, TLS: &tls.Config{RootCAs: e.ca.Pool()}, Topics: e.topics,
		OnSession: func(ev mqttpool.SessionEvent) { mu.Lock(); events = append(events, ev); mu.Unlock() }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = p.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	seen := func(id, host string, opened bool) bool {
		mu.Lock()
		defer mu.Unlock()
		for _, ev := range events {
			if ev.DeviceID == id && ev.Opened == opened && strings.HasPrefix(ev.Remote, host+":") && ev.Broker == e.dev.FleetAddr {
				return true
			}
		}
		return false
	}
	// The log reaches the pool once it subscribed: a probe device
	// connects until its session is reported.
	wait.For(t, "the device broker's connection log to reach the pool", func() bool {
		c := e.deviceClientFrom(t, "probe", "127.0.0.4")
		c.Disconnect(0)
		return seen("probe", "127.0.0.4", true)
	})
	wait.For(t, "the probe's session closed", func() bool { return seen("probe", "127.0.0.4", false) })

	// A device may not read the log: its subscription is granted (as
	// Mosquitto does) and delivers nothing. The fleet's message to the
	// device, published once the pool saw a later connection, comes
	// after any line the broker would have sent it.
	watcher := e.deviceClientFrom(t, "dev-watch", "127.0.0.5")
	got := make(chan string, 16)
	subscribe(t, watcher, "$SYS/broker/log/#", got)
	subscribe(t, watcher, e.topics.DeviceDown("dev-watch", "probe"), got)

	a := e.deviceClientFrom(t, "dev-clone", "127.0.0.2")
	wait.For(t, "the first holder's session", func() bool { return seen("dev-clone", "127.0.0.2", true) })
	mustPublish(t, p, e.topics.DeviceDown("dev-watch", "probe"))
	select {
	case topic := <-got:
		if topic != e.topics.DeviceDown("dev-watch", "probe") {
			t.Fatalf("a device received %s: the connection log is the fleet's alone", topic)
		}
	case <-time.After(wait.Timeout):
		t.Fatal("the fleet's message never reached the device")
	}
	b := e.deviceClientFrom(t, "dev-clone", "127.0.0.3") // takes the session over
	wait.For(t, "the takeover: the second holder's session, then the first one's end", func() bool {
		return seen("dev-clone", "127.0.0.3", true) && seen("dev-clone", "127.0.0.2", false)
	})
	mu.Lock()
	var order []string
	for _, ev := range events {
		if ev.DeviceID == "dev-clone" {
			order = append(order, fmt.Sprintf("%s %v", strings.Split(ev.Remote, ":")[0], ev.Opened))
		}
		if strings.HasPrefix(ev.DeviceID, mqttpool.Username) {
			t.Errorf("the fleet's own connection reported as a device session: %+v", ev)
		}
	}
	mu.Unlock()
	if want := []string{"127.0.0.2 true", "127.0.0.3 true", "127.0.0.2 false"}; !slices.Equal(order, want) {
		t.Errorf("sessions of the device used from two hosts: %v, want %v", order, want)
	}
	_ = a
	b.Disconnect(0)
	wait.For(t, "the second holder's session closed", func() bool { return seen("dev-clone", "127.0.0.3", false) })
}

// deviceClientFrom is deviceClient connecting from the loopback address
// host (127.0.0.2, …): a device on another host, as the broker sees it.
func (e *env) deviceClientFrom(t *testing.T, id, host string) mqtt.Client {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := e.ca.IssueDevice(id, key.Public(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	o := mqtt.NewClientOptions().AddBroker("tls://" + e.dev.Addr).SetClientID(id).SetProtocolVersion(4).
		SetAutoReconnect(false).SetCleanSession(true).SetDialer(&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(host)}, Timeout: 10 * time.Second}).
		SetTLSConfig(&tls.Config{RootCAs: e.ca.Pool(), Certificates: []tls.Certificate{{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}}})
	c := mqtt.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect as %s from %s: %v", id, host, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(0) })
	return c
}
