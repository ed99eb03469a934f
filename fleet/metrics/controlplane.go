package metrics

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sigil-iot/sigil/fleet/alert"
	"github.com/sigil-iot/sigil/fleet/attest"
	"github.com/sigil-iot/sigil/fleet/broker"
	"github.com/sigil-iot/sigil/fleet/enroll"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// ControlPlane are the sources of the fleet's own metrics
// (RegisterControlPlane): what each part counts.
type ControlPlane struct {
	Broker              func() broker.Stats // the MQTT layer's counters
	Enroll              *enroll.Stats
	EnrollLogSuppressed func() uint64
	Attest              func() attest.Stats
	Alerts              func() alert.Stats
	Feed                Feed
	AnonymousAudit      interface{ Suppressed() uint64 } // audit.Sampler
}

// Feed is what the control plane's metrics read of the alert feed
// (feed.Feed).
type Feed interface {
	Queued() int
	Quarantines() uint64
	Renewals() uint64
}

// RegisterControlPlane registers the fleet's own metrics and the process's
// (RegisterProcess) on r, next to the ingester's aggregates, and returns
// the attestation verdicts' counters by result (pass, fail). Every value
// is fleet-level: no device label.
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
//	sigil_enroll_busy_total                 enrollment requests answered rate_limited: the queue was full or too slow
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
func RegisterControlPlane(r prometheus.Registerer, c ControlPlane) (map[string]prometheus.Counter, error) {
	b, e, a := c.Broker, c.Enroll, c.Alerts
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
		{"sigil_alert_feed_queued", "Telemetry batches waiting for alert evaluation.", func() float64 { return float64(c.Feed.Queued()) }},
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
		{"sigil_enroll_busy_total", "Enrollment requests answered rate_limited, unhandled: the queue was full, or they waited in it too long (the device asks again).", func() float64 { return float64(e.RequestsBusy.Load()) }},
		{"sigil_log_lines_suppressed_total", "Log lines about clients without certificate (refusals, malformed messages) counted instead of written.", func() float64 {
			return u(b().LogSuppressed + c.EnrollLogSuppressed())
		}},
		{"sigil_audit_anonymous_left_out_total", "Audit entries of API requests without a credential counted instead of recorded one by one (each interval's count is one audit.sampled entry).", func() float64 {
			return u(c.AnonymousAudit.Suppressed())
		}},
		{"sigil_attestation_evidence_dropped_total", "Attestation evidence dropped: its queue stayed full (the device attests again on its schedule).", func() float64 {
			return u(c.Attest().EvidenceDropped)
		}},
		{"sigil_quarantines_total", "Devices quarantined.", func() float64 { return u(c.Feed.Quarantines()) }},
		{"sigil_renewals_total", "Device certificates renewed.", func() float64 { return u(c.Feed.Renewals()) }},
		{"sigil_alerts_fired_total", "Alerts opened.", func() float64 { return u(a().Fired) }},
		{"sigil_alerts_deduplicated_total", "Firings absorbed by an open alert.", func() float64 { return u(a().Deduplicated) }},
		{"sigil_alerts_resolved_total", "Alerts resolved.", func() float64 { return u(a().Resolved) }},
		{"sigil_alerts_held_total", "New alerts flood control held back (each counted in its rule's summary alert).", func() float64 { return u(a().Held) }},
		{"sigil_alert_notifications_delivered_total", "Alert notifications a sink accepted.", func() float64 { return u(a().Delivered) }},
		{"sigil_alert_notifications_retried_total", "Failed alert deliveries that were retried.", func() float64 { return u(a().Retried) }},
		{"sigil_alert_notifications_dead_lettered_total", "Alert notifications recorded as dead letters.", func() float64 { return u(a().DeadLettered) }},
		{"sigil_alert_actions_failed_total", "Alert rule actions that failed.", func() float64 { return u(a().ActionsFailed) }},
	}
	errs := []error{RegisterProcess(r)}
	for _, g := range gauges {
		errs = append(errs, r.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: g.name, Help: g.help}, g.fn)))
	}
	for _, c := range counters {
		errs = append(errs, r.Register(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: c.name, Help: c.help}, c.fn)))
	}
	vec := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sigil_attestation_verdicts_total", Help: "Attestation verdicts recorded, by result."}, []string{"result"})
	errs = append(errs, r.Register(vec))
	verdicts := map[string]prometheus.Counter{}
	for _, res := range []string{wire.VerdictPass, wire.VerdictFail} {
		verdicts[res] = vec.WithLabelValues(res)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	return verdicts, nil
}
