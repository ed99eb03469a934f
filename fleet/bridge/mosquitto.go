package bridge

import (
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"strings"

	"github.com/sigil-iot/sigil/fleet/broker"
	"github.com/sigil-iot/sigil/pkg/identity"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// Gate is the broker's bridge gate over Admit (broker.Config.Bridges).
func (s *Service) Gate() broker.BridgeGate {
	return broker.BridgeGateFunc(func(site string, cert *x509.Certificate) error {
		return s.Admit(context.Background(), site, cert)
	})
}

// Plant describes a plant broker's bridge to the fleet, for
// MosquittoConf.
type Plant struct {
	// Site is the bridge's site (its credential's).
	Site string
	// Address is the fleet's MQTT listener, host:port; the host must be
	// a name or address the fleet's server certificate holds.
	Address string
	// CAFile, CertFile and KeyFile are the paths, on the plant broker, of
	// the fleet CA's certificate (the trust bundle), the bridge's
	// certificate and its private key.
	CAFile, CertFile, KeyFile string
	// Topics is the fleet's topic tree (prefix); the plant's devices use
	// the same prefix locally.
	Topics wire.Topics
}

// MosquittoConf returns the "connection" section of a Mosquitto
// configuration that bridges the plant's device and enrollment topics to
// the fleet (docs/BRIDGES.md explains each line): TLS with the bridge
// credential and the server's name checked, MQTT 3.1.1 without
// Mosquitto's private bridge flag (the fleet's broker refuses it), no
// notification messages (they lie outside the site's prefix), and the
// plant's local <prefix>/v1/... remapped to the fleet's
// <prefix>/site/<site>/v1/...: device-to-fleet topics out, fleet-to-device
// topics in, nothing else.
func MosquittoConf(p Plant) (string, error) {
	if !wire.ValidID(p.Site) {
		return "", fmt.Errorf("%w: site %q", ErrInvalid, p.Site)
	}
	if _, _, err := net.SplitHostPort(p.Address); err != nil {
		return "", fmt.Errorf("%w: address %q: %v", ErrInvalid, p.Address, err)
	}
	for _, f := range []string{p.CAFile, p.CertFile, p.KeyFile, p.Address} {
		if f == "" || strings.ContainsAny(f, " \t\r\n#") {
			return "", fmt.Errorf("%w: path or address %q", ErrInvalid, f)
		}
	}
	prefix := p.Topics.Prefix
	if prefix == "" {
		prefix = wire.DefaultPrefix
	}
	local, remote := prefix+"/", broker.SitePrefix(p.Topics, p.Site)
	var b strings.Builder
	fmt.Fprintf(&b, "# Sigil OT bridge of site %s to the fleet (docs/BRIDGES.md).\n", p.Site)
	fmt.Fprintf(&b, "connection sigil-%s\n", p.Site)
	fmt.Fprintf(&b, "address %s\n", p.Address)
	fmt.Fprintf(&b, "remote_clientid %s\n", identity.BridgeClientID(p.Site))
	b.WriteString("bridge_protocol_version mqttv311\n")
	b.WriteString("try_private false\n")
	b.WriteString("notifications false\n")
	b.WriteString("cleansession false\n")
	b.WriteString("restart_timeout 2 30\n")
	fmt.Fprintf(&b, "bridge_cafile %s\n", p.CAFile)
	fmt.Fprintf(&b, "bridge_certfile %s\n", p.CertFile)
	fmt.Fprintf(&b, "bridge_keyfile %s\n", p.KeyFile)
	b.WriteString("bridge_insecure false\n")
	for _, t := range []string{
		"v1/" + wire.SegDevice + "/+/" + wire.Up + "/# out",
		"v1/" + wire.SegDevice + "/+/" + wire.Down + "/# in",
		"v1/" + wire.SegEnroll + "/+/" + wire.Up + "/# out",
		"v1/" + wire.SegEnroll + "/+/" + wire.Down + "/# in",
	} {
		fmt.Fprintf(&b, "topic %s 1 %s %s\n", t, local, remote)
	}
	return b.String(), nil
}
