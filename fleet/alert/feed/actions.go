package feed

import (
	"context"
	"fmt"

	"github.com/sigil-iot/sigil/fleet/alert"
	"github.com/sigil-iot/sigil/fleet/governance"
	"github.com/sigil-iot/sigil/fleet/inventory"
)

// Actions carries out alert rules' actions on the alert's device
// (alert.Actions): quarantine through attestation (as a failed
// attestation does), or revocation of every certificate it holds that
// has not expired, a renewed-away one too (it may enroll again from its
// EK). The inventory's lifecycle events record both, and so the audit
// log.
type Actions struct {
	// Quarantine quarantines a device for reason
	// (attest.Service.Quarantine).
	Quarantine func(deviceID, reason string) error
	// Revoker revokes a device (governance.InventoryRevoker).
	Revoker governance.Revoker
}

var _ alert.Actions = Actions{}

// Act implements alert.Actions.
func (x Actions) Act(_ context.Context, action alert.Action, a alert.Alert) error {
	reason := fmt.Sprintf("alert %d (rule %s): %s", a.ID, a.RuleID, a.Summary)
	switch action {
	case alert.ActionQuarantine:
		return x.Quarantine(a.DeviceID, reason)
	case alert.ActionRevoke:
		if _, err := x.Revoker.Revoke(a.DeviceID, inventory.ReasonUnspecified, "by "+reason); err != nil {
			return fmt.Errorf("feed: %w", err)
		}
		return nil
	}
	return fmt.Errorf("feed: unknown alert action %q", action)
}
