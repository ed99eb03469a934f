// Package admission decides, from the inventory, what the fleet lets an
// enrolled device do over MQTT: connect (Gate, the broker's gate) and have
// each of its messages served (Check). Both read the device's record as
// the inventory holds it now: whatever was admitted earlier, a device
// quarantined, decommissioned or revoked since is held to its new state.
package admission

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/sigil-iot/sigil/fleet/broker"
	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// Devices is what admission reads of the inventory (*inventory.Store).
type Devices interface {
	Device(ctx context.Context, id string) (*inventory.Device, error)
	State(ctx context.Context, id string) (inventory.State, error)
}

var _ Devices = (*inventory.Store)(nil)

// Issuers tells the CA generation that issued a certificate (ca.CA); an
// error for a retired generation's.
type Issuers interface {
	Issuer(cert *x509.Certificate) (ca.Generation, error)
}

// Gate is the broker's gate (broker.Gate): it admits a holder of a fleet
// certificate (the TLS layer verified the chain and expiry) only if the
// fleet issued that serial to the device and it is still current
// (inventory.Device.Admits: not revoked — quarantine, decommissioning,
// re-enrollment and renewal revoke — nor expired; a certificate of the
// fleet CA never issued to the device is refused), and only while the
// device is active (fully) or quarantined (only to prove itself:
// inventory.QuarantinedKinds).
type Gate struct {
	Devices Devices
	CA      Issuers
}

var _ broker.Gate = Gate{}

// AdmitDevice implements broker.Gate.
func (g Gate) AdmitDevice(deviceID string, cert *x509.Certificate) (broker.Access, error) {
	d, err := g.Devices.Device(context.TODO(), deviceID)
	if err != nil {
		return broker.Access{}, fmt.Errorf("unknown device: %w", err)
	}
	if _, err := g.CA.Issuer(cert); err != nil {
		return broker.Access{}, err // a retired CA generation: enroll again
	}
	serial := hex.EncodeToString(cert.SerialNumber.Bytes())
	if !d.Admits(serial, time.Now()) {
		return broker.Access{}, fmt.Errorf("certificate %s not issued to this device, revoked or expired", serial)
	}
	switch d.State {
	case inventory.StateActive:
		return broker.Access{}, nil
	case inventory.StateQuarantined:
		return broker.Access{UpKinds: inventory.QuarantinedKinds()}, nil
	}
	return broker.Access{}, fmt.Errorf("device %s", d.State)
}

// AdmitActive admits only a device the gate gives full access: a fleet
// certificate it holds, and active, not quarantined (firmware downloads).
func (g Gate) AdmitActive(deviceID string, cert *x509.Certificate) error {
	acc, err := g.AdmitDevice(deviceID, cert)
	if err == nil && acc.UpKinds != nil {
		err = errors.New("device quarantined")
	}
	return err
}

// Errors of Check.
var (
	// ErrStaleSession: a session through a broker pool whose device no
	// longer holds a current certificate.
	ErrStaleSession = errors.New("admission: the session's certificate is no longer current")
	// ErrRefused: the message's type does not travel on its topic's kind,
	// or the device's state does not accept that kind.
	ErrRefused = errors.New("admission: the device's state or the topic does not allow the message")
)

// Check decides whether a message of type typ that the device of id sent
// on the up-topic kind is served, and returns the device's state (also
// with ErrRefused). A message is served only if its type belongs to the
// kind it came on (UpKind) and the device's state, as the inventory holds
// it now, accepts that kind (inventory.State.Accepts). For a session
// whose certificate the broker verified it reads the state alone; for
// one through a broker pool (id.Cert nil: the pool reports no
// certificate, and Mosquitto keeps a session open after its certificate
// is revoked) the whole record, to check that the device still holds a
// current certificate (ErrStaleSession otherwise).
func Check(ctx context.Context, devs Devices, id broker.Identity, typ, kind string) (inventory.State, error) {
	var st inventory.State
	if id.Cert != nil {
		var err error
		if st, err = devs.State(ctx, id.DeviceID); err != nil {
			return "", err
		}
	} else {
		d, err := devs.Device(ctx, id.DeviceID)
		if err != nil {
			return "", err
		}
		if !holdsCurrentCert(d, time.Now()) {
			return "", ErrStaleSession
		}
		st = d.State
	}
	if UpKind(typ) != kind || !st.Accepts(kind) {
		return st, ErrRefused
	}
	return st, nil
}

// holdsCurrentCert reports whether a certificate the fleet issued to d is
// still current.
func holdsCurrentCert(d *inventory.Device, now time.Time) bool {
	for _, c := range d.Certificates() {
		if d.Admits(c.Serial, now) {
			return true
		}
	}
	return false
}

// UpKind is the up-topic kind a device message of type typ travels on
// ("" for a type devices do not send), as the protocol's registry says.
func UpKind(typ string) string {
	if m, ok := wire.Lookup(typ); ok && m.Segment == wire.SegDevice && m.Dir == wire.Up {
		return m.Kind
	}
	return ""
}
