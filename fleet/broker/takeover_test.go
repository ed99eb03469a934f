package broker

import (
	"fmt"
	"sync"
	"testing"

	polling "github.com/sigil-iot/sigil/internal/wait" // this package has a func wait
)

// TestTakeoverAfterTheOldConnectionEnded: a connection with a client ID
// already in use waits until the old connection is gone before its session
// starts, so mochi's takeover (which races the old connection's own end and
// can drop the new client from mochi's table) is never used: the old
// client is not marked taken over, and the table holds the new one.
func TestTakeoverAfterTheOldConnectionEnded(t *testing.T) {
	e := startBroker(t, nil)
	got := e.fleetSub(t, topics.Filter("dev", "+", "up"))
	certA := e.ca.device(t, devA)
	e.mustClient(t, devA, &certA)
	first, ok := e.b.srv.Clients.Get(devA)
	if !ok {
		t.Fatal("first client not in mochi's table")
	}
	second := e.mustClient(t, devA, &certA)
	if first.IsTakenOver() {
		t.Fatal("mochi took the live session over: the old connection was not gone first")
	}
	if cl, ok := e.b.srv.Clients.Get(devA); !ok || cl == first {
		t.Fatalf("mochi's table holds %v (present %v), want the second client", cl, ok)
	}
	wait(t, second.Publish(topics.DeviceUp(devA, "hello"), 1, false, "after"))
	if m := polling.Recv(t, got, "the second connection's message"); m.payload != "after" || m.id.DeviceID != devA {
		t.Fatalf("got %+v", m)
	}
	if st := e.b.Stats(); st.DroppedInline != 0 {
		t.Fatalf("%d messages withheld from the fleet", st.DroppedInline)
	}
}

// TestReconnectWhileTheOldConnectionCloses: a device that opens its next
// connection while it closes the previous one (as sigild does when it
// switches to a renewed certificate) keeps talking to the fleet, time after
// time: every message of every new connection reaches the fleet's
// subscription, none is withheld.
func TestReconnectWhileTheOldConnectionCloses(t *testing.T) {
	e := startBroker(t, nil)
	got := e.fleetSub(t, topics.Filter("dev", "+", "up"))
	certA := e.ca.device(t, devA)
	cur := e.mustClient(t, devA, &certA)
	for i := range 40 {
		var wg sync.WaitGroup
		old := cur
		wg.Go(func() { old.Disconnect(0) })
		next := e.mustClient(t, devA, &certA)
		wg.Wait()
		cur = next
		want := fmt.Sprint("round ", i)
		wait(t, cur.Publish(topics.DeviceUp(devA, "hello"), 1, false, want))
		for {
			m := polling.Recv(t, got, "the new connection's message, round "+fmt.Sprint(i))
			if m.payload == want {
				break
			}
		}
	}
	if st := e.b.Stats(); st.DroppedInline != 0 {
		t.Fatalf("%d messages withheld from the fleet", st.DroppedInline)
	}
}
