package server

import (
	"context"
	"encoding/hex"
	"errors"
	"path/filepath"
	"time"

	"github.com/sigil-iot/sigil/fleet/alert/feed"
	"github.com/sigil-iot/sigil/fleet/broker"
	"github.com/sigil-iot/sigil/fleet/governance"
	"github.com/sigil-iot/sigil/fleet/inventory"
)

// GovernanceFile holds owners, the triage and block lists, clone incidents
// and risk scores, relative to DataDir.
const GovernanceFile = "governance.db"

// openGovernance opens identity governance over the inventory, the broker
// and the attestation history; it is called once these exist.
func (s *Server) openGovernance() error {
	c := s.cfg.GovernanceConfig
	var err error
	s.Governance, err = governance.Open(governance.Config{
		Path:    filepath.Join(s.cfg.DataDir, GovernanceFile),
		Devices: s.Inv, Revoker: s.revoker(),
		Quarantiner:  governance.InventoryQuarantiner{Inventory: s.Inv, Disconnect: s.transport.Disconnect},
		Enroller:     governance.TriageEnroller{},
		Connected:    s.transport.Connected,
		Alerter:      governance.AlerterFunc(s.governanceAlert),
		Attestations: s.history,
		Anomalies:    feed.Anomalies{Alerts: s.Alerts},
		Exposure:     feed.Exposure{Telemetry: s.Telemetry, Alerts: s.Alerts},
		Firmware:     s.firmwareTarget(),
		CertLifetime: time.Duration(s.cfg.DeviceLifetime),
		DormantAfter: time.Duration(c.DormantAfter), RevokeDormant: c.DormantRevoke,
		SilentAfter: time.Duration(c.SilentAfter), SweepInterval: time.Duration(c.GovernanceInterval),
		Logger: s.log.With("component", "governance"),
	})
	if err == nil {
		s.onClose(s.Governance.Close)
	}
	return err
}

// revoker revokes a device for governance and for alert rules: every
// unexpired certificate (inventory.Store.RevokeDevice), its sessions
// closed.
func (s *Server) revoker() governance.InventoryRevoker {
	return governance.InventoryRevoker{Inventory: s.Inv, Disconnect: s.transport.Disconnect}
}

// rescore tells governance that a device's risk inputs changed: its
// score is computed again within seconds (governance.Service.Rescore),
// not at the next sweep.
func (s *Server) rescore(deviceID string) {
	if g := s.Governance; g != nil {
		g.Rescore(deviceID)
	}
}

// governanceAlert takes governance's findings. A device's finding is
// recorded as a lifecycle event of the device (and so in the audit log)
// and, when raised, handed to the alert engine as a security event;
// fleet-wide findings (shadow devices) are only logged, by governance.
func (s *Server) governanceAlert(a governance.Alert) {
	if a.DeviceID == "" {
		return
	}
	kind := a.Kind
	if a.Resolved {
		kind += "-resolved"
	}
	err := s.Inv.AddEvent(context.TODO(), inventory.Event{Time: a.Time, DeviceID: a.DeviceID, Kind: kind, Detail: a.Summary})
	if err != nil && !errors.Is(err, inventory.ErrNotFound) {
		s.log.Warn("governance: recording a finding failed", "device_id", a.DeviceID, "kind", kind, "err", err)
	}
	if a.Resolved {
		return
	}
	if s.feed != nil {
		s.feed.Governance(a)
	}
}

// governanceEvent feeds broker events to governance: every admitted
// device connection opens and closes a session (certificate clones), and
// refused connections from identities the fleet does not know go to the
// triage list. It runs on the broker's connection goroutines: governance
// works in memory here, and the inventory is only read.
func (s *Server) governanceEvent(ev broker.Event) {
	g := s.Governance
	if g == nil || ev.Identity.Fleet {
		return
	}
	id := ev.Identity
	switch ev.Kind {
	case broker.Connected:
		if id.DeviceID != "" && id.Cert != nil {
			g.SessionOpened(governance.Session{DeviceID: id.DeviceID, CertSerial: certSerial(id), Remote: ev.Remote, Time: ev.Time})
		}
	case broker.Disconnected, broker.Closed:
		if id.DeviceID != "" && id.Cert != nil {
			g.SessionClosed(governance.Session{DeviceID: id.DeviceID, CertSerial: certSerial(id), Remote: ev.Remote, Time: ev.Time})
		}
	case broker.Refused:
		a := governance.Attempt{ClientID: id.ClientID, Remote: ev.Remote, Reason: ev.Reason, Time: ev.Time}
		switch {
		case ev.Presented != nil:
			a.Kind, a.Cert = governance.AttemptForeignCert, ev.Presented
		case id.DeviceID != "":
			// A device certificate of this fleet: a shadow only when the
			// inventory does not hold the device (refusals of known
			// devices — revoked, quarantined, retired — are their own
			// business).
			if _, err := s.Inv.Device(context.TODO(), id.DeviceID); !errors.Is(err, inventory.ErrNotFound) {
				return
			}
			a.Kind, a.Cert = governance.AttemptUnknownDevice, id.Cert
		default:
			a.Kind = governance.AttemptUnknownClient
		}
		if err := g.Observe(a); err != nil {
			s.log.Debug("governance: attempt not recorded", "err", err)
		}
	}
}

func certSerial(id broker.Identity) string { return hex.EncodeToString(id.Cert.SerialNumber.Bytes()) }

// screen is the broker's Screen (governance.Service.Screen): the broker
// is built before governance.
func (s *Server) screen(clientID, deviceID, remote string) error {
	if g := s.Governance; g != nil {
		return g.Screen(clientID, deviceID, remote)
	}
	return nil
}
