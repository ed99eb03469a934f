package rollout

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/sigil-iot/sigil/fleet/alert"
	"github.com/sigil-iot/sigil/fleet/attest"
	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/exposure"
	"github.com/sigil-iot/sigil/fleet/firmware"
	"github.com/sigil-iot/sigil/fleet/storage/boltdb"
	"github.com/sigil-iot/sigil/fleet/storage/kv"
)

// ExposureFile is the exposure store's bbolt file in Dir (release
// components and advisories); with Database its buckets share the release
// records' table (firmware.Table).
const ExposureFile = exposure.File

// openExposure opens the vulnerability exposure service (fleet/exposure)
// over the release store, the devices and their attestations.
func (s *Service) openExposure(cfg Config) error {
	var db kv.DB
	var err error
	if cfg.Database != nil {
		db, err = kv.Postgres(cfg.Database, firmware.Table, kv.Options{})
	} else {
		var b *boltdb.DB
		b, err = boltdb.Open(filepath.Join(cfg.Dir, ExposureFile), boltdb.Schema{Buckets: exposure.Buckets()}, boltdb.Options{Name: "exposure"})
		if err == nil {
			db = kv.Bolt(b)
		}
	}
	if err != nil {
		return fmt.Errorf("rollout: exposure store: %w", err)
	}
	svc, err := exposure.New(exposure.Config{DB: db, Releases: s.store, Devices: s.inv, Attestations: cfg.Attestations,
		Alerter: exposureAlerter{audit: cfg.Audit, alert: cfg.Alert, log: s.log, now: s.now}, Campaigns: s.campaigns, Now: s.now})
	if err != nil {
		db.Close()
		return err
	}
	s.exposure, s.exposureDB = svc, db
	return nil
}

// Exposure returns the vulnerability exposure service; nil when the
// service was opened without Attestations.
func (s *Service) Exposure() *exposure.Service {
	if s == nil {
		return nil
	}
	return s.exposure
}

// exposureAlerter raises an advisory that matches deployed devices (newly
// imported, or a device newly attested running an affected release): an
// alert event (alert.EventVulnerabilityExposed, keyed by its attribute
// "advisory": one open alert per device and advisory) for each exposed
// device, a warning in the log and an audit record.
type exposureAlerter struct {
	audit audit.Recorder
	alert func(attest.Alert)
	log   *slog.Logger
	now   func() time.Time
}

var _ exposure.Alerter = exposureAlerter{}

func (a exposureAlerter) Exposed(ctx context.Context, r *exposure.Report) error {
	a.log.Warn("exposure: an advisory matches deployed devices", "advisory", r.Advisory.ID, "devices", len(r.Devices))
	seen := map[string]bool{}
	for _, f := range r.Devices {
		if a.alert == nil || seen[f.DeviceID] {
			continue
		}
		seen[f.DeviceID] = true
		a.alert(attest.Alert{Time: a.now().UTC(), DeviceID: f.DeviceID, Kind: alert.EventVulnerabilityExposed, Severity: string(alert.SeverityWarning),
			Summary: fmt.Sprintf("%s: release %s runs %s", r.Advisory.ID, f.Version, f.Component.PURL), Attrs: map[string]string{"advisory": r.Advisory.ID}})
	}
	if a.audit == nil {
		return nil
	}
	detail := fmt.Sprintf("advisory %s matches %d deployed device(s)", r.Advisory.ID, len(seen))
	return a.audit.Record(ctx, audit.New(audit.System("exposure"), "exposure.alert", r.Advisory.ID).Because(detail))
}

// verdictQueue bounds the verdicts waiting for the exposure worker.
const verdictQueue = 4096

// Attested hands a recorded attestation verdict to the exposure service
// (exposure.Service.Attested), on the service's worker: a device that
// changes release may become exposed to advisories already imported. A
// verdict without a verified quote is not queued; a full queue drops the
// verdict (the device's next one is evaluated). Nil-safe, and a no-op
// when the exposure service is off; it does not block.
func (s *Service) Attested(deviceID string, rec *attest.Record) {
	if s == nil || s.exposure == nil || rec.PCRs["sha256"] == nil {
		return
	}
	r := *rec
	r.DeviceID = deviceID
	select {
	case s.verdicts <- r:
	default:
		s.log.Warn("exposure: verdict queue full; the device is evaluated at its next verdict", "device_id", deviceID)
	}
}

// verdictLoop evaluates queued verdicts until ctx ends.
func (s *Service) verdictLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case rec := <-s.verdicts:
			if err := s.exposure.Attested(ctx, &rec); err != nil && ctx.Err() == nil {
				s.log.Warn("exposure: evaluating a verdict failed", "device_id", rec.DeviceID, "err", err)
			}
		}
	}
}
