package mqttpool_test

import (
	"crypto/tls"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/fleet/mqttpool"
	"github.com/sigil-iot/sigil/fleet/mqttpool/mosquittotest"
)

// TestBootstrapBrokerBoundedByDefault: a bootstrap broker's configuration
// bounds its anonymous listener even when no bound is given (the embedded
// broker's bootstrap_clients, 1000); a device broker's listener is
// bounded only when asked.
func TestBootstrapBrokerBoundedByDefault(t *testing.T) {
	c := openCA(t, nil)
	for _, role := range []string{mqttpool.RoleBootstrap, mqttpool.RoleDevice} {
		m, err := mqttpool.Complete(c, t.TempDir(), mqttpool.Member{Role: role, Dir: "/etc/mosquitto/sigil", Listen: ":8883", FleetListen: "127.0.0.1:8884"}, []string{"127.0.0.1"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		files, _, err := m.Files()
		if err != nil {
			t.Fatal(err)
		}
		conf := string(files[mqttpool.ConfFile])
		bounded := strings.Contains(conf, "listener 8883\nmax_connections 1000\n")
		if want := role == mqttpool.RoleBootstrap; bounded != want || strings.Count(conf, "max_connections") != map[bool]int{true: 1}[want] {
			t.Errorf("%s broker: max_connections 1000 on its listener %v, want %v:\n%s", role, bounded, want, conf)
		}
	}
}

// TestBootstrapBrokerBounds: a real bootstrap broker takes no more
// anonymous connections than its bound.
func TestBootstrapBrokerBounds(t *testing.T) {
	dataDir := t.TempDir()
	c, err := ca.Open(ca.Config{Dir: filepath.Join(dataDir, "ca"), TrustDomain: "pool.test"})
	if err != nil {
		t.Fatal(err)
	}
	m, err := mqttpool.Complete(c, dataDir, mqttpool.Member{Role: mqttpool.RoleBootstrap, MaxConnections: 3}, []string{"127.0.0.1"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	b := mosquittotest.Start(t, m)
	connect := func(id string) (mqtt.Client, error) {
		o := mqtt.NewClientOptions().AddBroker("tls://" + b.Addr).SetClientID(id).SetTLSConfig(&tls.Config{RootCAs: c.Pool()}).
			SetProtocolVersion(4).SetAutoReconnect(false).SetCleanSession(true).SetConnectTimeout(10 * time.Second)
		cl := mqtt.NewClient(o)
		tok := cl.Connect()
		if !tok.WaitTimeout(20 * time.Second) {
			return nil, fmt.Errorf("no CONNACK")
		}
		if tok.Error() == nil {
			t.Cleanup(func() { cl.Disconnect(100) })
		}
		return cl, tok.Error()
	}
	for i := range 3 {
		if _, err := connect(fmt.Sprintf("e-client-%d", i)); err != nil {
			t.Fatalf("bootstrap client %d of 3: %v", i, err)
		}
	}
	if _, err := connect("e-client-over"); err == nil {
		t.Fatal("a fourth bootstrap client was accepted past max_connections 3")
	}
}
