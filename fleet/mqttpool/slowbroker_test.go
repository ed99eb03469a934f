package mqttpool_test

import (
	"context"
	"crypto/tls"
	"errors"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/mqttpool"
	"github.com/sigil-iot/sigil/internal/wait"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// TestPoolSlowBrokerHoldsNoWorker: a broker that stops reading (its
// process stopped, as a Mosquitto dropping outgoing messages under load)
// holds none of the pool's workers: replies published to it while
// handling messages do not stop the messages of devices on another broker
// from being handled, even those of a sender whose worker sent them.
func TestPoolSlowBrokerHoldsNoWorker(t *testing.T) {
	e := newEnv(t)
	secret, err := mqttpool.Secret(e.dataDir)
	if err != nil {
		t.Fatal(err)
	}
	p, err := mqttpool.New(mqttpool.Config{Devices: []string{e.dev.FleetAddr}, Bootstrap: []string{e.boot.FleetAddr},
		Username: mqttpool.Username, Password: secret, TLS: &tls.Config{RootCAs: e.ca.Pool()}, Topics: e.topics,
		PublishTimeout: 2 * wait.Timeout}) // longer than any wait here: a worker waiting for the PUBACK stays held
	if err != nil {
		t.Fatal(err)
	}
	ids := []string{"dev0", "dev1", "dev2", "dev3"}
	gate := make(chan struct{})
	var mu sync.Mutex
	entered, devices := map[string]bool{}, map[string]bool{}
	late := false // a device's message handled only once the stopped broker's connection was given up
	if err := p.Subscribe(wire.SegEnroll, func(m mqttpool.Message) {
		mu.Lock()
		entered[m.Topic.ID] = true
		mu.Unlock()
		<-gate
		// The reply goes to the stopped broker; whether it is refused or
		// left to the broker's queue, the worker must move on.
		_ = p.Publish(e.topics.EnrollDown(m.Topic.ID, "challenge"), []byte("x"), 1)
	}); err != nil {
		t.Fatal(err)
	}
	if err := p.Subscribe(wire.SegDevice, func(m mqttpool.Message) {
		up, all := p.Connected()
		mu.Lock()
		devices[m.Topic.ID] = true
		late = late || up < all
		mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = p.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	wait.For(t, "the pool to subscribe on both brokers", p.Ready)

	// Each bootstrap client's message is held in its worker until the
	// bootstrap broker is stopped; a device of the same ID goes to the
	// same worker.
	for _, id := range ids {
		boot := e.client(t, e.boot.Addr, id, &tls.Config{RootCAs: e.ca.Pool()})
		publish(t, boot, e.topics.EnrollUp(id, "enroll"), "hello")
	}
	wait.For(t, "every bootstrap message in a worker", func() bool { mu.Lock(); defer mu.Unlock(); return len(entered) == len(ids) })
	pid := e.boot.Pid()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGCONT) }) // before the pool stops and the broker is killed
	close(gate)

	start := time.Now()
	for _, id := range ids {
		publish(t, e.deviceClient(t, id, id), e.topics.DeviceUp(id, "telemetry"), "1")
	}
	wait.For(t, "every device's message handled while the bootstrap broker is stopped", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(devices) == len(ids)
	})
	mu.Lock()
	defer mu.Unlock()
	if late {
		t.Fatalf("devices' messages were handled only once the connection to the stopped broker was lost (after %v): its replies held the workers", time.Since(start))
	}
}

// TestPoolPublishToAStoppedBrokerFailsFast: once a broker that stopped
// reading has as much as its send queue holds, Publish fails at once with
// ErrBusy (a failed send to its callers) instead of waiting for it.
func TestPoolPublishToAStoppedBrokerFailsFast(t *testing.T) {
	e := newEnv(t)
	secret, err := mqttpool.Secret(e.dataDir)
	if err != nil {
		t.Fatal(err)
	}
	p, err := mqttpool.New(mqttpool.Config{Devices: []string{e.dev.FleetAddr}, Bootstrap: []string{e.boot.FleetAddr},
		Username: mqttpool.Username, Password: secret, TLS: &tls.Config{RootCAs: e.ca.Pool()}, Topics: e.topics,
		PublishTimeout: 2 * wait.Timeout})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = p.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	wait.For(t, "the pool to connect", p.Ready)
	pid := e.dev.Pid()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGCONT) })
	payload := make([]byte, 64<<10) // fills the connection's socket buffers in a few hundred
	for i := range 100_000 {
		err := p.Publish(e.topics.DeviceDown("deva", "x"), payload, 1)
		if errors.Is(err, mqttpool.ErrBusy) {
			t.Logf("busy after %d messages", i)
			return
		}
		if err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	t.Fatal("Publish never refused a message to the stopped broker")
}
