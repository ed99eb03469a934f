package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/device/agent"
	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/pkg/config"
	"github.com/sigil-iot/sigil/pkg/wire"
	"github.com/sigil-iot/sigil/sim/harness"
)

// holder is a real MQTT client process that holds a bootstrap slot.
type holder struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
}

func startHolder(t testing.TB, name string, args ...string) *holder {
	t.Helper()
	h := &holder{cmd: exec.Command(name, args...)}
	var err error
	if h.stdin, err = h.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := h.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.stop)
	return h
}

func (h *holder) stop() {
	_ = h.cmd.Process.Kill()
	_ = h.stdin.Close()
	_ = h.cmd.Wait()
}

// rawConnect opens a TLS connection without certificate and sends an MQTT
// 3.1.1 CONNECT with the given keepalive (mosquitto's clients refuse to
// send 0); it returns the CONNACK return code.
func rawConnect(t testing.TB, f *harness.Fleet, clientID string, keepalive uint16) byte {
	t.Helper()
	pemBytes, err := os.ReadFile(f.CACertPath())
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pemBytes)
	c, err := tls.Dial("tcp", f.MQTTAddr(), &tls.Config{RootCAs: roots, ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	body := []byte{0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, byte(keepalive >> 8), byte(keepalive), 0, byte(len(clientID))}
	body = append(body, clientID...)
	if _, err := c.Write(append([]byte{0x10, byte(len(body))}, body...)); err != nil {
		t.Fatal(err)
	}
	ack := make([]byte, 4)
	if _, err := io.ReadFull(c, ack); err != nil || ack[0] != 0x20 {
		t.Fatalf("no CONNACK (% x): %v", ack, err)
	}
	return ack[3]
}

// TestBootstrapSlotsCannotStarveRecovery: anonymous clients try to hold
// every bootstrap slot — a CONNECT without keepalive, mosquitto_sub
// clients that never publish, mosquitto_pub clients that publish once and
// stay, from the device's own address and others, and a stream of new
// connections — while a device (sigild on swtpm) whose certificate was
// revoked must re-enroll. The first is refused, the silent ones are cut at
// the first-message deadline, the newcomers find no slot, and the device
// gets through: its session, recognized as a known device's, takes a
// reserved slot that nothing displaces.
func TestBootstrapSlotsCannotStarveRecovery(t *testing.T) {
	const perSource, clients = 4, 12
	f := startFleet(t, func(c *server.Config) {
		c.EKCADir = ekCADir(t, vendorCA(t))
		c.BootstrapClients, c.BootstrapPerSource, c.BootstrapReserve = clients, perSource, 2
		c.BootstrapFirstMessage = config.Duration(2 * time.Second)
	})
	d := startDevice(t, f, newTPM(t), harness.DeviceConfig{Tweak: func(c *agentConfig) { c.EventLog = "-" }})
	before := waitConnected(t, d)
	host, port := hostPort(t, f)
	mq := func(src, id string) []string {
		return []string{"-h", host, "-p", port, "--cafile", f.CACertPath(), "-V", "mqttv311", "-A", src, "-i", id, "-k", "60"}
	}
	topics := wire.Topics{}

	// No keepalive: refused.
	if rc := rawConnect(t, f, "boot-nokeepalive", 0); rc == 0 {
		t.Fatal("a bootstrap CONNECT without keepalive was admitted")
	}

	// Clients that connect and never publish fill the pool, then are cut.
	var idle []*holder
	for i := range clients {
		src, id := fmt.Sprintf("127.0.0.%d", 2+i/perSource), fmt.Sprintf("idle-%d", i)
		idle = append(idle, startHolder(t, "mosquitto_sub", append(mq(src, id), "-t", topics.Filter(wire.SegEnroll, id, wire.Down))...))
	}
	st := f.Broker.Stats
	// Each was admitted (the deadline starts at the CONNECT), then cut.
	waitFor(t, func() bool { return st().BootstrapExpired >= clients }, "the idle clients to be cut at the first-message deadline")
	for _, h := range idle {
		h.stop() // mosquitto_sub would reconnect for ever
	}
	waitFor(t, func() bool { return st().BootstrapConnections == 0 }, "the idle clients to be gone")

	// Clients that publish once and stay hold every slot, four of them
	// from the device's own address.
	malformed := f.Enroll.Stats().Malformed.Load()
	for i := range clients {
		src, id := fmt.Sprintf("127.0.0.%d", 1+i/perSource), fmt.Sprintf("holder-%d", i)
		h := startHolder(t, "mosquitto_pub", append(mq(src, id), "-q", "1", "-l", "-t", topics.EnrollUp(id, "enroll"))...)
		if _, err := io.WriteString(h.stdin, "hold\n"); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, func() bool {
		return st().BootstrapConnections == clients && f.Enroll.Stats().Malformed.Load() == malformed+clients
	}, "the publishing holders to take every slot")

	// And new ones keep coming from the device's address while it recovers.
	ctx, stopChurn := context.WithCancel(context.Background())
	var churn sync.WaitGroup
	churn.Go(func() {
		for i := 0; ctx.Err() == nil; i++ {
			id := fmt.Sprintf("churn-%d", i)
			_ = exec.CommandContext(ctx, "mosquitto_pub", append(mq("127.0.0.1", id), "-q", "1", "-t", topics.EnrollUp(id, "enroll"), "-m", "x")...).Run()
		}
	})
	defer func() { stopChurn(); churn.Wait() }()

	// The device's certificate is revoked: it must enroll again, over a
	// bootstrap connection, while every slot is wanted.
	c, _ := f.Client()
	if _, err := c.Revoke(context.Background(), before.DeviceID, "superseded", "test"); err != nil {
		t.Fatal(err)
	}
	after, err := d.Wait(context.Background(), 60*time.Second, func(s agent.Status) bool {
		return s.Connected && s.CertSerial != "" && s.CertSerial != before.CertSerial
	})
	if err != nil {
		t.Fatalf("the revoked device did not re-enroll while anonymous clients held the bootstrap slots: %v (broker %+v)", err, st())
	}
	if after.DeviceID != before.DeviceID {
		t.Fatalf("re-enrolled as %s, want %s", after.DeviceID, before.DeviceID)
	}
	if s := st(); s.BootstrapOverCap == 0 || s.BootstrapReserveUsed == 0 {
		t.Fatalf("broker stats %+v: want displaced connections and the device's session reserved", s)
	}
}
