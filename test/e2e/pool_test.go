package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/sigil-iot/sigil/device/agent"
	"github.com/sigil-iot/sigil/device/tpm"
	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/fleet/governance"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/mqttpool"
	"github.com/sigil-iot/sigil/fleet/mqttpool/mosquittotest"
	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/internal/wait"
	"github.com/sigil-iot/sigil/pkg/wire"
	"github.com/sigil-iot/sigil/sim/harness"
)

// brokerPool is a fleet in pool mode with two device brokers and a
// bootstrap broker, real Mosquitto configured by mqttpool.Complete (what
// `sigil broker-config` writes).
type brokerPool struct {
	f         *harness.Fleet
	dev       []*mosquittotest.Broker
	boot      *mosquittotest.Broker
	dataDir   string
	ca        *ca.CA
	topics    wire.Topics
	secret    string
	deviceDir string // certificates of the test's own MQTT clients
	trust     string // roots the test's clients verify the brokers with (default the fleet CA's first)
}

func startBrokerPool(t *testing.T, mutate func(*server.Config)) *brokerPool {
	t.Helper()
	requireTools(t)
	p := &brokerPool{dataDir: t.TempDir()}
	// The CA first, as `sigil serve` leaves it before `sigil broker-config`.
	var err error
	if p.ca, err = ca.Open(ca.Config{Dir: filepath.Join(p.dataDir, "ca"), TrustDomain: "sigil.local"}); err != nil {
		t.Fatal(err)
	}
	member := func(role string) *mosquittotest.Broker {
		m := mqttpool.Member{Role: role, Topics: p.topics}
		if role == mqttpool.RoleDevice {
			m.DynsecPlugin = mosquittotest.DynsecPlugin(t)
		}
		m, err := mqttpool.Complete(p.ca, p.dataDir, m, []string{"localhost", "127.0.0.1"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return mosquittotest.Start(t, m)
	}
	p.dev = []*mosquittotest.Broker{member(mqttpool.RoleDevice), member(mqttpool.RoleDevice)}
	p.boot = member(mqttpool.RoleBootstrap)
	if p.secret, err = mqttpool.Secret(p.dataDir); err != nil {
		t.Fatal(err)
	}
	cfg := server.Config{DataDir: p.dataDir, APIRateLimit: -1, EKCADir: ekCADir(t, vendorCA(t)), BrokerPool: &server.BrokerPool{
		Devices: []string{p.dev[0].FleetAddr, p.dev[1].FleetAddr}, Bootstrap: []string{p.boot.FleetAddr}, ServerName: "localhost"}}
	if mutate != nil {
		mutate(&cfg)
	}
	if p.f, err = harness.StartFleet(context.Background(), cfg, logger(t).With("side", "fleet")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.f.Stop() })
	wait.For(t, "the fleet to subscribe on every broker of the pool", p.f.BrokersReady)
	p.deviceDir = t.TempDir()
	return p
}

// device starts sigild enrolling through the bootstrap broker and then
// connecting to device broker i.
func (p *brokerPool) device(t *testing.T, i int, serial string) *harness.Device {
	t.Helper()
	return startDevice(t, p.f, newTPM(t), harness.DeviceConfig{Serial: serial, Tweak: func(c *agent.Config) {
		c.Broker, c.BootstrapBroker = p.dev[i].Addr, p.boot.Addr
	}})
}

// clientCert writes a certificate of the fleet CA for id and its key, as
// a device of that ID would hold them.
func (p *brokerPool) clientCert(t *testing.T, id string) (cert, key string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	c, err := p.ca.IssueDevice(id, k.Public(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	cert, key = filepath.Join(p.deviceDir, id+".crt"), filepath.Join(p.deviceDir, id+".key")
	if err := os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// fleetPublish publishes as the fleet (its user name and password on the
// broker's fleet listener) with mosquitto_pub.
func (p *brokerPool) fleetPublish(t *testing.T, b *mosquittotest.Broker, topic, msg string) {
	t.Helper()
	host, port := splitAddr(t, b.FleetAddr)
	mustRun(t, "mosquitto_pub", "-h", host, "-p", port, "--cafile", p.f.CACertPath(), "--insecure", "-V", "mqttv311", "-q", "1",
		"-u", mqttpool.Username, "-P", p.secret, "-i", "e2e-fleet-pub", "-t", topic, "-m", msg)
}

func splitAddr(t *testing.T, addr string) (string, string) {
	t.Helper()
	i := strings.LastIndexByte(addr, ':')
	if i < 0 {
		t.Fatalf("address %q", addr)
	}
	return addr[:i], addr[i+1:]
}

// TestBrokerPool: a fleet on a pool of two Mosquitto device brokers and a
// bootstrap broker (no embedded broker). Real swtpm devices enroll
// through the bootstrap broker, connect to broker 1 and broker 2, and
// both get verdicts; a holder of another fleet certificate, on either
// broker, subscribes to a device's topics with mosquitto_sub and receives
// nothing of what the fleet sends that device, while it does receive
// what the fleet sends on its own topic.
func TestBrokerPool(t *testing.T) {
	p := startBrokerPool(t, nil)
	if p.f.Broker != nil {
		t.Fatal("the fleet built its embedded broker in pool mode")
	}
	a := p.device(t, 0, "SN-POOL-A")
	b := p.device(t, 1, "SN-POOL-B")
	stA, stB := waitConnected(t, a), waitConnected(t, b)
	c, err := p.f.Client()
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{stA.DeviceID, stB.DeviceID} {
		if v := firstVerdict(t, c, id); v.Result != wire.VerdictPass {
			t.Fatalf("device %s: verdict %+v", id, v)
		}
	}
	// Another attestation on demand reaches each device on its own
	// broker (the fleet publishes to every broker), and its passing
	// verdict counts for the device's current session (its hello started
	// it): credentials may go out to it.
	for _, id := range []string{stA.DeviceID, stB.DeviceID} {
		seq := latestSeq(t, c, id)
		if err := c.Attest(context.Background(), id); err != nil {
			t.Fatal(err)
		}
		waitVerdict(t, c, id, seq, "an attestation on demand", anyVerdict)
		if err := p.f.Attest.Current(id); err != nil {
			t.Errorf("device %s: %v", id, err)
		}
	}

	// An intruder holding a fleet certificate of its own, on each broker.
	const intruder = "0badc0de"
	cert, key := p.clientCert(t, intruder)
	for i, br := range p.dev {
		host, port := splitAddr(t, br.Addr)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		cmd := exec.CommandContext(ctx, "mosquitto_sub", "-h", host, "-p", port, "--cafile", p.f.CACertPath(), "--cert", cert, "--key", key,
			"-V", "mqttv311", "-q", "1", "-v", "-i", intruder,
			"-t", p.topics.Filter(wire.SegDevice, stA.DeviceID, wire.Down), "-t", p.topics.Filter(wire.SegDevice, stB.DeviceID, wire.Down),
			"-t", p.topics.Filter(wire.SegDevice, intruder, wire.Down))
		out := &watchedOutput{want: "for-the-intruder", seen: make(chan struct{})}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			cancel()
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		// The fleet's messages to both devices go first, then one to the
		// intruder's own topic: once that one arrived, the others were
		// routed (or not) before it.
		seen := false
		for !seen {
			p.fleetPublish(t, br, p.topics.DeviceDown(stA.DeviceID, "probe"), "for-device-a")
			p.fleetPublish(t, br, p.topics.DeviceDown(stB.DeviceID, "probe"), "for-device-b")
			p.fleetPublish(t, br, p.topics.DeviceDown(intruder, "probe"), "for-the-intruder")
			select {
			case <-out.seen:
				seen = true
			case err := <-done:
				cancel()
				t.Fatalf("broker %d: mosquitto_sub ended before the intruder's own message: %v\n%s", i+1, err, out.String())
			case <-time.After(200 * time.Millisecond): // sleep: mosquitto_sub gives no sign that its SUBACK came; publish again
			}
		}
		cancel()
		<-done
		if got := out.String(); strings.Contains(got, "for-device-") {
			t.Errorf("broker %d: another certificate's holder received a device's messages:\n%s", i+1, got)
		}
	}
	// The devices are still there and attested (the intruder took no
	// client ID of theirs).
	for _, d := range []*harness.Device{a, b} {
		waitConnected(t, d)
	}
}

// mqttConnects reports whether mosquitto_sub, with a certificate, gets a
// CONNACK accepting it from the broker at addr (and its output).
func (p *brokerPool) mqttConnects(t *testing.T, addr, cert, key, clientID string) (bool, string) {
	t.Helper()
	host, port := splitAddr(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cafile := p.f.CACertPath()
	if p.trust != "" {
		cafile = p.trust
	}
	out, _ := exec.CommandContext(ctx, "mosquitto_sub", "-h", host, "-p", port, "--cafile", cafile, "--cert", cert, "--key", key,
		"-V", "mqttv311", "-q", "1", "-d", "-E", "-i", clientID, "-t", p.topics.Filter(wire.SegDevice, clientID, wire.Down)).CombinedOutput()
	return strings.Contains(string(out), "received CONNACK (0)"), string(out)
}

// TestBrokerPoolRevocation: a certificate the fleet issued to a device
// connects to the device brokers of the pool until the device is revoked;
// the revocation ends its open session (a kick on every broker), then
// `sigil broker-sync` installs the fleet's new CRL on each broker and has
// it reread it, and the certificate is refused at the TLS handshake on
// both brokers, while the real devices stay connected.
func TestBrokerPoolRevocation(t *testing.T) {
	p := startBrokerPool(t, nil)
	sigil := filepath.Join(t.TempDir(), "sigil")
	if out, err := exec.Command("go", "build", "-o", sigil, "github.com/sigil-iot/sigil/cmd/sigil").CombinedOutput(); err != nil {
		t.Fatalf("go build sigil: %v\n%s", err, out)
	}
	a := p.device(t, 0, "SN-POOL-REV-A")
	waitConnected(t, a)

	// A device of the inventory holding a certificate the test has the
	// key of.
	const id = "feedface00000000feedface00000001"
	cert, key := p.clientCert(t, id)
	b, err := os.ReadFile(cert)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	issued, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	d := &inventory.Device{ID: id, State: inventory.StateActive, Model: "gw-1"}
	d.IssuedCertificate(issued)
	if err := p.f.Inv.PutDevice(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	for i, br := range p.dev {
		if ok, out := p.mqttConnects(t, br.Addr, cert, key, id); !ok {
			t.Fatalf("broker %d refused a current certificate:\n%s", i+1, out)
		}
	}

	// A session open with it on broker 2 (an MQTT client that does not
	// reconnect by itself).
	tlsCert, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(mustRead(t, p.f.CACertPath()))
	held := mqtt.NewClient(mqtt.NewClientOptions().AddBroker("tls://" + p.dev[1].Addr).SetClientID(id).SetProtocolVersion(4).
		SetAutoReconnect(false).SetTLSConfig(&tls.Config{RootCAs: roots, ServerName: "localhost", Certificates: []tls.Certificate{tlsCert}}))
	if tok := held.Connect(); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("a current certificate's session: %v", tok.Error())
	}
	t.Cleanup(func() { held.Disconnect(0) })

	c, err := p.f.Client()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Revoke(context.Background(), id, "keyCompromise", "e2e: pool revocation"); err != nil {
		t.Fatal(err)
	}
	sync := func(br *mosquittotest.Broker) string {
		stdout, stderr, code := runBinary(t, sigil, "broker-sync", "--once", "--fleet", p.f.APIURL(), "--dir", br.Dir,
			"--reload", fmt.Sprintf("kill -HUP %d", br.Pid()))
		if code != 0 {
			t.Fatalf("sigil broker-sync: exit %d, stdout %q, stderr %q", code, stdout, stderr)
		}
		return stdout
	}
	for i, br := range p.dev {
		if out := sync(br); out != "CRL updated and reloaded\n" {
			t.Fatalf("broker %d: sigil broker-sync said %q", i+1, out)
		}
		if out := sync(br); out != "CRL already current\n" {
			t.Fatalf("broker %d: a second sigil broker-sync said %q", i+1, out)
		}
		// SIGHUP is handled asynchronously: poll until the broker
		// refuses the certificate.
		wait.Until(t, func() error {
			if ok, out := p.mqttConnects(t, br.Addr, cert, key, id); ok {
				return fmt.Errorf("broker %d still accepts the revoked certificate:\n%s", i+1, out)
			}
			return nil
		})
		// Refused below MQTT (TLS 1.3 reports the handshake's alert on
		// the first read): no CONNACK at all.
		if _, out := p.mqttConnects(t, br.Addr, cert, key, id); strings.Contains(out, "received CONNACK") {
			t.Errorf("broker %d: the refusal is not the TLS handshake's:\n%s", i+1, out)
		}
	}
	// The revocation ended the open session (the fleet's Disconnect, a
	// kick through the dynamic security plugin).
	wait.For(t, "the revoked certificate's session to end", func() bool { return !held.IsConnectionOpen() })
	waitConnected(t, a) // the real device is still served
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// fakeDevice puts a device of the given ID in the inventory, active,
// holding a certificate of the fleet CA whose key the test has.
func (p *brokerPool) fakeDevice(t *testing.T, id string) (cert, key string) {
	t.Helper()
	cert, key = p.clientCert(t, id)
	blk, _ := pem.Decode(mustRead(t, cert))
	issued, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	d := &inventory.Device{ID: id, State: inventory.StateActive, Model: "gw-1"}
	d.IssuedCertificate(issued)
	if err := p.f.Inv.PutDevice(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// reissue gives the device of fakeDevice a new current certificate, as
// its enrollment again from its EK would after a quarantine revoked the
// one it held (a device without a current certificate is not served
// through the pool: its sessions are ended).
func (p *brokerPool) reissue(t *testing.T, id string) (cert, key string) {
	t.Helper()
	cert, key = p.clientCert(t, id)
	blk, _ := pem.Decode(mustRead(t, cert))
	issued, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.f.Inv.Update(context.Background(), id, func(d *inventory.Device) error { d.IssuedCertificate(issued); return nil }); err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// mqttClient connects to addr as an MQTT client that does not reconnect
// by itself, with a certificate, or with the fleet's credentials when
// cert is empty.
func (p *brokerPool) mqttClient(t *testing.T, addr, clientID, cert, key string) mqtt.Client {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(mustRead(t, p.f.CACertPath()))
	cfg := &tls.Config{RootCAs: roots, ServerName: "localhost"}
	o := mqtt.NewClientOptions().AddBroker("tls://" + addr).SetClientID(clientID).SetProtocolVersion(4).SetAutoReconnect(false)
	if cert != "" {
		c, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{c}
	} else {
		o.SetUsername(mqttpool.Username).SetPassword(p.secret)
	}
	c := mqtt.NewClient(o.SetTLSConfig(cfg))
	if tok := c.Connect(); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("connect to %s as %s: %v", addr, clientID, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(0) })
	return c
}

// upKinds watches, as the fleet (a plain subscription on the broker's
// fleet listener), the kinds of what a device publishes that its broker
// lets through, in order.
type upKinds struct {
	mu    sync.Mutex
	kinds []string
}

func (u *upKinds) add(kind string) { u.mu.Lock(); u.kinds = append(u.kinds, kind); u.mu.Unlock() }
func (u *upKinds) list() []string  { u.mu.Lock(); defer u.mu.Unlock(); return slices.Clone(u.kinds) }
func (u *upKinds) reset()          { u.mu.Lock(); u.kinds = nil; u.mu.Unlock() }

func (p *brokerPool) watchUp(t *testing.T, br *mosquittotest.Broker, id string) *upKinds {
	t.Helper()
	u := &upKinds{}
	w := p.mqttClient(t, br.FleetAddr, "e2e-watch-"+id, "", "")
	tok := w.Subscribe(p.topics.Filter(wire.SegDevice, id, wire.Up), 1, func(_ mqtt.Client, m mqtt.Message) {
		if tp, err := p.topics.Parse(m.Topic()); err == nil {
			u.add(tp.Kind)
		}
	})
	if !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("watch: %v", tok.Error())
	}
	return u
}

func mqttPublish(t *testing.T, c mqtt.Client, topic string) {
	t.Helper()
	if tok := c.Publish(topic, 1, false, "x"); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("publish %s: %v", topic, tok.Error())
	}
}

// TestBrokerPoolQuarantine: a device the fleet quarantines is limited on
// every broker of the pool: its session ends, and when it connects again
// its broker lets its attestation through but not its firmware report;
// released, its session ends again and everything passes.
func TestBrokerPoolQuarantine(t *testing.T) {
	p := startBrokerPool(t, nil)
	const id = "feedface00000000feedface00000002"
	cert, key := p.fakeDevice(t, id)
	watch := []*upKinds{p.watchUp(t, p.dev[0], id), p.watchUp(t, p.dev[1], id)}
	held := p.mqttClient(t, p.dev[0].Addr, id, cert, key)

	if err := p.f.Attest.Quarantine(id, "e2e: pool quarantine"); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "the quarantined device's session to end", func() bool { return !held.IsConnectionOpen() })
	cert, key = p.reissue(t, id)
	for i, br := range p.dev {
		c := p.mqttClient(t, br.Addr, id, cert, key)
		mqttPublish(t, c, p.topics.DeviceUp(id, "firmware")) // PUBACKed and dropped
		mqttPublish(t, c, p.topics.DeviceUp(id, "attest"))
		wait.For(t, fmt.Sprintf("the attestation through broker %d", i+1), func() bool { return slices.Contains(watch[i].list(), "attest") })
		if got := watch[i].list(); slices.Contains(got, "firmware") {
			t.Fatalf("broker %d let a quarantined device's firmware report through: %v", i+1, got)
		}
		c.Disconnect(0)
	}

	held = p.mqttClient(t, p.dev[1].Addr, id, cert, key)
	if err := p.f.Attest.Release(id, "e2e", "e2e: pool release"); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "the released device's session to end", func() bool { return !held.IsConnectionOpen() })
	for i, br := range p.dev {
		c := p.mqttClient(t, br.Addr, id, cert, key)
		mqttPublish(t, c, p.topics.DeviceUp(id, "firmware"))
		wait.For(t, fmt.Sprintf("the firmware report through broker %d after the release", i+1), func() bool {
			return slices.Contains(watch[i].list(), "firmware")
		})
		c.Disconnect(0)
	}
}

// TestBrokerPoolQuarantineResync: a device broker that comes back without
// the quarantines it held (a lost state, or a new broker) gets them again
// from the fleet when the fleet connects to it.
func TestBrokerPoolQuarantineResync(t *testing.T) {
	p := startBrokerPool(t, nil)
	const id = "feedface00000000feedface00000003"
	cert, key := p.fakeDevice(t, id)
	if err := p.f.Attest.Quarantine(id, "e2e: pool quarantine resync"); err != nil {
		t.Fatal(err)
	}
	cert, key = p.reissue(t, id)
	br := p.dev[1]
	br.ResetState(t)
	watch := p.watchUp(t, br, id)
	// Until the fleet is back on the broker, the device publishes what it
	// likes there: try rounds until one shows the quarantine.
	round := 0
	wait.Until(t, func() error {
		round++
		watch.reset()
		c := p.mqttClient(t, br.Addr, id, cert, key)
		defer c.Disconnect(0)
		if tok := c.Publish(p.topics.DeviceUp(id, "firmware"), 1, false, "x"); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			return fmt.Errorf("round %d: publish: %v", round, tok.Error())
		}
		if tok := c.Publish(p.topics.DeviceUp(id, "attest"), 1, false, "x"); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			return fmt.Errorf("round %d: publish: %v", round, tok.Error())
		}
		if !wait.Poll(2*time.Second, func() bool { return slices.Contains(watch.list(), "attest") }) {
			return fmt.Errorf("round %d: the attestation did not come through", round)
		}
		if got := watch.list(); slices.Contains(got, "firmware") {
			return fmt.Errorf("round %d: the broker let the quarantined device's firmware report through: %v", round, got)
		}
		return nil
	})
}

// TestBrokerPoolReleaseResync: a device broker that was down when the
// fleet released a quarantined device (it kept the quarantine in its
// plugin's state) is brought to the fleet's state when the fleet
// connects to it again: the device is no longer limited there.
func TestBrokerPoolReleaseResync(t *testing.T) {
	p := startBrokerPool(t, nil)
	const id = "feedface00000000feedface00000004"
	cert, key := p.fakeDevice(t, id)
	if err := p.f.Attest.Quarantine(id, "e2e: pool release resync"); err != nil {
		t.Fatal(err)
	}
	cert, key = p.reissue(t, id)
	br := p.dev[1]
	// The broker holds the quarantine: its attestation passes, its
	// firmware report does not.
	watch := p.watchUp(t, br, id)
	wait.Until(t, func() error {
		watch.reset()
		c := p.mqttClient(t, br.Addr, id, cert, key)
		defer c.Disconnect(0)
		mqttPublish(t, c, p.topics.DeviceUp(id, "firmware"))
		mqttPublish(t, c, p.topics.DeviceUp(id, "attest"))
		if !wait.Poll(2*time.Second, func() bool { return slices.Contains(watch.list(), "attest") }) {
			return errors.New("the attestation did not come through")
		}
		if slices.Contains(watch.list(), "firmware") {
			return errors.New("the broker does not hold the quarantine yet")
		}
		return nil
	})
	br.Stop()
	if err := p.f.Attest.Release(id, "e2e", "e2e: pool release resync"); err != nil {
		t.Fatal(err)
	}
	br.Resume(t)
	watch = p.watchUp(t, br, id)
	// Until the fleet is back on the broker, the quarantine holds there:
	// try rounds until the firmware report comes through.
	round := 0
	wait.Until(t, func() error {
		round++
		watch.reset()
		c := p.mqttClient(t, br.Addr, id, cert, key)
		defer c.Disconnect(0)
		if tok := c.Publish(p.topics.DeviceUp(id, "firmware"), 1, false, "x"); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			return fmt.Errorf("round %d: publish: %v", round, tok.Error())
		}
		if !wait.Poll(2*time.Second, func() bool { return slices.Contains(watch.list(), "firmware") }) {
			return fmt.Errorf("round %d: the released device's firmware report did not come through the broker that missed the release", round)
		}
		return nil
	})
}

// TestBrokerPoolRevokedDeviceReenrolls: a real device revoked while on a
// broker of the pool comes back with a new certificate: the revocation
// ends its session; a session it opens again before its broker has the
// new CRL is ended at its next message; once `sigil broker-sync` has
// installed the CRL its broker refuses the certificate at the TLS
// handshake, and sigild enrolls again from its EK through the bootstrap
// broker and is attested.
func TestBrokerPoolRevokedDeviceReenrolls(t *testing.T) {
	p := startBrokerPool(t, nil)
	sigil := filepath.Join(t.TempDir(), "sigil")
	if out, err := exec.Command("go", "build", "-o", sigil, "github.com/sigil-iot/sigil/cmd/sigil").CombinedOutput(); err != nil {
		t.Fatalf("go build sigil: %v\n%s", err, out)
	}
	a := p.device(t, 0, "SN-POOL-REENROLL")
	st := waitConnected(t, a)
	c, err := p.f.Client()
	if err != nil {
		t.Fatal(err)
	}
	firstVerdict(t, c, st.DeviceID)
	if _, err := c.Revoke(context.Background(), st.DeviceID, "keyCompromise", "e2e: pool re-enrollment"); err != nil {
		t.Fatal(err)
	}
	// The device reconnects with its revoked certificate before its
	// broker has the CRL (the syncs run later).
	if _, err := a.Wait(context.Background(), 30*time.Second, func(s agent.Status) bool {
		return harness.Connected(s) && s.CertSerial == st.CertSerial && s.ConnectedAt.After(st.ConnectedAt)
	}); err != nil {
		t.Fatalf("the device did not reconnect after its session ended: %v", err)
	}
	for i, br := range p.dev {
		if _, stderr, code := runBinary(t, sigil, "broker-sync", "--once", "--fleet", p.f.APIURL(), "--dir", br.Dir,
			"--reload", fmt.Sprintf("kill -HUP %d", br.Pid())); code != 0 {
			t.Fatalf("broker %d: sigil broker-sync: exit %d: %s", i+1, code, stderr)
		}
	}
	back, err := a.Wait(context.Background(), 60*time.Second, func(s agent.Status) bool {
		return harness.Connected(s) && s.CertSerial != "" && s.CertSerial != st.CertSerial
	})
	if err != nil {
		t.Fatalf("the revoked device did not come back with a new certificate: %v", err)
	}
	if back.DeviceID != st.DeviceID {
		t.Fatalf("came back as %s, was %s", back.DeviceID, st.DeviceID)
	}
	waitVerdict(t, c, st.DeviceID, latestSeq(t, c, st.DeviceID), "an attestation with the new certificate", anyVerdict)
}

// TestBrokerPoolCertificateClone: in pool mode, where Mosquitto tells the
// fleet of no connection, a second client with a device's certificate and
// its TPM-resident key connects to the device's broker from another
// address while the device runs; the two keep taking the session from
// each other (Mosquitto closes the older connection), and governance,
// reading the broker's connection log, records a clone incident naming
// both hosts (the log names no certificate) and quarantines the device
// (review item 6 of issue 14).
func TestBrokerPoolCertificateClone(t *testing.T) {
	p := startBrokerPool(t, nil)
	ctx := context.Background()
	inst, dir := newTPM(t), t.TempDir()
	device := func() *harness.Device {
		return startDevice(t, p.f, inst, harness.DeviceConfig{Dir: dir, Serial: "SN-POOL-CLONED", Tweak: func(c *agent.Config) {
			c.Broker, c.BootstrapBroker = p.dev[0].Addr, p.boot.Addr
			c.EventLog, c.TelemetryInterval = "-", -1
		}})
	}
	d := device()
	id := waitConnected(t, d).DeviceID
	// The device's credential from its state store (stopped for the read).
	d.Stop()
	ident := readIdentity(t, dir)
	d = device()
	waitConnected(t, d)
	tp, err := tpm.Open(inst.URI())
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()
	signer, err := tp.Signer(&tpm.KeyBlob{Public: ident.TK.Public, Private: ident.TK.Private})
	if err != nil {
		t.Fatal(err)
	}
	c, err := p.f.Client()
	if err != nil {
		t.Fatal(err)
	}
	incident := func() *governance.Clone {
		l, err := c.Clones(ctx, false)
		if err != nil {
			t.Fatal(err)
		}
		for i := range l.Clones {
			if l.Clones[i].DeviceID == id && l.Clones[i].Kind == governance.CloneCertificate {
				return &l.Clones[i]
			}
		}
		return nil
	}
	connects := 0
	if !wait.Poll(time.Minute, func() bool {
		if incident() != nil {
			return true
		}
		cl, lost, err := cloneClient(t, p.f, p.dev[0].Addr, ident.Cert, signer, id)
		if err != nil {
			return false // refused: try again
		}
		connects++
		// The device takes its session back; then the clone tries again.
		select {
		case <-lost:
		case <-time.After(10 * time.Second):
		}
		cl.Disconnect(0)
		return incident() != nil
	}) {
		t.Fatalf("no clone incident after %d connections of the clone", connects)
	}
	inc := incident()
	t.Logf("incident after %d clone connections: %s", connects, inc.Evidence)
	if inc.Serial != "" || !slices.Contains(inc.Hosts, "127.0.0.1") || !slices.Contains(inc.Hosts, "127.0.0.2") {
		t.Fatalf("incident %+v, want no serial (the log names none), from 127.0.0.1 and 127.0.0.2", inc)
	}
	waitFor(t, func() bool { x := incident(); return x != nil && x.Quarantined }, "the clone to be quarantined")
	if dev, err := p.f.Inv.Device(ctx, id); err != nil || dev.State != inventory.StateQuarantined {
		t.Fatalf("cloned device: %+v, %v", dev, err)
	}
}
