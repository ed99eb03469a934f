package server

import (
	"context"
	"path/filepath"
	"time"

	"github.com/sigil-iot/sigil/fleet/alert/feed"
	"github.com/sigil-iot/sigil/fleet/broker"
	"github.com/sigil-iot/sigil/fleet/governance"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
)

// GovernanceFile holds owners, the triage and block lists, clone incidents
// and risk scores, relative to DataDir.
const GovernanceFile = governance.File

// openGovernance opens identity governance over the inventory, the broker
// and the attestation history; it is called once these exist.
func (s *Server) openGovernance() error {
	c := s.cfg.GovernanceConfig
	gcfg := governance.Config{
		Path:    filepath.Join(s.cfg.DataDir, GovernanceFile),
		Devices: s.Inv, Revoker: s.revoker(), Leases: s.leases, Bus: s.bus,
		Quarantiner:  governance.InventoryQuarantiner{Inventory: s.Inv, Disconnect: s.transport.Disconnect},
		Enroller:     governance.TriageEnroller{},
		Connected:    s.transport.Connected,
		Alerter:      governance.Findings{Events: s.Inv, Raise: s.feed.Governance, Logger: s.log},
		Attestations: s.history,
		Anomalies:    feed.Anomalies{Alerts: s.Alerts},
		Exposure:     feed.Exposure{Telemetry: s.Telemetry, Alerts: s.Alerts},
		Firmware:     s.firmwareTarget(),
		CertLifetime: time.Duration(s.cfg.DeviceLifetime),
		DormantAfter: time.Duration(c.DormantAfter), RevokeDormant: c.DormantRevoke,
		SilentAfter: time.Duration(c.SilentAfter), SweepInterval: time.Duration(c.GovernanceInterval),
		Logger: s.log.With("component", "governance"),
	}
	var err error
	s.Governance, err = openStore(s, func(ctx context.Context, db *postgres.DB) (*governance.Service, error) {
		return governance.OpenPostgres(ctx, db, gcfg)
	},
		func() (*governance.Service, error) { return governance.Open(gcfg) })
	return err
}

// revoker revokes a device for governance and for alert rules: every
// unexpired certificate (inventory.Store.RevokeDevice), its sessions
// closed.
func (s *Server) revoker() governance.InventoryRevoker {
	return governance.InventoryRevoker{Inventory: s.Inv, Disconnect: s.transport.Disconnect}
}

// rescore tells governance that a device's risk inputs changed: it is
// scored again within seconds (governance.Service.Rescore), not at a sweep.
func (s *Server) rescore(deviceID string) {
	if g := s.Governance; g != nil {
		g.Rescore(deviceID)
	}
}

// governanceEvent feeds broker events to governance
// (governance.Service.BrokerEvent) once it exists.
func (s *Server) governanceEvent(ev broker.Event) {
	if g := s.Governance; g != nil {
		g.BrokerEvent(ev)
	}
}

// screen is the broker's Screen (governance.Service.Screen): the broker
// is built before governance.
func (s *Server) screen(clientID, deviceID, remote string) error {
	if g := s.Governance; g != nil {
		return g.Screen(clientID, deviceID, remote)
	}
	return nil
}
