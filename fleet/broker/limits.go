package broker

import (
	"time"

	"github.com/sigil-iot/sigil/pkg/config"
)

// BootstrapLimits are the bounds of the connections without a device
// certificate as `sigil serve`'s configuration names them (docs/CONFIG.md);
// zero values take Config's defaults. Apply sets them on a Config.
type BootstrapLimits struct {
	// BootstrapClients caps the pool of bootstrap connections (default
	// 1000) and BootstrapPerSource one source's share (default 256); at a
	// cap a newcomer displaces the least active connection if it has been
	// inactive for 10s.
	BootstrapClients   int `json:"bootstrap_clients"`
	BootstrapPerSource int `json:"bootstrap_per_source"`
	// BootstrapReserve is the sessions kept beyond the pool for known
	// devices that re-enroll, one per device (default 64).
	BootstrapReserve int `json:"bootstrap_reserve"`
	// BootstrapKeepaliveMax is the longest keepalive a bootstrap client
	// may ask for; none (0) is refused. Default 2m.
	BootstrapKeepaliveMax config.Duration `json:"bootstrap_keepalive_max"`
	// BootstrapFirstMessage is how long a bootstrap client may wait after
	// its CONNECT before its first enrollment message (default 30s), and
	// BootstrapLifetime how long a bootstrap connection lasts at most
	// (default 5m).
	BootstrapFirstMessage config.Duration `json:"bootstrap_first_message"`
	BootstrapLifetime     config.Duration `json:"bootstrap_lifetime"`
}

// Apply sets the limits on c.
func (l BootstrapLimits) Apply(c *Config) {
	c.MaxBootstrapClients, c.MaxBootstrapPerSource, c.BootstrapReserve = l.BootstrapClients, l.BootstrapPerSource, l.BootstrapReserve
	c.MaxBootstrapKeepalive = time.Duration(l.BootstrapKeepaliveMax)
	c.BootstrapFirstMessage, c.BootstrapLifetime = time.Duration(l.BootstrapFirstMessage), time.Duration(l.BootstrapLifetime)
}
