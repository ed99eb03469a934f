package server

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
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
	// TelemetryFile keeps each device's telemetry cursor (stream and the
	// sequence up to which every point was stored or counted), so that a
	// restarted fleet still ingests every point exactly once.
	TelemetryFile = "telemetry.db"
	// AlertsFile holds the alert rules, alerts, dead letters and learned
	// baselines (fleet/alert).
	AlertsFile = "alerts.db"
)

// AlertSink is one entry of the alert_sinks configuration (sink.Config).
type AlertSink = sink.Config

// Sink types of AlertSink.Type.
const (
	SinkAlertmanager = sink.TypeAlertmanager
	SinkSyslog       = sink.TypeSyslog
	SinkWebhook      = sink.TypeWebhook
)

// openTelemetry opens the telemetry ingester (cursors in TelemetryFile),
// the alert engine (AlertsFile) with routes to the configured sinks, the
// alert feed between them and the shared metrics registry (the control
// plane's metrics join it once their parts exist: controlPlaneMetrics),
// and installs the default alert rules at first start.
func (s *Server) openTelemetry() error {
	s.Metrics = prometheus.NewRegistry()
	s.verdicts = map[string]prometheus.Counter{}
	var err error
	if s.cursors, err = telemetry.OpenCursors(filepath.Join(s.cfg.DataDir, TelemetryFile)); err != nil {
		return err
	}
	s.onClose(s.cursors.Close)
	routes, infos, closeSinks, err := sink.Routes(s.cfg.AlertSinks)
	if err != nil {
		return err
	}
	s.sinks = infos
	s.onClose(func() error { closeSinks(); return nil })
	s.Alerts, err = alert.Open(alert.Config{
		Path: filepath.Join(s.cfg.DataDir, AlertsFile), Routes: routes,
		Actions: alert.ActionsFunc(s.alertAction), Logger: s.log.With("component", "alert"),
		OnTransition: func(n alert.Notification) { s.rescore(n.Alert.DeviceID) }, // open alerts count in the risk score
		Flood:        s.cfg.AlertFlood.flood(),
	})
	if err != nil {
		return err
	}
	s.onClose(func() error { // after its Run returned: the stack unwinds when Run ends
		if err := s.Alerts.Close(); err != nil {
			s.log.Error("closing the alert store failed", "err", err)
		}
		return nil
	})
	if err := feed.InstallDefaultRules(s.Alerts, s.cursors, s.log); err != nil {
		return err
	}
	s.feed = feed.New(feed.Config{Engine: s.Alerts, CertLifetime: time.Duration(s.cfg.DeviceLifetime), Rescore: s.rescore,
		Forget: func(id string) { s.Telemetry.Forget(id) }, Logger: s.log})
	s.Telemetry, err = telemetry.New(telemetry.Config{
		Send: s.sendDevice, Metrics: s.Metrics, Cursors: s.cursors, OnBatch: s.feed.Batch,
		Logger: s.log.With("component", "telemetry"),
	})
	return err
}

// OnTelemetry registers a callback receiving every accepted telemetry batch
// after its points are stored and before it is acknowledged (for tests and
// benchmarks; nil removes it). It runs on an ingestion worker and must not
// block.
func (s *Server) OnTelemetry(f func(telemetry.Batch)) { s.feed.OnBatch(f) }

// Sinks describes the configured alert sinks (no secrets).
func (s *Server) Sinks() []sink.Info { return s.sinks }

