package broker

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net/url"
	"sync"
	"testing"

	paho "github.com/eclipse/paho.mqtt.golang"

	polling "github.com/sigil-iot/sigil/internal/wait"
	"github.com/sigil-iot/sigil/pkg/identity"
)

// bridgeLeaf issues a bridge certificate for site as the fleet's CA does.
func (ca *testCA) bridge(t *testing.T, site string) leaf {
	return ca.issue(t, &x509.Certificate{
		Subject: pkix.Name{CommonName: identity.BridgeClientID(site)}, URIs: []*url.URL{identity.BridgeSPIFFEID(trustDomain, site)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
}

// sites is a switchable bridge gate: it admits the sites it holds.
type sites struct {
	mu sync.Mutex
	ok map[string]bool
}

func (s *sites) AdmitBridge(site string, _ *x509.Certificate) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.ok[site] {
		return errors.New("not admitted")
	}
	return nil
}

func (s *sites) set(site string, ok bool) { s.mu.Lock(); s.ok[site] = ok; s.mu.Unlock() }

// TestBridgeOnlyReachesItsSite: a bridge certificate admitted by the gate
// connects only as bridge-<site>, subscribes and publishes only under
// sigil/site/<site>/; another site's prefix, the devices' own tree and
// wildcards above its prefix are refused, a refused publish disconnects
// it and never reaches the fleet, and what it publishes reaches the
// fleet with its site as identity.
func TestBridgeOnlyReachesItsSite(t *testing.T) {
	gate := &sites{ok: map[string]bool{"plant1": true, "plant2": true}}
	e := startBroker(t, func(c *Config) { c.Bridges = gate })
	b1 := e.ca.bridge(t, "plant1")

	if _, err := e.client(t, "bridge-plant2", &b1, nil); err == nil {
		t.Fatal("plant1's bridge connected as bridge-plant2")
	}
	if _, err := e.client(t, "plant1", &b1, nil); err == nil {
		t.Fatal("plant1's bridge connected with a client ID of its choice")
	}
	dev := e.ca.device(t, "d1")
	if _, err := e.client(t, "bridge-plant1", &dev, nil); err == nil {
		t.Fatal("a device connected as a bridge")
	}

	all := e.fleetSub(t, "#")
	c := e.mustClient(t, "bridge-plant1", &b1)
	for filter, want := range map[string]byte{
		"sigil/site/plant1/#":             1,
		"sigil/site/plant1/v1/dev/+/up/#": 1,
		"sigil/site/plant2/#":             0x80,
		"sigil/site/+/#":                  0x80,
		"sigil/site/#":                    0x80,
		"sigil/#":                         0x80,
		"#":                               0x80,
		"sigil/v1/dev/d1/down/#":          0x80,
		"sigil/site/plant1":               0x80,
		"$share/g/sigil/site/plant1/v1/#": 0x80,
	} {
		if got := subCode(t, c.Subscribe(filter, 1, nil)); got != want {
			t.Errorf("subscribe %q: SUBACK %#x, want %#x", filter, got, want)
		}
	}

	wait(t, c.Publish("sigil/site/plant1/v1/dev/d1/up/telemetry", 1, false, "ok"))
	got := polling.Recv(t, all, "the bridge's message at the fleet")
	if got.topic != "sigil/site/plant1/v1/dev/d1/up/telemetry" || got.id.Site != "plant1" || got.id.DeviceID != "" || got.id.Bootstrap() {
		t.Fatalf("fleet got %+v", got)
	}

	// The fleet's messages to the site reach the bridge, not a device.
	down := make(chan string, 10)
	if got := subCode(t, c.Subscribe("sigil/site/plant1/v1/dev/+/down/#", 1, func(_ paho.Client, m paho.Message) { down <- m.Topic() })); got != 1 {
		t.Fatalf("SUBACK %#x", got)
	}
	if err := e.b.Publish("sigil/site/plant1/v1/dev/d1/down/attest", []byte("x"), 1); err != nil {
		t.Fatal(err)
	}
	if tp := polling.Recv(t, down, "the fleet's message at the bridge"); tp != "sigil/site/plant1/v1/dev/d1/down/attest" {
		t.Fatalf("bridge got %q", tp)
	}
	<-all // the fleet's own message on "#"

	for _, topic := range []string{"sigil/site/plant2/v1/dev/d2/up/telemetry", "sigil/v1/dev/d1/up/telemetry", "sigil/v1/enroll/x/up/a"} {
		lost := make(chan struct{})
		c, err := e.client(t, "bridge-plant1", &b1, func(o *paho.ClientOptions) {
			o.SetConnectionLostHandler(func(paho.Client, error) { close(lost) })
		})
		if err != nil {
			t.Fatal(err)
		}
		c.Publish(topic, 1, false, "forged")
		polling.Recv(t, lost, "the bridge to be disconnected after publishing to "+topic)
	}
	// Nothing it was refused reached the fleet: the next message the
	// fleet sees is this one.
	c = e.mustClient(t, "bridge-plant1", &b1)
	wait(t, c.Publish("sigil/site/plant1/marker", 1, false, "marker"))
	if got := polling.Recv(t, all, "the marker"); got.topic != "sigil/site/plant1/marker" {
		t.Fatalf("the fleet received %+v", got)
	}
}

// TestBridgeRefusedAndCutOff: without a bridge gate no bridge connects; a
// bridge the gate no longer admits is cut off by DisconnectBridge at once
// and refused when it comes back; another site's bridge stays.
func TestBridgeRefusedAndCutOff(t *testing.T) {
	t.Run("NoGate", func(t *testing.T) {
		e := startBroker(t, nil)
		b1 := e.ca.bridge(t, "plant1")
		if _, err := e.client(t, "bridge-plant1", &b1, nil); err == nil {
			t.Fatal("a bridge connected to a broker without a bridge gate")
		}
	})
	gate := &sites{ok: map[string]bool{"plant1": true, "plant2": true}}
	e := startBroker(t, func(c *Config) { c.Bridges = gate })
	b1, b2 := e.ca.bridge(t, "plant1"), e.ca.bridge(t, "plant2")
	lost := make(chan struct{})
	if _, err := e.client(t, "bridge-plant1", &b1, func(o *paho.ClientOptions) {
		o.SetConnectionLostHandler(func(paho.Client, error) { close(lost) })
	}); err != nil {
		t.Fatal(err)
	}
	e.mustClient(t, "bridge-plant2", &b2)
	eventually(t, "both bridges connected", func() bool { return e.b.BridgeConnected("plant1") && e.b.BridgeConnected("plant2") })
	if n := e.b.Stats().DeviceConnections; n != 0 {
		t.Fatalf("bridges counted as %d devices", n)
	}

	gate.set("plant1", false)
	e.b.DisconnectBridge("plant1")
	polling.Recv(t, lost, "the revoked bridge to be cut off")
	if _, err := e.client(t, "bridge-plant1", &b1, nil); err == nil {
		t.Fatal("the revoked bridge connected again")
	}
	if !e.b.BridgeConnected("plant2") || e.b.BridgeConnected("plant1") {
		t.Fatal("DisconnectBridge touched the wrong bridge")
	}
}
