package inventory

import (
	"context"
	"time"
)

// SetConnected records what a device's session shows: whether it is
// connected now, and that it was seen at at.
func (s *Store) SetConnected(ctx context.Context, id string, connected bool, at time.Time) error {
	return s.Update(ctx, id, func(d *Device) error {
		d.LastSeen = at
		d.Connected = connected
		return nil
	})
}

// Hello records a device's hello: seen at at, the protocol version of its
// envelope (Device.Protocol: a device may have upgraded or rolled back its
// daemon since it last spoke), and the firmware version it reports, taken
// for an active device (reported, not proved: policies judge the
// measurements). It reports whether the record's firmware version
// changed, and the one it had before.
func (s *Store) Hello(ctx context.Context, id, firmware string, protocol int, at time.Time) (previous string, changed bool, err error) {
	err = s.Update(ctx, id, func(d *Device) error {
		previous, changed = d.Firmware, false
		if firmware != "" && d.Firmware != firmware && d.State == StateActive {
			d.Firmware, changed = firmware, true
		}
		if protocol > 0 {
			d.Protocol = protocol
		}
		d.LastSeen = at
		return nil
	})
	return previous, changed, err
}