// attestVerdict takes each recorded attestation verdict (attest's
// Config.Verdict) to the risk score, the console's chart, the secrets
// waiting for a current pass, the verdict counter and the alert feed.
func (s *Server) attestVerdict(deviceID string, rec *attest.Record) {
	s.rescore(deviceID) // verdicts count in the risk score
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

// alertAction carries out a rule's action on the alert's device:
// quarantine through attestation (as a failed attestation does), or
// revocation of every certificate it holds that has not expired, a
// renewed-away one too (it may enroll again from its EK). The inventory's
// lifecycle events record both, and so the audit log.
func (s *Server) alertAction(_ context.Context, action alert.Action, a alert.Alert) error {
	reason := fmt.Sprintf("alert %d (rule %s): %s", a.ID, a.RuleID, a.Summary)
	switch action {
	case alert.ActionQuarantine:
		return s.Attest.Quarantine(a.DeviceID, reason)
	case alert.ActionRevoke:
		if _, err := s.revoker().Revoke(a.DeviceID, inventory.ReasonUnspecified, "by "+reason); err != nil {
			return fmt.Errorf("server: %w", err)
		}
		return nil
	}
	return fmt.Errorf("server: unknown alert action %q", action)
}

// controlPlaneMetrics registers the fleet's own metrics on the shared
// registry, next to the ingester's aggregates. Every value is fleet-level:
// no device label.
//
//	sigil_broker_connections                MQTT clients connected now
//	sigil_broker_device_connections         of which devices
//	sigil_broker_bootstrap_connections      TLS connections without a certificate open now
//	sigil_broker_auth_refusals_total        CONNECTs refused
//	sigil_broker_acl_denials_total          publishes and subscriptions refused
//	sigil_broker_handshake_failures_total   TLS handshakes that failed
//	sigil_broker_malformed_packets_total    connections ended by a malformed MQTT packet
//	sigil_broker_bootstrap_reserved         reserved bootstrap sessions of known devices open now
//	sigil_broker_bootstrap_over_cap_total   bootstrap connections displaced or left without a slot
//	sigil_broker_bootstrap_expired_total    bootstrap connections closed at their first-message deadline or lifetime
//	sigil_broker_messages_withheld_total    messages the broker received but withheld from the fleet (sender gone or not allowed)
//	sigil_enroll_requests_total             enrollment requests
//	sigil_enroll_enrolled_total             devices enrolled
//	sigil_enroll_refused_total              enrollments refused
//	sigil_enroll_pending_total              enrollments held for approval
//	sigil_enroll_malformed_total            enrollment messages that did not decode
//	sigil_enroll_busy_total                 enrollment requests answered rate_limited: the queue was full
//	sigil_log_lines_suppressed_total        log lines clients without certificate caused, counted instead of written
//	sigil_audit_anonymous_left_out_total    audit entries of requests without a credential counted, not recorded one by one
//	sigil_attestation_verdicts_total{result} recorded verdicts, pass or fail
//	sigil_attestation_evidence_dropped_total evidence dropped, its queue full for too long
//	sigil_quarantines_total                 devices quarantined
//	sigil_renewals_total                    certificates renewed
//	sigil_alerts_fired_total, _deduplicated_total, _resolved_total, _held_total
//	sigil_alert_notifications_delivered_total, _retried_total, _dead_lettered_total
//	sigil_alert_actions_failed_total
//	sigil_alert_notifications_queued        notifications waiting for their sinks
//	sigil_alert_feed_queued                 telemetry batches waiting for alert evaluation
//	process_*, go_*                         the process's CPU, memory, file descriptors and Go runtime (metrics.RegisterProcess)
func (s *Server) controlPlaneMetrics() error {
	r := s.Metrics
	b := s.transport.Stats
	e := s.Enroll.Stats()
	a := s.Alerts.Stats
	u := func(v uint64) float64 { return float64(v) }
	gauges := []struct {
		name, help string
		fn         func() float64
	}{
		{"sigil_broker_connections", "MQTT clients connected now.", func() float64 { return float64(b().Connections) }},
		{"sigil_broker_device_connections", "Devices connected now.", func() float64 { return float64(b().DeviceConnections) }},
		{"sigil_broker_bootstrap_connections", "TLS connections without a device certificate open now.", func() float64 { return float64(b().BootstrapConnections) }},
		{"sigil_broker_bootstrap_reserved", "Reserved bootstrap sessions of known devices open now.", func() float64 { return float64(b().BootstrapReserved) }},
		{"sigil_alert_notifications_queued", "Alert notifications waiting for their sinks.", func() float64 { return float64(a().Queued) }},
		{"sigil_alert_feed_queued", "Telemetry batches waiting for alert evaluation.", func() float64 { return float64(s.feed.Queued()) }},
	}
	counters := []struct {
		name, help string
		fn         func() float64
	}{
		{"sigil_broker_auth_refusals_total", "MQTT CONNECTs refused.", func() float64 { return u(b().AuthRefusals) }},
		{"sigil_broker_acl_denials_total", "MQTT publishes and subscriptions refused by the ACL.", func() float64 { return u(b().ACLDenials) }},
		{"sigil_broker_handshake_failures_total", "TLS handshakes that failed or timed out.", func() float64 { return u(b().HandshakeFailures) }},
		{"sigil_broker_bootstrap_over_cap_total", "Bootstrap connections displaced, or closed without a slot, because a cap was reached.", func() float64 { return u(b().BootstrapOverCap) }},
		{"sigil_broker_bootstrap_expired_total", "Bootstrap connections closed at their first-message deadline or lifetime.", func() float64 { return u(b().BootstrapExpired) }},
		{"sigil_broker_malformed_packets_total", "MQTT connections ended by a malformed packet or a protocol violation.", func() float64 { return u(b().MalformedPackets) }},
		{"sigil_broker_messages_withheld_total", "Messages the broker received but withheld from the fleet: their sender was gone or not allowed.", func() float64 { return u(b().DroppedInline) }},
		{"sigil_enroll_requests_total", "Enrollment requests received.", func() float64 { return float64(e.Requests.Load()) }},
		{"sigil_enroll_enrolled_total", "Devices enrolled.", func() float64 { return float64(e.Enrolled.Load()) }},
		{"sigil_enroll_refused_total", "Enrollments refused.", func() float64 { return float64(e.Refused.Load()) }},
		{"sigil_enroll_pending_total", "Enrollments held for an operator's approval.", func() float64 { return float64(e.Pending.Load()) }},
		{"sigil_enroll_malformed_total", "Enrollment messages that did not decode.", func() float64 { return float64(e.Malformed.Load()) }},
		{"sigil_enroll_busy_total", "Enrollment requests answered rate_limited, unhandled: the queue was full (the device asks again).", func() float64 { return float64(e.RequestsBusy.Load()) }},
		{"sigil_log_lines_suppressed_total", "Log lines about clients without certificate (refusals, malformed messages) counted instead of written.", func() float64 {
			return u(b().LogSuppressed + s.Enroll.LogSuppressed())
		}},
		{"sigil_audit_anonymous_left_out_total", "Audit entries of API requests without a credential counted instead of recorded one by one (each interval's count is one audit.sampled entry).", func() float64 {
			return u(s.anonAudit.Suppressed())
		}},
		{"sigil_attestation_evidence_dropped_total", "Attestation evidence dropped: its queue stayed full (the device attests again on its schedule).", func() float64 {
			return u(s.Attest.Stats().EvidenceDropped)
		}},
		{"sigil_quarantines_total", "Devices quarantined.", func() float64 { return u(s.feed.Quarantines()) }},
		{"sigil_renewals_total", "Device certificates renewed.", func() float64 { return u(s.feed.Renewals()) }},
		{"sigil_alerts_fired_total", "Alerts opened.", func() float64 { return u(a().Fired) }},
		{"sigil_alerts_deduplicated_total", "Firings absorbed by an open alert.", func() float64 { return u(a().Deduplicated) }},
		{"sigil_alerts_resolved_total", "Alerts resolved.", func() float64 { return u(a().Resolved) }},
		{"sigil_alerts_held_total", "New alerts flood control held back (each counted in its rule's summary alert).", func() float64 { return u(a().Held) }},
		{"sigil_alert_notifications_delivered_total", "Alert notifications a sink accepted.", func() float64 { return u(a().Delivered) }},
		{"sigil_alert_notifications_retried_total", "Failed alert deliveries that were retried.", func() float64 { return u(a().Retried) }},
		{"sigil_alert_notifications_dead_lettered_total", "Alert notifications recorded as dead letters.", func() float64 { return u(a().DeadLettered) }},
		{"sigil_alert_actions_failed_total", "Alert rule actions that failed.", func() float64 { return u(a().ActionsFailed) }},
	}
	errs := []error{metrics.RegisterProcess(r)}
	for _, g := range gauges {
		errs = append(errs, r.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: g.name, Help: g.help}, g.fn)))
	}
	for _, c := range counters {
		errs = append(errs, r.Register(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: c.name, Help: c.help}, c.fn)))
	}
	vec := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sigil_attestation_verdicts_total", Help: "Attestation verdicts recorded, by result."}, []string{"result"})
	errs = append(errs, r.Register(vec))
	for _, res := range []string{wire.VerdictPass, wire.VerdictFail} {
		s.verdicts[res] = vec.WithLabelValues(res)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("server: metrics: %w", err)
	}
	return nil
}
