package enroll

import (
	"context"
	"crypto/x509"
	"errors"
	"strings"
	"time"

	"github.com/sigil-iot/sigil/fleet/inventory"
)

// BootstrapDevices is what Bootstrap reads of the inventory
// (*inventory.Store): enrollment tokens and the devices a bootstrap
// client ID names.
type BootstrapDevices interface {
	CheckToken(ctx context.Context, secret, model string, now time.Time) (*inventory.Token, error)
	TokenUsedBy(ctx context.Context, secret string) (string, error)
	ListDevices(ctx context.Context, f inventory.Filter) ([]inventory.Device, string, error)
}

var _ BootstrapDevices = (*inventory.Store)(nil)

// Bootstrap admits bootstrap (enrollment) clients at the broker: their
// credential at CONNECT (Credential, with bootstrap_credential) and the
// known devices that re-enroll from a reserved slot (Known).
type Bootstrap struct {
	Devices BootstrapDevices
	// TriageEnrolled reports whether operators decided to enroll a client
	// ID from the triage list (governance); nil: none did.
	TriageEnrolled func(clientID string) bool
}

// Credential is the broker's BootstrapAuth: it admits a bootstrap CONNECT
// with a claim certificate, or with an enrollment token as the password
// that is valid, or was used by the device this client ID names
// ("e-<first 16 hex of the device ID>-…"), so a known device can
// re-enroll; or a client ID operators decided to enroll from the triage
// list.
func (b Bootstrap) Credential(clientID, _ string, password []byte, claim *x509.Certificate) error {
	if claim != nil || (b.TriageEnrolled != nil && b.TriageEnrolled(clientID)) {
		return nil
	}
	if len(password) == 0 {
		return errors.New("enroll: no claim certificate and no enrollment token")
	}
	secret := string(password)
	if _, err := b.Devices.CheckToken(context.TODO(), secret, "", time.Now()); err == nil || errors.Is(err, inventory.ErrTokenBinding) {
		return nil // valid; its model binding is checked at enrollment
	}
	usedBy, err := b.Devices.TokenUsedBy(context.TODO(), secret)
	if err == nil && len(usedBy) >= 16 && strings.HasPrefix(clientID, "e-"+usedBy[:16]+"-") {
		return nil
	}
	return errors.New("enroll: enrollment token not valid")
}

// Known is the broker's KnownDevice: a bootstrap client ID of the form
// sigild uses, "e-<first 16 hex of the device ID>-<suffix>", that names a
// device of the inventory which may recover by enrolling again (active or
// quarantined: a revoked or expired certificate). It is a claim the
// client makes; it only buys a reserved bootstrap slot.
func (b Bootstrap) Known(clientID string) (string, bool) {
	rest, ok := strings.CutPrefix(clientID, "e-")
	if !ok || len(rest) < 17 || rest[16] != '-' {
		return "", false
	}
	prefix := rest[:16]
	if strings.Trim(prefix, "0123456789abcdef") != "" {
		return "", false
	}
	devs, _, err := b.Devices.ListDevices(context.TODO(), inventory.Filter{After: prefix, Limit: 1})
	if err != nil || len(devs) == 0 || !strings.HasPrefix(devs[0].ID, prefix) {
		return "", false
	}
	switch d := devs[0]; d.State {
	case inventory.StateActive, inventory.StateQuarantined:
		return d.ID, true
	}
	return "", false
}
