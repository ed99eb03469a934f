package broker

import (
	"bytes"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	polling "github.com/sigil-iot/sigil/internal/wait" // this package has a func wait
)

// teardownGate is a mochi hook for TestReconnectDuringTeardown: it holds
// the first connection of a client ID in its own teardown — after mochi
// decided to delete its session, before it does — until a second
// connection with that ID has established its session (or a while
// passes), the interleaving a device reconnecting at once (a renewal, a
// reboot) met in the scale runs.
type teardownGate struct {
	mqtt.HookBase
	first       atomic.Pointer[mqtt.Client] // set by the test while the broker runs
	held        atomic.Bool
	inTeardown  chan struct{}
	established chan struct{}
}

func (h *teardownGate) ID() string { return "test-teardown-gate" }

func (h *teardownGate) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnUnsubscribed, mqtt.OnSessionEstablished}, []byte{b})
}

func (h *teardownGate) OnUnsubscribed(cl *mqtt.Client, _ packets.Packet) {
	if cl != h.first.Load() {
		return
	}
	if h.held.Swap(true) {
		return // mochi's takeover calls again, for the newcomer: not held
	}
	close(h.inTeardown)
	select {
	case <-h.established:
	case <-time.After(3 * time.Second): // the broker makes the newcomer wait for this teardown
	}
}

func (h *teardownGate) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	if first := h.first.Load(); first != nil && cl.ID == first.ID && cl != first {
		close(h.established)
	}
}

// TestReconnectDuringTeardown: a device that connects again while its
// previous connection is still being torn down (it closed it to reconnect
// on a renewed certificate) keeps its new session. mochi's session
// takeover raced the old connection's teardown, which then deleted the
// new session from the broker's client table and its subscriptions: the
// device's messages were acknowledged (QoS 1) yet withheld from the fleet,
// and the fleet's never reached it, until it reconnected. Found by
// sigil-sim bench fleet: one device in a thousand after a forced re-key,
// stuck out of a firmware campaign.
func TestReconnectDuringTeardown(t *testing.T) {
	e := startBroker(t, nil)
	got := e.fleetSub(t, topics.Filter("dev", "+", "up"))
	gate := &teardownGate{inTeardown: make(chan struct{}), established: make(chan struct{})}
	if err := e.b.srv.AddHook(gate, nil); err != nil {
		t.Fatal(err)
	}
	certA := e.ca.device(t, devA)
	a := e.mustClient(t, devA, &certA)
	wait(t, a.Subscribe(topics.Filter("dev", devA, "down"), 1, nil))
	first, ok := e.b.srv.Clients.Get(devA)
	if !ok {
		t.Fatal("no session for the first connection")
	}
	gate.first.Store(first)
	a.Disconnect(0)
	polling.Recv(t, gate.inTeardown, "the first connection's teardown")

	renewed := e.ca.device(t, devA)
	down := make(chan string, 10)
	b, err := e.client(t, devA, &renewed, func(o *paho.ClientOptions) {
		o.SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { down <- string(m.Payload()) })
	})
	if err != nil {
		t.Fatal(err)
	}
	wait(t, b.Subscribe(topics.Filter("dev", devA, "down"), 1, nil))
	// The first connection's teardown is over once the listener let go of it.
	eventually(t, "the first connection released", func() bool {
		e.b.ln.mu.Lock()
		defer e.b.ln.mu.Unlock()
		return len(e.b.ln.conns) == 1
	})

	wait(t, b.Publish(topics.DeviceUp(devA, "hello"), 1, false, "after renewal"))
	if m := polling.Recv(t, got, "the renewed session's message at the fleet"); m.payload != "after renewal" || m.id.DeviceID != devA {
		t.Fatalf("got %+v", m)
	}
	if st := e.b.Stats(); st.DroppedInline != 0 {
		t.Fatalf("%d messages withheld from the fleet", st.DroppedInline)
	}
	if err := e.b.Publish(topics.DeviceDown(devA, "attest"), []byte("challenge"), 1); err != nil {
		t.Fatal(err)
	}
	if m := polling.Recv(t, down, "the fleet's message at the renewed session"); m != "challenge" {
		t.Fatalf("got %q", m)
	}
}
