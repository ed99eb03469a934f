package governance

import "github.com/sigil-iot/sigil/pkg/config"

// Settings are the identity-governance settings of `sigil serve`'s
// configuration (docs/CONFIG.md: dormant_after, dormant_revoke,
// silent_after, governance_interval), which Config's fields of the same
// names take.
type Settings struct {
	// DormantAfter is how long a device holding a valid certificate may go
	// unseen before it is dormant (flagged and alerted). Default 720h.
	DormantAfter config.Duration `json:"dormant_after"`
	// DormantRevoke revokes a dormant device's certificates by policy
	// (every one that has not expired; the device may prove itself again
	// from its EK when it returns). Default false.
	DormantRevoke bool `json:"dormant_revoke"`
	// SilentAfter is how long a device may go unseen before silence
	// counts in its risk score. Default 1h.
	SilentAfter config.Duration `json:"silent_after"`
	// GovernanceInterval is how often every device is judged (orphaned,
	// dormant, clone-suspect) and its risk score stored. Default 1h.
	GovernanceInterval config.Duration `json:"governance_interval"`
}
