package governance

import (
	"context"
	"encoding/hex"
	"errors"
	"log/slog"

	"github.com/sigil-iot/sigil/fleet/broker"
	"github.com/sigil-iot/sigil/fleet/inventory"
)

// BrokerEvent takes the broker's connection events (broker.Config.Events,
// and the broker pool's sessions: mqttpool.TransportConfig.Events, which
// carry no certificate): every admitted device connection opens and
// closes a session (certificate clones), and refused connections from identities the fleet does not
// know go to the triage list. It runs on the broker's connection
// goroutines: the service works in memory here, and the inventory is only
// read.
func (s *Service) BrokerEvent(ev broker.Event) {
	id := ev.Identity
	if id.Fleet {
		return
	}
	switch ev.Kind {
	case broker.Connected:
		if id.DeviceID != "" {
			s.SessionOpened(Session{DeviceID: id.DeviceID, CertSerial: certSerial(id), Remote: ev.Remote, Time: ev.Time})
		}
	case broker.Disconnected, broker.Closed:
		if id.DeviceID != "" {
			s.SessionClosed(Session{DeviceID: id.DeviceID, CertSerial: certSerial(id), Remote: ev.Remote, Time: ev.Time})
		}
	case broker.Refused:
		a := Attempt{ClientID: id.ClientID, Remote: ev.Remote, Reason: ev.Reason, Time: ev.Time}
		switch {
		case ev.Presented != nil:
			a.Kind, a.Cert = AttemptForeignCert, ev.Presented
		case id.DeviceID != "":
			// A device certificate of this fleet: a shadow only when the
			// inventory does not hold the device (refusals of known
			// devices — revoked, quarantined, retired — are their own
			// business).
			if _, err := s.cfg.Devices.Device(context.TODO(), id.DeviceID); !errors.Is(err, inventory.ErrNotFound) {
				return
			}
			a.Kind, a.Cert = AttemptUnknownDevice, id.Cert
		default:
			a.Kind = AttemptUnknownClient
		}
		if err := s.Observe(a); err != nil {
			s.log.Debug("governance: attempt not recorded", "err", err)
		}
	}
}

// certSerial is the serial of the certificate id presented; "" when the
// event does not carry it (a broker pool's sessions, from its log).
func certSerial(id broker.Identity) string {
	if id.Cert == nil {
		return ""
	}
	return hex.EncodeToString(id.Cert.SerialNumber.Bytes())
}

// Events is what Findings records a device's finding in: the inventory's
// lifecycle events (*inventory.Store).
type Events interface {
	AddEvent(ctx context.Context, e inventory.Event) error
}

// Findings is the Alerter of `sigil serve`: a device's finding is recorded
// as a lifecycle event of the device (and so in the audit log) and, when
// raised, handed to Raise (the alert feed's security events); fleet-wide
// findings (shadow devices) are only logged, by the service.
type Findings struct {
	Events Events
	Raise  func(Alert) // nil: recorded only
	Logger *slog.Logger
}

var _ Alerter = Findings{}

// Alert implements Alerter.
func (f Findings) Alert(a Alert) {
	if a.DeviceID == "" {
		return
	}
	kind := a.Kind
	if a.Resolved {
		kind += "-resolved"
	}
	err := f.Events.AddEvent(context.TODO(), inventory.Event{Time: a.Time, DeviceID: a.DeviceID, Kind: kind, Detail: a.Summary})
	if err != nil && !errors.Is(err, inventory.ErrNotFound) && f.Logger != nil {
		f.Logger.Warn("governance: recording a finding failed", "device_id", a.DeviceID, "kind", kind, "err", err)
	}
	if a.Resolved || f.Raise == nil {
		return
	}
	f.Raise(a)
}
