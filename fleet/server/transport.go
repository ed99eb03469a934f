package server

import (
	"context"
	"crypto/x509"
	"net"

	"github.com/sigil-iot/sigil/fleet/broker"
)

// Transport is what the fleet uses of the MQTT layer between it and its
// devices: the embedded broker (fleet/broker, the default) or a pool of
// Mosquitto brokers the fleet connects to (poolTransport). Whatever the
// implementation, a message handed to a Subscribe handler carries the
// sender's identity as the broker authenticated it, never as the payload
// claims it.
type Transport interface {
	// Start binds and starts serving; Run then runs until ctx ends and
	// closes what Start opened.
	Start() error
	Run(ctx context.Context) error
	// Publish sends a message on a topic (a device's or a bootstrap
	// client's down topic).
	Publish(topic string, payload []byte, qos byte) error
	// Subscribe delivers the messages on filter with their sender's
	// identity to handler; called before Run.
	Subscribe(filter string, handler func(id broker.Identity, topic string, payload []byte)) error
	// Disconnect ends a device's session, if it has one.
	Disconnect(deviceID string)
	// Connected reports whether a device holds a session now;
	// ConnectedDevices lists those for which keep (nil: all) holds.
	Connected(deviceID string) bool
	ConnectedDevices(keep func(deviceID string, cert *x509.Certificate) bool) []string
	// Stats are the counters the metrics export.
	Stats() broker.Stats
	// Addr is the address devices connect to.
	Addr() net.Addr
}

// The embedded broker is the default Transport.
var _ Transport = (*broker.Broker)(nil)
