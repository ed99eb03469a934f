// Package feed reports what the fleet observes to the alert engine
// (fleet/alert): every point of accepted telemetry, in order, on one
// worker off the ingester's goroutines, and the security events that
// telemetry, attestation, the inventory's lifecycle and identity
// governance show. It counts the quarantines and renewals it sees for the
// fleet's metrics, and installs the default alert rules once, at the
// fleet's first start (InstallDefaultRules). The other way, it tells
// governance a device's open alerts and listening ports for its risk score
// (Anomalies, Exposure).
package feed

import (
	"context"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sigil-iot/sigil/fleet/alert"
	"github.com/sigil-iot/sigil/fleet/attest"
	"github.com/sigil-iot/sigil/fleet/governance"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/telemetry"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// Security events the feed reports to the alert engine besides the
// alert.Event* kinds; the default rules (Rules) alert on them.
const (
	// EventTelemetryDropped: a device's bounded outbox dropped points
	// (attribute "dropped": how many).
	EventTelemetryDropped = "telemetry-dropped"
	// EventReboot: a device's telemetry shows a new boot_id.
	EventReboot = "reboot"
	// EventQuarantined: a device was quarantined (attribute "reason").
	EventQuarantined = "quarantined"
)

// queueLen is how many accepted batches wait for evaluation before the
// ingester waits for the feed.
const queueLen = 1024

// maxAuthEvents bounds the auth-failure events one point reports.
const maxAuthEvents = 64

// Engine is what the feed needs of the alert engine (*alert.Engine).
type Engine interface {
	Observe(deviceID string, at time.Time, metrics map[string]float64, sets map[string][]string) error
	Event(deviceID, kind, severity string, at time.Time, attrs map[string]string) error
	Seen(deviceID string, at time.Time) error
	Forget(deviceID string) error
}

// Config configures a Feed. Engine is required.
type Config struct {
	Engine Engine
	// CertLifetime is the device certificate lifetime: a device whose
	// certificate has less than a sixth of it left is near expiry.
	CertLifetime time.Duration
	// Rescore tells governance that a device's risk inputs changed (its
	// listening ports); nil tells nobody.
	Rescore func(deviceID string)
	// Forget drops a decommissioned device's telemetry (the ingester's
	// Forget); nil drops nothing.
	Forget func(deviceID string)
	Logger *slog.Logger
}

// Feed is the alert engine's feed (package doc).
type Feed struct {
	cfg  Config
	log  *slog.Logger
	in   chan telemetry.Batch // accepted batches, in order
	done chan struct{}        // closed when Run stops

	onBatch atomic.Pointer[func(telemetry.Batch)]

	mu          sync.Mutex
	nearExpiry  map[string]bool // devices reported near certificate expiry
	quarantines atomic.Uint64
	renewals    atomic.Uint64
}

// New returns a feed; Run evaluates what Batch hands it.
func New(cfg Config) *Feed {
	f := &Feed{cfg: cfg, log: cfg.Logger, in: make(chan telemetry.Batch, queueLen), done: make(chan struct{}),
		nearExpiry: map[string]bool{}}
	if f.log == nil {
		f.log = slog.New(slog.DiscardHandler)
	}
	return f
}

// OnBatch registers a callback receiving every accepted telemetry batch
// after its points are stored and before it is acknowledged (for tests
// and benchmarks; nil removes it). It runs on an ingestion worker and must
// not block.
func (f *Feed) OnBatch(fn func(telemetry.Batch)) {
	if fn == nil {
		f.onBatch.Store(nil)
		return
	}
	f.onBatch.Store(&fn)
}

// Batch is the ingester's OnBatch: it hands the batch to the feed worker,
// waiting while the feed is full so that ingestion slows down (batches
// stay unacknowledged and devices resend) rather than the alert engine
// missing observations.
func (f *Feed) Batch(b telemetry.Batch) {
	if fn := f.onBatch.Load(); fn != nil {
		(*fn)(b)
	}
	select {
	case f.in <- b:
	case <-f.done:
	}
}

// Queued is how many batches wait for evaluation.
func (f *Feed) Queued() int { return len(f.in) }

// Quarantines and Renewals count the quarantines and certificate
// renewals the feed saw.
func (f *Feed) Quarantines() uint64 { return f.quarantines.Load() }

// Renewals: see Quarantines.
func (f *Feed) Renewals() uint64 { return f.renewals.Load() }

// Run evaluates accepted telemetry against the alert rules until ctx
// ends: each point is observed, and what a batch shows — dropped points, a
// reboot, failed local logins, a certificate near expiry — is reported as
// an event.
func (f *Feed) Run(ctx context.Context) error {
	defer close(f.done)
	for {
		select {
		case <-ctx.Done():
			return nil
		case b := <-f.in:
			f.observe(b)
		}
	}
}

func (f *Feed) rescore(deviceID string) {
	if f.cfg.Rescore != nil {
		f.cfg.Rescore(deviceID)
	}
}

func (f *Feed) observe(b telemetry.Batch) {
	id := b.DeviceID
	for i := range b.Points {
		if _, ok := b.Points[i].Sets["listen.tcp"]; ok {
			f.rescore(id) // listening ports count in the risk score
			break
		}
		if _, ok := b.Points[i].Sets["listen.udp"]; ok {
			f.rescore(id)
			break
		}
	}
	if b.Dropped > 0 {
		f.Event(id, EventTelemetryDropped, string(alert.SeverityWarning), time.Now(),
			map[string]string{"dropped": strconv.FormatUint(b.Dropped, 10)})
	}
	for i := range b.Points {
		p := &b.Points[i]
		m, sets := alertInputs(p)
		if err := f.cfg.Engine.Observe(id, p.Time, m, sets); err != nil {
			f.log.Warn("alert: observation not evaluated", "device_id", id, "err", err)
		}
		if n := p.Metrics["auth.failures"]; n >= 1 {
			for range min(int(n), maxAuthEvents) {
				f.Event(id, alert.EventAuthFailure, string(alert.SeverityWarning), p.Time, map[string]string{"source": "device log"})
			}
		}
		if v, ok := p.Metrics["cert.expiry_seconds"]; ok {
			f.certExpiry(id, p.Time, v)
		}
	}
	if b.Reboot {
		at := time.Now()
		if len(b.Points) > 0 {
			at = b.Points[len(b.Points)-1].Time
		}
		f.Event(id, EventReboot, string(alert.SeverityInfo), at, nil)
	}
}

// alertInputs maps a telemetry point to the names the alert rules use:
// every metric and set under its own name, plus alert.MetricCPU (percent,
// from cpu.busy) and alert.SetPorts ("tcp/22", "udp/53" from listen.tcp
// and listen.udp). Processes are not collected, so alert.SetProcesses is
// never reported (its rule stays silent).
func alertInputs(p *telemetry.Point) (map[string]float64, map[string][]string) {
	m := make(map[string]float64, len(p.Metrics)+1)
	for k, v := range p.Metrics {
		m[k] = v
	}
	if v, ok := p.Metrics["cpu.busy"]; ok {
		m[alert.MetricCPU] = v * 100
	}
	sets := make(map[string][]string, len(p.Sets)+1)
	var ports []string
	seen := false
	for k, v := range p.Sets {
		sets[k] = v
		if proto, ok := strings.CutPrefix(k, "listen."); ok && (proto == "tcp" || proto == "udp") {
			seen = true
			for _, port := range v {
				ports = append(ports, proto+"/"+port)
			}
		}
	}
	if seen {
		sets[alert.SetPorts] = ports
	}
	return m, sets
}

// certExpiry reports a certificate near expiry once the device's own
// count of seconds left falls below a sixth of the certificate lifetime
// (renewal starts at two thirds of it, so by then it is overdue), and its
// renewal once the count is above again.
func (f *Feed) certExpiry(deviceID string, at time.Time, seconds float64) {
	near := seconds < f.cfg.CertLifetime.Seconds()/6
	f.mu.Lock()
	was := f.nearExpiry[deviceID]
	if near {
		f.nearExpiry[deviceID] = true
	} else {
		delete(f.nearExpiry, deviceID)
	}
	f.mu.Unlock()
	switch {
	case near && !was:
		f.Event(deviceID, alert.EventCertNearExpiry, string(alert.SeverityWarning), at,
			map[string]string{"expires_in": (time.Duration(seconds) * time.Second).String()})
	case !near && was:
		f.Event(deviceID, alert.EventCertRenewed, string(alert.SeverityInfo), at, nil)
	}
}

// Event reports a security event; the engine logs what it cannot use.
func (f *Feed) Event(deviceID, kind, severity string, at time.Time, attrs map[string]string) {
	if err := f.cfg.Engine.Event(deviceID, kind, severity, at, attrs); err != nil {
		f.log.Warn("alert: event not evaluated", "device_id", deviceID, "kind", kind, "err", err)
	}
}

// Seen tells absence rules the device was heard from (its hello).
func (f *Feed) Seen(deviceID string) {
	if err := f.cfg.Engine.Seen(deviceID, time.Now()); err != nil {
		f.log.Warn("alert: seen not recorded", "device_id", deviceID, "err", err)
	}
}

// Verdict reports a recorded attestation verdict: a failure as
// alert.EventAttestationFailed, a pass as alert.EventAttestationPassed,
// which resolves the failure's alert.
func (f *Feed) Verdict(deviceID string, rec *attest.Record) {
	if rec.Result == wire.VerdictPass {
		f.Event(deviceID, alert.EventAttestationPassed, string(alert.SeverityInfo), rec.Time, nil)
		return
	}
	attrs := map[string]string{"reason": rec.Reason, "message": truncate(rec.Message, 256)}
	if rec.PolicyID != "" {
		attrs["policy"] = rec.PolicyID
	}
	if rec.Action != "" {
		attrs["action"] = rec.Action
	}
	f.Event(deviceID, alert.EventAttestationFailed, string(alert.SeverityCritical), rec.Time, attrs)
}

// AttestAlert receives attestation's other alerts (attest's
// Config.Alert): quarantines, stale devices, TPM errors, counter
// rollbacks and releases become events of the same kind. Attestation
// failures arrive through Verdict.
func (f *Feed) AttestAlert(a attest.Alert) {
	kind := a.Kind
	switch kind {
	case "attestation-failed":
		return // reported by Verdict with its evidence
	case "quarantined":
		f.quarantines.Add(1)
		kind = EventQuarantined
	case "stale":
		kind = "attestation-stale"
	}
	attrs := map[string]string{}
	for k, v := range a.Attrs {
		attrs[k] = truncate(v, 256)
	}
	attrs["summary"] = truncate(a.Summary, 256)
	f.Event(a.DeviceID, kind, a.Severity, a.Time, attrs)
}

// Lifecycle follows the inventory's lifecycle events: renewals clear
// certificate-expiry alerts and are counted; a decommissioned device is
// forgotten by the ingester and the alert engine (its open alerts
// resolve). Clone suspicions are not alerted here: governance's clone
// incident (Governance) raises the one alert for it.
func (f *Feed) Lifecycle(e inventory.Event) {
	switch e.Kind {
	case "renewed":
		f.renewals.Add(1)
		f.Event(e.DeviceID, alert.EventCertRenewed, string(alert.SeverityInfo), e.Time, nil)
	case "decommissioned":
		if f.cfg.Forget != nil {
			f.cfg.Forget(e.DeviceID)
		}
		if err := f.cfg.Engine.Forget(e.DeviceID); err != nil {
			f.log.Warn("alert: forgetting a decommissioned device failed", "device_id", e.DeviceID, "err", err)
		}
	}
}

// Governance reports a device's raised governance finding as a security
// event (clones and dormant identities under the alert engine's names).
func (f *Feed) Governance(a governance.Alert) {
	if a.DeviceID == "" || a.Resolved {
		return
	}
	ev := a.Kind
	switch a.Kind {
	case governance.KindClone:
		ev = alert.EventCloneSuspect
	case governance.KindDormant:
		ev = alert.EventDormant
	}
	attrs := map[string]string{"summary": truncate(a.Summary, 256)}
	for k, v := range a.Attrs {
		attrs[k] = truncate(v, 256)
	}
	f.Event(a.DeviceID, ev, a.Severity, a.Time, attrs)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
