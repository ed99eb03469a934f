package server

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sigil-iot/sigil/fleet/alert"
	"github.com/sigil-iot/sigil/fleet/alert/feed"
	"github.com/sigil-iot/sigil/fleet/alert/sink"
	"github.com/sigil-iot/sigil/fleet/attest"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/metrics"
	"github.com/sigil-iot/sigil/fleet/telemetry"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// Telemetry and alerting files, relative to DataDir.
const (
	TelemetryFile = feed.TelemetryFile
	AlertsFile    = feed.AlertsFile
)

// AlertSink is one entry of the alert_sinks configuration (sink.Config).
type AlertSink = sink.Config

// Sink types of AlertSink.Type.
const (
	SinkAlertmanager = sink.TypeAlertmanager
	SinkSyslog       = sink.TypeSyslog
	SinkWebhook      = sink.TypeWebhook
)

// openTelemetry opens telemetry and alerting (feed.OpenPipeline) with the
// shared metrics registry (the control plane's metrics join it once their
// parts exist: controlPlaneMetrics).
func (s *Server) openTelemetry() error {
	s.Metrics = prometheus.NewRegistry()
	p, err := feed.OpenPipeline(feed.PipelineConfig{
		Dir: s.cfg.DataDir, Database: s.db, Leases: s.leases, Bus: s.bus, Sinks: s.cfg.AlertSinks, Flood: s.cfg.AlertFlood.Flood(), Actions: s.alertActions(),
		OnTransition: func(n alert.Notification) { s.rescore(n.Alert.DeviceID) }, // open alerts count in the risk score
		CertLifetime: time.Duration(s.cfg.DeviceLifetime), Rescore: s.rescore, Send: s.sendDevice, Metrics: s.Metrics, Logger: s.log,
	})
	if err != nil {
		return err
	}
	s.onClose(p.Close) // after the Runs returned: the stack unwinds when Run ends
	s.Telemetry, s.Alerts, s.feed, s.sinks = p.Telemetry, p.Alerts, p.Feed, p.Sinks
	return nil
}

// OnTelemetry registers a callback receiving every accepted telemetry batch
// after its points are stored and before it is acknowledged (for tests and
// benchmarks; nil removes it). It runs on an ingestion worker and must not
// block.
func (s *Server) OnTelemetry(f func(telemetry.Batch)) { s.feed.OnBatch(f) }

// Sinks describes the configured alert sinks (no secrets).
func (s *Server) Sinks() []sink.Info { return s.sinks }

// attestVerdict takes each recorded attestation verdict (attest's
// Config.Verdict) to the risk score, the exposure service, the console's
// chart, the secrets waiting for a pass, the verdict counter, the alerts.
func (s *Server) attestVerdict(deviceID string, rec *attest.Record) {
	s.rescore(deviceID)          // verdicts count in the risk score
	s.fw.Attested(deviceID, rec) // a change of release may expose it (rollout)
	if f := s.consoleVerdict.Load(); f != nil {
		(*f)(deviceID, rec, 0)
	}
	if rec.Result == wire.VerdictPass && s.secretSvc != nil {
		s.secretSvc.Queue(deviceID) // secrets wait for a current pass (attest.Service.Current)
	}
	if s.feed == nil {
		return
	}
	if c := s.verdicts[rec.Result]; c != nil {
		c.Inc() // an unexpected result is not exported
	}
	s.feed.Verdict(deviceID, rec)
}

// attestAlert takes attest's other alerts (its Config.Alert) to the feed.
func (s *Server) attestAlert(a attest.Alert) {
	if s.feed != nil {
		s.feed.AttestAlert(a)
	}
}

// inventoryEvent is the inventory's event hook: the audit log's copy, then
// the alerting's view.
func (s *Server) inventoryEvent(e inventory.Event) {
	s.auditEvent(e)
	if s.feed != nil {
		s.feed.Lifecycle(e)
	}
	s.rescore(e.DeviceID) // a lifecycle change (state, certificate, flags) moves the risk score
}

// alertActions carries out alert rules' actions (feed.Actions):
// quarantine through attestation, revocation as governance revokes.
func (s *Server) alertActions() feed.Actions {
	return feed.Actions{Quarantine: func(id, reason string) error { return s.Attest.Quarantine(id, reason) }, Revoker: s.revoker()}
}

// controlPlaneMetrics registers the fleet's own metrics on the shared
// registry (metrics.RegisterControlPlane) once their parts exist.
func (s *Server) controlPlaneMetrics() (err error) {
	s.verdicts, err = metrics.RegisterControlPlane(s.Metrics, metrics.ControlPlane{
		Broker: s.transport.Stats, Enroll: s.Enroll.Stats(), EnrollLogSuppressed: s.Enroll.LogSuppressed,
		Attest: s.Attest.Stats, Alerts: s.Alerts.Stats, Feed: s.feed, AnonymousAudit: s.anonAudit,
	})
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	return nil
}
