package broker

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	polling "github.com/sigil-iot/sigil/internal/wait" // this package has a func wait
)

func keepalive(d time.Duration) func(*paho.ClientOptions) {
	return func(o *paho.ClientOptions) { o.SetKeepAlive(d) }
}

// mustClientWith connects a bootstrap client with options.
func (e *env) mustClientWith(t *testing.T, clientID string, mod func(*paho.ClientOptions)) paho.Client {
	t.Helper()
	c, err := e.client(t, clientID, nil, mod)
	if err != nil {
		t.Fatalf("connect %s: %v", clientID, err)
	}
	return c
}

// gone waits until the broker has closed c.
func gone(t *testing.T, c paho.Client, what string) {
	t.Helper()
	eventually(t, what, func() bool { return !c.IsConnectionOpen() })
}

// TestBootstrapKeepaliveBounds: a bootstrap client must ask for a
// keepalive, and not a longer one than MaxBootstrapKeepalive; devices are
// not bound. mosquitto_sub -k 0 is refused too.
func TestBootstrapKeepaliveBounds(t *testing.T) {
	sub := needTool(t, "mosquitto_sub")
	e := startBroker(t, func(c *Config) { c.MaxBootstrapKeepalive = time.Minute })
	if _, err := e.client(t, "boot-0", nil, keepalive(0)); err == nil {
		t.Fatal("bootstrap client without keepalive admitted")
	}
	if _, err := e.client(t, "boot-long", nil, keepalive(time.Hour)); err == nil {
		t.Fatal("bootstrap client with a one-hour keepalive admitted")
	}
	e.mustClient(t, "boot-ok", nil) // paho's default, 30 s
	certA := e.ca.device(t, devA)
	if _, err := e.client(t, devA, &certA, keepalive(0)); err != nil {
		t.Fatalf("a device without keepalive refused: %v", err)
	}
	// A raw CONNECT without keepalive (mosquitto_sub refuses -k 0 itself).
	if rc := rawConnect(t, e, "boot-raw", 0); rc == 0 {
		t.Fatal("raw CONNECT without keepalive accepted")
	}
	if rc := rawConnect(t, e, "boot-raw", 20); rc != 0 {
		t.Fatalf("raw CONNECT with a 20 s keepalive refused (%d)", rc)
	}
	// mosquitto_sub with a keepalive above the bound.
	host, port, _ := net.SplitHostPort(e.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, sub, "-h", host, "-p", port, "--cafile", e.ca.pem, "-V", "mqttv311", "-k", "3600",
		"-i", "boot-mosq", "-t", topics.Filter("enroll", "boot-mosq", "down")).CombinedOutput()
	if err == nil || ctx.Err() != nil || !strings.Contains(string(out), "Connection Refused") {
		t.Fatalf("mosquitto_sub -k 3600: %v (context %v): %s", err, ctx.Err(), out)
	}
	if st := e.b.Stats(); st.AuthRefusals != 4 {
		t.Fatalf("stats = %+v", st)
	}
}

