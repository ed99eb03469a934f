package bridge

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/pkg/envelope"
	"github.com/sigil-iot/sigil/pkg/identity"
)

// Devices is what VerifyDevice reads of the inventory (*inventory.Store).
type Devices interface {
	Device(ctx context.Context, id string) (*inventory.Device, error)
}

// ErrNoCurrentCert: the device holds no current certificate the fleet
// can verify a bridged message with (none kept, revoked, expired, or the
// device is not one the fleet serves).
var ErrNoCurrentCert = errors.New("bridge: the device holds no current certificate")

// VerifyDevice verifies a bridged message from deviceID (the device ID in
// the topic it arrived on) against the device as the inventory holds it
// now, and returns the verified envelope with the device's state (which
// message kinds that state accepts is admission.Check's to decide). In
// order: the device is known and active or quarantined (its messages are
// served in no other state); its current certificate (CertDER) is kept,
// names deviceID in trustDomain, and is admitted (inventory.Device.Admits:
// issued to it, not revoked, not expired at now); then envelope.Verify
// with that certificate's key, its serial as key ID, the topic and the
// last counter accepted from the device (after). Any failure is an error:
// ErrNoCurrentCert, or envelope's (errors.Is). The caller stores the
// verified counter as the device's new after.
func VerifyDevice(ctx context.Context, devs Devices, trustDomain, deviceID, topic string, msg []byte, after uint64, now time.Time) (*envelope.Verified, inventory.State, error) {
	d, err := devs.Device(ctx, deviceID)
	if err != nil {
		return nil, "", fmt.Errorf("bridge: device %s: %w", deviceID, err)
	}
	v, _, err := verifyDevice(d, trustDomain, deviceID, topic, msg, after, now)
	return v, d.State, err
}

// verifyDevice is VerifyDevice on the device's record d; it returns the
// device's current certificate too.
func verifyDevice(d *inventory.Device, trustDomain, deviceID, topic string, msg []byte, after uint64, now time.Time) (*envelope.Verified, *x509.Certificate, error) {
	if d.State != inventory.StateActive && d.State != inventory.StateQuarantined {
		return nil, nil, fmt.Errorf("%w: device is %s", ErrNoCurrentCert, d.State)
	}
	if len(d.CertDER) == 0 {
		return nil, nil, fmt.Errorf("%w: none kept", ErrNoCurrentCert)
	}
	cert, err := x509.ParseCertificate(d.CertDER)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrNoCurrentCert, err)
	}
	serial := hex.EncodeToString(cert.SerialNumber.Bytes())
	if id, err := identity.FromCertificate(cert, trustDomain); err != nil || id != deviceID || serial != d.CertSerial {
		return nil, nil, fmt.Errorf("%w: the kept certificate is not the device's current one", ErrNoCurrentCert)
	}
	if !d.Admits(serial, now) {
		return nil, nil, fmt.Errorf("%w: certificate %s revoked or expired", ErrNoCurrentCert, serial)
	}
	v, err := envelope.Verify(msg, envelope.Expect{Key: cert.PublicKey, KeyID: serial, Topic: topic, After: after})
	if err != nil {
		return nil, nil, err
	}
	return v, cert, nil
}
