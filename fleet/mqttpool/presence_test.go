package mqttpool

import (
	"context"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/inventory"
)

// presenceInventory is an inventory of one device seen at a given time.
type presenceInventory struct{ d inventory.Device }

func (p *presenceInventory) Device(_ context.Context, id string) (*inventory.Device, error) {
	if id != p.d.ID {
		return nil, inventory.ErrNotFound
	}
	d := p.d
	return &d, nil
}

func (p *presenceInventory) ListDevices(context.Context, inventory.Filter) ([]inventory.Device, string, error) {
	return nil, "", nil
}

// TestConnectedAcrossReplicas: the shared subscriptions spread a
// device's messages over the replicas, so a replica may not have heard a
// device another one hears; what the replicas share tells it: a hello
// (LastSeen) or a verdict (LastAttested) recorded within the presence
// window counts the device as connected on every replica, unless this
// replica ended its sessions after that; older evidence does not.
func TestConnectedAcrossReplicas(t *testing.T) {
	const id = "feedface00000000feedface00000009"
	inv := &presenceInventory{d: inventory.Device{ID: id, State: inventory.StateActive}}
	tr := &Transport{inv: inv, heard: map[string]time.Time{}, gone: map[string]time.Time{}}
	if tr.Connected(id) {
		t.Fatal("a device never seen counts as connected")
	}
	inv.d.LastSeen = time.Now().Add(-time.Minute)
	if !tr.Connected(id) {
		t.Fatal("a device whose hello another replica recorded a minute ago does not count as connected")
	}
	inv.d.LastSeen = time.Now().Add(-presenceWindow - time.Minute)
	inv.d.LastAttested = time.Now().Add(-time.Minute)
	if !tr.Connected(id) {
		t.Fatal("a device another replica attested a minute ago does not count as connected")
	}
	inv.d.LastAttested = time.Now().Add(-presenceWindow - time.Minute)
	if tr.Connected(id) {
		t.Fatal("a device last seen before the presence window counts as connected")
	}
	inv.d.LastSeen = time.Now().Add(-time.Minute)
	tr.forget(id) // this replica ended its sessions after that hello
	if tr.Connected(id) {
		t.Fatal("a device whose sessions this replica ended counts as connected on evidence older than that")
	}
	inv.d.LastSeen = time.Now().Add(time.Millisecond)
	if !tr.Connected(id) {
		t.Fatal("a device seen again after its sessions ended does not count as connected")
	}
	tr.heard[id] = time.Now()
	if !tr.Connected(id) {
		t.Fatal("a device this replica heard does not count as connected")
	}
}
