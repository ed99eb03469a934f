package server

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/sigil-iot/sigil/fleet/approval"
	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
)

// Audit files in DataDir: the checkpoint key and its public key
// (audit.OpenKey).
const (
	AuditKeyFile  = audit.KeyFile
	AuditPubFile  = audit.PubFile
	ApprovalsFile = approval.File
)

// openAudit opens the hash-chained audit log with its checkpoint key
// (created on first start, 0600), writes the public key beside it, and
// builds the sampler of anonymous requests' entries.
func (s *Server) openAudit() error {
	key, err := audit.OpenKey(s.cfg.DataDir)
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	cfg := audit.Config{Path: filepath.Join(s.cfg.DataDir, audit.File), Signer: key, Leases: s.leases, Logger: s.log.With("component", "audit")}
	// Closed after Run's shutdown checkpoint: the stack unwinds when Run returns.
	if s.Audit, err = openStore(s, func(ctx context.Context, db *postgres.DB) (*audit.Log, error) {
		return audit.OpenPostgres(ctx, db, cfg)
	},
		func() (*audit.Log, error) { return audit.Open(cfg) }); err != nil {
		return err
	}
	s.anonAudit = audit.NewSampler(s.Audit, audit.SamplerConfig{})
	return nil
}

// auditEvent copies an inventory lifecycle event into the audit log: the
// device lifecycle (enrolled, renewed, revoked, quarantined, released,
// secret delivered, …) as the fleet recorded it.
func (s *Server) auditEvent(e inventory.Event) {
	entry := audit.New(audit.System("fleet"), "device."+e.Kind, e.DeviceID)
	if e.Detail != "" {
		entry = entry.With("detail", e.Detail)
	}
	if err := s.Audit.Record(context.Background(), entry); err != nil {
		s.log.Error("audit: recording a lifecycle event failed", "device_id", e.DeviceID, "kind", e.Kind, "err", err)
	}
}