// rawConnect sends an MQTT 3.1.1 CONNECT with the given keepalive over TLS
// and returns the CONNACK return code.
func rawConnect(t *testing.T, e *env, clientID string, keepalive uint16) byte {
	t.Helper()
	c, err := tls.Dial("tcp", e.addr, &tls.Config{RootCAs: e.ca.Pool, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(connectPacket(clientID, keepalive)); err != nil {
		t.Fatal(err)
	}
	ack := make([]byte, 4)
	if _, err := io.ReadFull(c, ack); err != nil {
		t.Fatalf("no CONNACK: %v", err)
	}
	if ack[0] != 0x20 || ack[1] != 2 {
		t.Fatalf("not a CONNACK: % x", ack)
	}
	return ack[3]
}

// connectPacket is a clean-session MQTT 3.1.1 CONNECT.
func connectPacket(clientID string, keepalive uint16) []byte {
	body := []byte{0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, byte(keepalive >> 8), byte(keepalive)}
	body = append(body, byte(len(clientID)>>8), byte(len(clientID)))
	body = append(body, clientID...)
	return append([]byte{0x10, byte(len(body))}, body...)
}

// TestBootstrapFirstMessageDeadline: a bootstrap client that publishes
// nothing on its enrollment topic within BootstrapFirstMessage of its
// CONNECT is disconnected; one that did stays.
func TestBootstrapFirstMessageDeadline(t *testing.T) {
	e := startBroker(t, func(c *Config) { c.BootstrapFirstMessage = time.Second })
	got := e.fleetSub(t, topics.Filter("enroll", "+", "up"))
	talker := e.mustClient(t, "boot-talks", nil)
	wait(t, talker.Publish(topics.EnrollUp("boot-talks", "enroll"), 1, false, "request"))
	polling.Recv(t, got, "the talker's request")
	idle := e.mustClient(t, "boot-idle", nil)
	// A subscription and pings are not an enrollment message.
	if code := subCode(t, idle.Subscribe(topics.Filter("enroll", "boot-idle", "down"), 1, nil)); code != 1 {
		t.Fatalf("own subscription refused (%#x)", code)
	}
	gone(t, idle, "the idle bootstrap client to be disconnected")
	if !talker.IsConnectionOpen() {
		t.Fatal("the client that sent its request was disconnected too")
	}
	eventually(t, "the idle client's slot to be released", func() bool {
		st := e.b.Stats()
		return st.BootstrapExpired == 1 && st.BootstrapConnections == 1
	})
	// Devices have no such deadline.
	certA := e.ca.device(t, devA)
	dev := e.mustClient(t, devA, &certA)
	late := e.mustClient(t, "boot-late", nil)
	gone(t, late, "a later idle bootstrap client to be disconnected")
	if !dev.IsConnectionOpen() {
		t.Fatal("a device was disconnected for not publishing")
	}
}

// TestBootstrapLifetime: a bootstrap connection is closed after
// BootstrapLifetime however busy it is.
func TestBootstrapLifetime(t *testing.T) {
	e := startBroker(t, func(c *Config) { c.BootstrapLifetime = time.Second })
	c := e.mustClient(t, "boot-1", nil)
	wait(t, c.Publish(topics.EnrollUp("boot-1", "enroll"), 1, false, "request"))
	eventually(t, "the bootstrap connection to reach its lifetime", func() bool {
		if c.IsConnectionOpen() {
			wait(t, c.Publish(topics.EnrollUp("boot-1", "enroll"), 1, false, "still here"))
			return false
		}
		return true
	})
	eventually(t, "the slot to be released", func() bool {
		st := e.b.Stats()
		return st.BootstrapExpired == 1 && st.BootstrapConnections == 0
	})
}

// TestBootstrapEvictsLeastActive: when one address holds its cap, a new
// connection from it displaces that address's least recently active
// bootstrap connection; when the fleet-wide cap is reached, the least
// active connection of the address holding most goes. Slots cannot be
// held to lock newcomers out. (Here any inactivity is enough:
// TestBootstrapActiveNotDisplaced has the default.)
func TestBootstrapEvictsLeastActive(t *testing.T) {
	e := startBroker(t, func(c *Config) {
		c.MaxBootstrapPerSource, c.MaxBootstrapClients, c.BootstrapDisplaceIdle = 2, 3, time.Nanosecond
	})
	a := e.mustClient(t, "boot-a", nil)
	b := e.mustClient(t, "boot-b", nil)
	wait(t, a.Publish(topics.EnrollUp("boot-a", "enroll"), 1, false, "request")) // a is now the more recent
	c := e.mustClient(t, "boot-c", nil)
	gone(t, b, "the least active connection of the address to make room")
	if !a.IsConnectionOpen() || !c.IsConnectionOpen() {
		t.Fatal("the wrong connection was closed")
	}
	// 127.0.0.1 holds a and c; 127.0.0.2 takes the last fleet-wide slot.
	d := e.mustClientWith(t, "boot-d", fromLocal("127.0.0.2"))
	wait(t, a.Publish(topics.EnrollUp("boot-a", "enroll"), 1, false, "request"))
	// The cap is reached: a newcomer from 127.0.0.3 closes the least
	// active connection of 127.0.0.1, the address holding most.
	x := e.mustClientWith(t, "boot-x", fromLocal("127.0.0.3"))
	gone(t, c, "the least active connection of the heaviest address to make room")
	for name, cl := range map[string]paho.Client{"a": a, "d": d, "x": x} {
		if !cl.IsConnectionOpen() {
			t.Fatalf("%s was closed", name)
		}
	}
	eventually(t, "the displaced connections' slots to be released", func() bool {
		st := e.b.Stats()
		return st.BootstrapOverCap == 2 && st.BootstrapConnections == 3
	})
}

// TestBootstrapActiveNotDisplaced: connections active within
// BootstrapDisplaceIdle are not displaced (enrollments in progress finish
// during a rush); a newcomer that finds no slot is closed at its CONNECT.
func TestBootstrapActiveNotDisplaced(t *testing.T) {
	e := startBroker(t, func(c *Config) { c.MaxBootstrapPerSource, c.MaxBootstrapClients = 2, 2 })
	h1 := e.mustClient(t, "boot-h1", nil)
	h2 := e.mustClient(t, "boot-h2", nil)
	if _, err := e.client(t, "boot-late", nil, nil); err == nil {
		t.Fatal("a newcomer was admitted into a pool of active connections")
	}
	if !h1.IsConnectionOpen() || !h2.IsConnectionOpen() {
		t.Fatal("an active connection was displaced")
	}
	if st := e.b.Stats(); st.BootstrapOverCap != 1 || st.AuthRefusals != 0 {
		t.Fatalf("stats = %+v: a full pool is not a refusal of the client", st)
	}
}

// TestBootstrapReserveForKnownDevices: a client ID that KnownDevice
// recognizes (a known device re-enrolling) gets a reserved slot, one per
// device: it is admitted when every pool slot is held by active clients,
// and newcomers never displace it.
func TestBootstrapReserveForKnownDevices(t *testing.T) {
	known := func(clientID string) (string, bool) {
		if strings.HasPrefix(clientID, "e-known-") {
			return "dev-known", true
		}
		return "", false
	}
	e := startBroker(t, func(c *Config) {
		c.MaxBootstrapPerSource, c.MaxBootstrapClients, c.BootstrapReserve, c.KnownDevice = 2, 2, 1, known
	})
	h1 := e.mustClient(t, "boot-h1", nil)
	h2 := e.mustClient(t, "boot-h2", nil)
	if _, err := e.client(t, "boot-unknown", nil, nil); err == nil {
		t.Fatal("an unknown newcomer was admitted into a full pool")
	}
	k := e.mustClient(t, "e-known-1", nil)
	if _, err := e.client(t, "e-known-2", nil, nil); err == nil {
		t.Fatal("a second reserved session for one device")
	}
	if !h1.IsConnectionOpen() || !h2.IsConnectionOpen() || !k.IsConnectionOpen() {
		t.Fatal("a session was closed")
	}
	if st := e.b.Stats(); st.BootstrapReserved != 1 || st.BootstrapReserveUsed != 1 || st.BootstrapOverCap != 2 {
		t.Fatalf("stats = %+v", st)
	}

	// Newcomers that may displace anyone in the pool still never
	// displace a reserved session.
	e = startBroker(t, func(c *Config) {
		c.MaxBootstrapPerSource, c.MaxBootstrapClients, c.BootstrapReserve, c.KnownDevice = 2, 2, 1, known
		c.BootstrapDisplaceIdle = time.Nanosecond
	})
	k = e.mustClient(t, "e-known-1", nil)
	var churn []paho.Client
	for i := range 6 {
		churn = append(churn, e.mustClient(t, fmt.Sprintf("boot-churn-%d", i), nil))
	}
	gone(t, churn[0], "the oldest newcomer to be displaced")
	if !k.IsConnectionOpen() {
		t.Fatal("newcomers displaced the known device's reserved session")
	}
}
