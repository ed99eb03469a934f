// Package downlink is the fleet's one way to send a message to an enrolled
// device: in the protocol version the device speaks. The fleet's services
// encode their messages at wire.Version; Send re-encodes each for the
// version the inventory holds for the device (the one it last spoke,
// inventory.Device.Protocol), and refuses, rather than trims, a message
// that version cannot carry (wire.ErrNeedsVersion), so that a device of
// the previous release never gets what it would refuse, and nothing the
// fleet means to say is dropped without an error its sender sees.
package downlink

import (
	"context"
	"fmt"

	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// Devices tells the protocol version to speak to a device
// (*inventory.Store).
type Devices interface {
	Protocol(ctx context.Context, id string) (int, error)
}

var _ Devices = (*inventory.Store)(nil)

// Publish publishes a payload on a topic at QoS 1 (the fleet's transport).
type Publish func(topic string, payload []byte, qos byte) error

// Send publishes payload, a message encoded at wire.Version, on topic, a
// down topic of the device of id, in the protocol version the device
// speaks (wire.Downgrade). An unknown device, a version the fleet does not
// speak and a message that version cannot carry are errors; nothing is
// published then.
func Send(ctx context.Context, devs Devices, publish Publish, id, topic string, payload []byte) error {
	v, err := devs.Protocol(ctx, id)
	if err != nil {
		return fmt.Errorf("downlink: device %s: %w", id, err)
	}
	b, err := wire.Downgrade(payload, v)
	if err != nil {
		return fmt.Errorf("downlink: device %s: %w", id, err)
	}
	return publish(topic, b, 1)
}
