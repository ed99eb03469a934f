package bridge_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/sigil-iot/sigil/fleet/bridge"
	"github.com/sigil-iot/sigil/fleet/broker"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/mqttpool/mosquittotest"
	"github.com/sigil-iot/sigil/internal/runtest"
	"github.com/sigil-iot/sigil/internal/testenv"
	"github.com/sigil-iot/sigil/internal/wait"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// plantFleet is the fleet's embedded broker with the bridge store as its
// gate, what the fleet received, and a plant Mosquitto bridged to it.
type plantFleet struct {
	f     *fixture
	svc   *bridge.Service
	b     *broker.Broker
	mu    sync.Mutex
	got   []string // topics the fleet received from bridges, in order
	plant string   // the plant broker's local listener
}

func (p *plantFleet) received() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.got...)
}

// startFleet starts the fleet's broker: TLS with a server certificate of
// the fleet CA for 127.0.0.1, devices and bridges by certificate only,
// bridges admitted by the store, revocation cutting them off.
func startFleet(t *testing.T) *plantFleet {
	t.Helper()
	p := &plantFleet{f: newFixture(t)}
	p.f.now = time.Now() // the broker's TLS and mosquitto's use the real clock
	var b *broker.Broker
	cfg := bridge.Config{Path: p.f.path, CA: p.f.ca, Now: p.f.clock, NoSync: true,
		OnRevoke: func(site string) { b.DisconnectBridge(site) }}
	svc, err := bridge.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Close() })
	key := newKey(t)
	srvCert, err := p.f.ca.IssueServer([]string{"127.0.0.1"}, key.Public(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	bc := broker.Config{
		Addr: "127.0.0.1:0", TLS: &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{srvCert.Raw}, PrivateKey: key, Leaf: srvCert}}},
		ClientCAsFunc: p.f.ca.Pool, TrustDomain: "fleet.test", Bridges: svc.Gate(),
		Gate: broker.GateFunc(func(string, *x509.Certificate) (broker.Access, error) {
			return broker.Access{}, fmt.Errorf("no devices in this test")
		}),
	}
	if testing.Verbose() {
		bc.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if b, err = broker.New(bc); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	runtest.Start(t, b.Run)
	if err := b.Subscribe("#", func(id broker.Identity, topic string, _ []byte) {
		if id.Fleet {
			return
		}
		p.mu.Lock()
		p.got = append(p.got, id.Site+" "+topic)
		p.mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	p.svc, p.b = svc, b
	return p
}

// startPlant writes the bridge credential and starts a plant Mosquitto:
// a plain local listener for the plant's devices and the bridge section
// MosquittoConf writes (rogue appends lines a compromised plant broker
// might add).
func (p *plantFleet) startPlant(t *testing.T, site string, rogue string) {
	t.Helper()
	testenv.RequireBinaries(t, "mosquitto", "mosquitto_pub")
	// Mosquitto started as root reads its files as the mosquitto user.
	dir, err := os.MkdirTemp("", "plant-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	key := newKey(t)
	cert, err := p.svc.Create(context.Background(), operator, site, key.Public(), 0)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, b []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	conf, err := bridge.MosquittoConf(bridge.Plant{Site: site, Address: p.b.Addr().String(),
		CAFile:   write("ca.crt", p.f.ca.CertPEM()),
		CertFile: write("bridge.crt", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})),
		KeyFile:  write("bridge.key", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})),
	})
	if err != nil {
		t.Fatal(err)
	}
	p.plant = fmt.Sprintf("127.0.0.1:%d", mosquittotest.FreePort(t))
	_, port, _ := strings.Cut(p.plant, ":")
	local := "listener " + port + " 127.0.0.1\nallow_anonymous true\nlog_type all\n"
	confPath := write("mosquitto.conf", []byte(local+conf+rogue))
	out := &strings.Builder{}
	var mu sync.Mutex
	cmd := exec.Command("mosquitto", "-c", confPath)
	cmd.Stdout = writerFunc(func(b []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return out.Write(b) })
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			mu.Lock()
			t.Logf("plant mosquitto:\n%s\n%s", conf+rogue, out.String())
			mu.Unlock()
		}
	})
	wait.For(t, "the plant's bridge to connect to the fleet", func() bool { return p.b.BridgeConnected(site) })
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

// pub publishes on the plant broker with the real mosquitto_pub.
func (p *plantFleet) pub(t *testing.T, topic, msg string, qos int) {
	t.Helper()
	host, port, _ := strings.Cut(p.plant, ":")
	if out, err := exec.Command("mosquitto_pub", "-h", host, "-p", port, "-q", fmt.Sprint(qos), "-t", topic, "-m", msg).CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_pub: %v\n%s", err, out)
	}
}

