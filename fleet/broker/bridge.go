package broker

import (
	"crypto/x509"
	"strings"

	"github.com/sigil-iot/sigil/pkg/wire"
)

// A bridge is a plant MQTT broker (Mosquitto's bridge) that carries a
// site's devices' messages to the fleet. It presents a bridge certificate
// of the fleet CA (identity.BridgeFromCertificate: URI SAN
// spiffe://<trust domain>/bridge/<site>), connects with the client ID
// identity.BridgeClientID(site) ("bridge-<site>"), must be admitted by
// Config.Bridges (nil refuses every bridge), and may publish and subscribe
// only under its site's prefix, SitePrefix: <prefix>/site/<site>/, where
// the plant broker remaps its local tree (docs/BRIDGES.md). It reaches no
// device's own topics, no other site's, nothing outside its prefix, and
// never counts as a device or a bootstrap client.

// BridgeGate decides whether a bridge with a valid certificate may
// connect (bridge.Service.Admit, bound to a context by the fleet).
type BridgeGate interface {
	// AdmitBridge returns nil to admit the bridge of site presenting cert;
	// its error is logged and reported in a Refused event, never sent to
	// the client.
	AdmitBridge(site string, cert *x509.Certificate) error
}

// BridgeGateFunc adapts a function to BridgeGate.
type BridgeGateFunc func(site string, cert *x509.Certificate) error

// AdmitBridge calls f.
func (f BridgeGateFunc) AdmitBridge(site string, cert *x509.Certificate) error { return f(site, cert) }

// SitePrefix is the part of the fleet's topic tree where the bridge of
// site publishes and subscribes: "<prefix>/site/<site>/".
func SitePrefix(t wire.Topics, site string) string {
	p := t.Prefix
	if p == "" {
		p = wire.DefaultPrefix
	}
	return p + "/site/" + site + "/"
}

// bridgeKey is a bridge's key in Broker.gen: no device ID holds ':'.
func bridgeKey(site string) string { return "bridge:" + site }

// connKey is the key of an identity's connections in Broker.gen.
func (id Identity) connKey() string {
	if id.Site != "" {
		return bridgeKey(id.Site)
	}
	return id.DeviceID
}

// allowedBridge applies a bridge's topic rule: a topic name (write) or
// filter (read) strictly under its site's prefix, whose own levels hold no
// wildcard (a filter may end in one).
func (b *Broker) allowedBridge(id Identity, topic string, write bool) bool {
	if !wire.ValidID(id.Site) {
		return false
	}
	p := SitePrefix(b.cfg.Topics, id.Site)
	rest, ok := strings.CutPrefix(topic, p)
	if !ok || rest == "" {
		return false
	}
	return !write || !strings.ContainsAny(rest, "+#")
}

// DisconnectBridge closes every connection of a site's bridge now (after a
// revocation). To keep it out, make Config.Bridges refuse it first.
// A nil Broker (a fleet on a broker pool, where bridges are not admitted)
// does nothing.
func (b *Broker) DisconnectBridge(site string) {
	if b == nil {
		return
	}
	b.mu.Lock()
	b.gen[bridgeKey(site)]++ // a CONNECT being admitted right now is refused too
	var cs []*conn
	for c := range b.bridgeConns[site] {
		cs = append(cs, c)
	}
	b.mu.Unlock()
	b.closeConns(cs)
	if len(cs) > 0 {
		b.log.Info("broker: bridge disconnected by fleet", "client_id", "bridge-"+site, "connections", len(cs))
	}
}

// BridgeConnected reports whether the bridge of site has an admitted
// connection.
func (b *Broker) BridgeConnected(site string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.bridgeConns[site]) > 0
}
