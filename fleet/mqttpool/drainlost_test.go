package mqttpool_test

import (
	"context"
	"crypto/tls"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/sigil-iot/sigil/fleet/mqttpool"
	"github.com/sigil-iot/sigil/fleet/storage/lease"
	"github.com/sigil-iot/sigil/internal/wait"
)

// lostDrain is the Sessions of a replica that finds the session "dead01"
// expired and takes it, but whose every renewal of it fails: another
// replica, or the session's owner back, holds it now.
type lostDrain struct {
	mu       sync.Mutex
	acquired int
	retired  bool
}

func (*lostDrain) Hold(ctx context.Context, _ string, fn func(context.Context) error) error {
	return fn(ctx)
}
func (d *lostDrain) TryAcquire(_ context.Context, name string) (lease.Lease, bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.acquired++
	return lease.Lease{Name: name, Holder: "drainer", Epoch: 2}, true, nil
}
func (*lostDrain) Expired(_ context.Context, prefix string) ([]string, error) {
	return []string{prefix + "dead01"}, nil
}
func (*lostDrain) Renew(context.Context, lease.Lease) error { return lease.ErrLost }
func (d *lostDrain) Retire(context.Context, lease.Lease) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.retired = true
	return nil
}

// TestDrainLeavesASessionItNoLongerHolds: a drain whose lease is lost
// (renewals fail) leaves the dead session as it is, neither draining nor
// removing it nor retiring its lease: the replica that holds the lease
// now uses that session.
func TestDrainLeavesASessionItNoLongerHolds(t *testing.T) {
	e := newEnv(t)
	password, err := mqttpool.Secret(e.dataDir)
	if err != nil {
		t.Fatal(err)
	}
	clientID := mqttpool.Username + "-session-dead01"
	connect := func(clean bool) (mqtt.Client, bool) {
		o := mqtt.NewClientOptions().AddBroker("tls://" + e.dev.FleetAddr).SetClientID(clientID).
			SetUsername(mqttpool.Username).SetPassword(password).SetTLSConfig(&tls.Config{RootCAs: e.ca.Pool()}).
			SetProtocolVersion(4).SetAutoReconnect(false).SetCleanSession(clean)
		c := mqtt.NewClient(o)
		tok := c.Connect()
		if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("connect as %s: %v", clientID, tok.Error())
		}
		return c, tok.(*mqtt.ConnectToken).SessionPresent()
	}
	// The dead replica's session: persistent, subscribed.
	c, _ := connect(false)
	if tok := c.Subscribe("$share/sigil/"+e.topics.Filter("dev", "+", "up"), 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	c.Disconnect(100)

	s := &lostDrain{}
	p, err := mqttpool.New(mqttpool.Config{Devices: []string{e.dev.FleetAddr}, Username: mqttpool.Username, Password: password,
		TLS: &tls.Config{RootCAs: e.ca.Pool()}, Sessions: s, DrainEvery: 50 * time.Millisecond, DrainQuiet: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = p.Run(ctx); close(done) }()
	wait.For(t, "a drain to try the dead session", func() bool { s.mu.Lock(); defer s.mu.Unlock(); return s.acquired >= 3 })
	cancel()
	<-done
	s.mu.Lock()
	retired := s.retired
	s.mu.Unlock()
	if retired {
		t.Error("the lease of a session the drain no longer held was retired")
	}
	c, present := connect(false)
	c.Disconnect(100)
	if !present {
		t.Error("the drain removed a session it no longer held")
	}
}