// TestMosquittoBridgeReachesOnlyItsSite: a real Mosquitto configured as
// MosquittoConf (docs/BRIDGES.md) says connects to the fleet's embedded
// broker with its bridge credential; a device message published on the
// plant reaches the fleet under sigil/site/<site>/, and the fleet's
// message to a device reaches the plant's local topic.
func TestMosquittoBridgeReachesOnlyItsSite(t *testing.T) {
	p := startFleet(t)
	p.startPlant(t, "plant1", "")
	topics := wire.Topics{}

	p.pub(t, topics.DeviceUp("d1", "telemetry"), "up", 1)
	wait.For(t, "the device's message at the fleet", func() bool { return len(p.received()) > 0 })
	if got := p.received(); got[0] != "plant1 sigil/site/plant1/v1/dev/d1/up/telemetry" {
		t.Fatalf("fleet received %q", got)
	}

	// Down: a local subscriber on the plant gets the fleet's message.
	host, port, _ := strings.Cut(p.plant, ":")
	down := make(chan string, 100)
	c := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + host + ":" + port).SetClientID("d1").SetAutoReconnect(false))
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect to the plant: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(50) })
	if tok := c.Subscribe(topics.DeviceDown("d1", "#"), 1, func(_ paho.Client, m paho.Message) { down <- m.Topic() }); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal("subscribe on the plant")
	}
	// The bridge's own subscription at the fleet may still be on its way:
	// send until one arrives.
	wait.For(t, "the fleet's message at the plant", func() bool {
		if err := p.b.Publish("sigil/site/plant1/v1/dev/d1/down/attest", []byte("x"), 1); err != nil {
			t.Fatal(err)
		}
		select {
		case tp := <-down:
			if tp != topics.DeviceDown("d1", "attest") {
				t.Fatalf("plant got %q", tp)
			}
			return true
		case <-time.After(100 * time.Millisecond):
			return false
		}
	})
}

// TestMosquittoBridgeCannotReachOtherSites: a plant broker that forwards
// everything (a compromised or misconfigured one) with plant1's
// credential cannot publish into plant2's prefix nor into the devices'
// own tree: the fleet refuses each publish (and drops the connection,
// which Mosquitto re-opens), and nothing of it is ever delivered.
func TestMosquittoBridgeCannotReachOtherSites(t *testing.T) {
	p := startFleet(t)
	// Forwarded as they are: sigil/site/..., and raw/v1/... as the
	// devices' own tree sigil/v1/....
	p.startPlant(t, "plant1", "topic sigil/site/# out 0\ntopic v1/# out 0 raw/ sigil/\n")
	for _, topic := range []string{"sigil/site/plant2/v1/dev/d2/up/telemetry", "raw/v1/dev/d2/up/telemetry", "sigil/site/plant1", "sigil/site/plant10/x"} {
		// QoS 0: the plant drops what arrives while its bridge is down
		// (the previous refusal closed it), so send until refused.
		before := p.b.Stats().ACLDenials
		wait.For(t, "the fleet to refuse "+topic, func() bool {
			if p.b.BridgeConnected("plant1") {
				p.pub(t, topic, "forged", 0)
			}
			return wait.Poll(200*time.Millisecond, func() bool { return p.b.Stats().ACLDenials > before })
		})
	}
	// A marker sent after them through the same bridge arrives; what the
	// fleet received up to it is the marker alone.
	wait.For(t, "the marker at the fleet", func() bool {
		if p.b.BridgeConnected("plant1") {
			p.pub(t, "sigil/site/plant1/marker", "m", 0)
		}
		return wait.Poll(200*time.Millisecond, func() bool { return len(p.received()) > 0 })
	})
	for _, got := range p.received() {
		if got != "plant1 sigil/site/plant1/marker" {
			t.Fatalf("the fleet received %q", got)
		}
	}
}

// TestMosquittoBridgeRevoked: revoking the bridge cuts the plant's
// connection at once, and its reconnections are refused at CONNECT.
func TestMosquittoBridgeRevoked(t *testing.T) {
	p := startFleet(t)
	p.startPlant(t, "plant1", "")
	if err := p.svc.Revoke(context.Background(), operator, "plant1", inventory.ReasonKeyCompromise, "test"); err != nil {
		t.Fatal(err)
	}
	if p.b.BridgeConnected("plant1") {
		t.Fatal("the revoked bridge is still connected after Revoke returned")
	}
	before := p.b.Stats().AuthRefusals
	wait.For(t, "the plant to try again and be refused", func() bool { return p.b.Stats().AuthRefusals > before })
	if p.b.BridgeConnected("plant1") {
		t.Fatal("the revoked bridge connected again")
	}
	p.pub(t, wire.Topics{}.DeviceUp("d1", "telemetry"), "after", 1)
	if got := p.received(); len(got) != 0 {
		t.Fatalf("the fleet received %q from a revoked bridge", got)
	}
}

// TestDocsShowMosquittoConf: the bridge section docs/BRIDGES.md shows is
// what MosquittoConf writes (and what the tests above run).
func TestDocsShowMosquittoConf(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "BRIDGES.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(doc), "Add the section `sigil bridge create` writes")
	if !ok {
		t.Fatal("docs/BRIDGES.md lost its configuration section")
	}
	_, block, _ := strings.Cut(after, "```\n")
	block, _, _ = strings.Cut(block, "```\n")
	want, err := bridge.MosquittoConf(bridge.Plant{Site: "plant1", Address: "fleet.example.com:8883",
		CAFile: "/etc/mosquitto/sigil/ca.crt", CertFile: "/etc/mosquitto/sigil/bridge.crt", KeyFile: "/etc/mosquitto/sigil/bridge.key"})
	if err != nil {
		t.Fatal(err)
	}
	if block != want {
		t.Fatalf("docs/BRIDGES.md shows\n%s\nMosquittoConf writes\n%s", block, want)
	}
}
