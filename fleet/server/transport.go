package server

import (
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/sigil-iot/sigil/fleet/broker"
	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/fleet/mqttpool"
	"github.com/sigil-iot/sigil/fleet/storage/lease"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// Transport is what the fleet uses of the MQTT layer between it and its
// devices: the embedded broker (fleet/broker, the default) or a pool of
// Mosquitto brokers the fleet connects to (mqttpool.Transport). Whatever the
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

// The broker pool, when configured, is the other Transport.
var _ Transport = (*mqttpool.Transport)(nil)

// BrokerPool is the broker_pool configuration (Config.BrokerPool).
type BrokerPool = mqttpool.Settings

// openPool connects the fleet to its broker pool instead of building the
// embedded broker (openBroker).
func (s *Server) openPool() (err error) {
	var sessions mqttpool.Sessions // nil: clean sessions, one process
	if ls, ok := s.leases.(*lease.Postgres); ok {
		sessions = ls // replicas: each one's session under a lease, drained if it dies
	}
	s.transport, err = mqttpool.NewTransport(mqttpool.TransportConfig{
		Sessions: sessions, Events: s.governanceEvent, // clone detection: the brokers' connection log
		Settings: *s.cfg.BrokerPool, DataDir: s.cfg.DataDir, RootsFunc: s.CA.Pool, Topics: s.topics, Inventory: s.Inv,
		Hello: func(id string, at time.Time) {
			if s.Attest != nil {
				s.Attest.Hello(id, at)
			}
		},
		Logger: s.log.With("component", "broker_pool"),
	})
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	return nil
}

// BrokersReady reports whether the fleet can reach its devices: always
// with the embedded broker (once Ready); with a pool, once it is
// connected to every broker and subscribed there.
func (s *Server) BrokersReady() bool {
	if t, ok := s.transport.(*mqttpool.Transport); ok {
		return t.Ready()
	}
	return true
}

// staleSession handles a message a device sent, through the broker pool,
// on a session its certificate no longer allows
// (admission.ErrStaleSession): the session is ended
// (mqttpool.Transport.KickStale).
func (s *Server) staleSession(deviceID string) {
	s.log.Info("device message dropped: the device holds no current certificate; ending its session", "device_id", deviceID)
	if t, ok := s.transport.(*mqttpool.Transport); ok {
		t.KickStale(deviceID)
	}
}

// BrokerConfig writes the configuration of a broker of the pool into out
// (`sigil broker-config`, mqttpool.WriteConfig): m's role, directory,
// listeners and names for its certificate given; the topic tree, CA and
// fleet credentials from cfg's data directory, which must hold the fleet
// CA already (`sigil serve` creates it).
func BrokerConfig(cfg Config, m mqttpool.Member, names []string, crl []byte, out string) ([]string, error) {
	cfg.setDefaults()
	if _, err := os.Stat(filepath.Join(cfg.DataDir, CACertFile)); err != nil {
		return nil, fmt.Errorf("server: no fleet CA in %s (start sigil serve once first): %w", cfg.DataDir, err)
	}
	c, err := ca.Open(ca.Config{Dir: filepath.Join(cfg.DataDir, "ca"), TrustDomain: cfg.TrustDomain})
	if err != nil {
		return nil, err
	}
	m.Topics = wire.Topics{Prefix: cfg.TopicPrefix}
	return mqttpool.WriteConfig(c, cfg.DataDir, m, names, crl, out)
}
