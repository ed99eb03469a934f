package auth

import (
	"time"

	"github.com/sigil-iot/sigil/pkg/config"
)

// ThrottleConfig is the login_throttle configuration of `sigil serve`:
// how failed logins slow down and lock out further attempts (Throttle).
type ThrottleConfig struct {
	// Failures is how many failed logins for one user name from one source
	// address lock that pair out for Lockout. Default 5.
	Failures int `json:"failures"`
	// Lockout is how long a locked-out pair waits. Default 15m.
	Lockout config.Duration `json:"lockout"`
	// BaseDelay is the wait after a name's first failure from an address,
	// doubled by each further one (up to a minute). Default 1s.
	BaseDelay config.Duration `json:"base_delay"`
}

// Throttle is the service's Throttle for the configuration (its defaults
// for zero fields).
func (c ThrottleConfig) Throttle() Throttle {
	return Throttle{Failures: c.Failures, Lockout: time.Duration(c.Lockout), BaseDelay: time.Duration(c.BaseDelay)}
}
