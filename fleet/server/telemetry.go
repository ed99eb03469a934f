package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/sync/errgroup"

	"github.com/sigil-iot/sigil/fleet/alert"
	"github.com/sigil-iot/sigil/fleet/alert/sink"
	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/attest"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/metrics"
	"github.com/sigil-iot/sigil/fleet/telemetry"
	"github.com/sigil-iot/sigil/pkg/config"
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

// Security events the fleet reports to the alert engine besides the
// alert.Event* kinds, and the rules installed for them at first start.
const (
	// EventTelemetryDropped: a device's bounded outbox dropped points
	// (attribute "dropped": how many).
	EventTelemetryDropped = "telemetry-dropped"
	// EventReboot: a device's telemetry shows a new boot_id.
	EventReboot = "reboot"
	// EventQuarantined: a device was quarantined (attribute "reason").
	EventQuarantined = "quarantined"
)

// Sink types of AlertSink.Type.
const (
	SinkAlertmanager = "alertmanager"
	SinkSyslog       = "syslog"
	SinkWebhook      = "webhook"
)

// AlertSink is one entry of the alert_sinks configuration: a receiver the
// alert engine delivers notifications to, with retries and dead letters
// (docs/CONFIG.md).
type AlertSink struct {
	// Name identifies the sink in dead letters and logs. Required, unique.
	Name string `json:"name"`
	// Type is "alertmanager" (Prometheus Alertmanager API v2), "syslog"
	// (RFC 5424 with a CEF body over TCP or TLS) or "webhook" (signed
	// JSON POST).
	Type string `json:"type"`
	// URL is the Alertmanager's base URL or the webhook's URL (http or
	// https).
	URL string `json:"url"`
	// Addr is the syslog receiver's host:port.
	Addr string `json:"addr"`
	// TLS sends syslog over TLS (RFC 5425) verified with the system roots
	// or TLSCAFile. Default false: plain TCP, unless TLSCAFile is set.
	TLS bool `json:"tls"`
	// TLSCAFile is a PEM file of the CA certificates that verify the
	// receiver (syslog over TLS, https URLs). Default: the system roots.
	TLSCAFile string `json:"tls_ca_file"`
	// SecretFile holds the webhook's HMAC-SHA256 signing secret
	// (X-Sigil-Signature), or a bearer token sent to an Alertmanager (for
	// a proxy in front of it). Optional; keep it 0600.
	SecretFile string `json:"secret_file"`
	// MinSeverity selects alerts at least this severe: info, warning or
	// critical. Default: all.
	MinSeverity string `json:"min_severity"`
	// Attempts is the number of delivery attempts before a notification is
	// dead-lettered. Default 5.
	Attempts int `json:"attempts"`
	// Backoff is the wait before the first retry, doubling up to a minute.
	// Default 1s.
	Backoff config.Duration `json:"backoff"`
}

// AlertFlood is the alert_flood configuration: flood control of new
// alerts (fleet/alert Flood). Past a limit, new alerts are held back:
// counted in one summary alert per rule and window (which names the
// rule, the count, the devices and the window, and goes to the sinks once,
// when the window closes); their rules' actions still run.
type AlertFlood struct {
	// Window is the length of the windows the limits count in. Default
	// 10m.
	Window config.Duration `json:"window"`
	// PerRule is how many new alerts one rule may open per window.
	// Default 20; negative means no limit per rule.
	PerRule int `json:"per_rule"`
	// Fleet is how many new alerts all rules together may open per
	// window. Default 100; negative means no fleet-wide limit.
	Fleet int `json:"fleet"`
}

// flood is the engine's Flood for the configuration's defaults.
func (c AlertFlood) flood() alert.Flood {
	f := alert.Flood{Window: time.Duration(c.Window), PerRule: c.PerRule, Fleet: c.Fleet}
	if f.Window <= 0 {
		f.Window = 10 * time.Minute
	}
	if f.PerRule == 0 {
		f.PerRule = 20
	}
	if f.Fleet == 0 {
		f.Fleet = 100
	}
	return f
}

// telemetryParts are the server's telemetry and alerting internals.
type telemetryParts struct {
	cursors  *cursorStore
	feed     chan telemetry.Batch // accepted batches for the alert engine, in order
	feedDone chan struct{}        // closed when the feed worker stops
	closers  []func() error       // sinks holding connections
	sinks    []api.AlertSink

	onBatch atomic.Pointer[func(telemetry.Batch)]

	mu          sync.Mutex
	nearExpiry  map[string]bool // devices reported near certificate expiry
	verdicts    map[string]*metrics.Counter
	quarantines atomic.Uint64
	renewals    atomic.Uint64
}

// openTelemetry opens the telemetry ingester (cursors in TelemetryFile),
// the alert engine (AlertsFile) with routes to the configured sinks, the
// shared metrics registry with the control plane's metrics, and installs
// the default alert rules at first start.
func (s *Server) openTelemetry() error {
	s.Metrics = metrics.NewRegistry()
	t := &telemetryParts{feed: make(chan telemetry.Batch, 1024), feedDone: make(chan struct{}),
		nearExpiry: map[string]bool{}, verdicts: map[string]*metrics.Counter{}}
	s.tel = t
	var err error
	if t.cursors, err = openCursors(filepath.Join(s.cfg.DataDir, TelemetryFile)); err != nil {
		return err
	}
	routes, err := s.alertRoutes()
	if err != nil {
		return err
	}
	s.Alerts, err = alert.Open(alert.Config{
		Path: filepath.Join(s.cfg.DataDir, AlertsFile), Routes: routes,
		Actions: alert.ActionsFunc(s.alertAction), Logger: s.log.With("component", "alert"),
		OnTransition: func(n alert.Notification) { s.rescore(n.Alert.DeviceID) }, // open alerts count in the risk score
		Flood:        s.cfg.AlertFlood.flood(),
	})
	if err != nil {
		return err
	}
	if err := s.installDefaultRules(); err != nil {
		return err
	}
	s.Telemetry, err = telemetry.New(telemetry.Config{
		Send: func(deviceID, kind string, payload []byte) error {
			return s.Broker.Publish(s.topics.DeviceDown(deviceID, kind), payload, 1)
		},
		Metrics: s.Metrics, Cursors: t.cursors, OnBatch: s.telemetryBatch,
		Logger: s.log.With("component", "telemetry"),
	})
	if err != nil {
		return err
	}
	return s.controlPlaneMetrics()
}

// closeTelemetry closes what openTelemetry opened; the engine's Close
// comes after its Run returned (closeStores runs when Run ends).
func (s *Server) closeTelemetry() {
	t := s.tel
	if t == nil {
		return
	}
	if s.Alerts != nil {
		if err := s.Alerts.Close(); err != nil {
			s.log.Error("closing the alert store failed", "err", err)
		}
	}
	for _, c := range t.closers {
		_ = c()
	}
	if t.cursors != nil {
		t.cursors.close()
	}
}

// goTelemetry starts the ingester (its workers: telemetry.Config.Workers),
// the alert feed and the alert engine in g.
func (s *Server) goTelemetry(ctx context.Context, g *errgroup.Group) {
	g.Go(func() error { return s.Telemetry.Run(ctx) })
	g.Go(func() error { return s.Alerts.Run(ctx) })
	g.Go(func() error { return s.runFeed(ctx) })
}

// OnTelemetry registers a callback receiving every accepted telemetry batch
// after its points are stored and before it is acknowledged (for tests and
// benchmarks; nil removes it). It runs on an ingestion worker and must not
// block.
func (s *Server) OnTelemetry(f func(telemetry.Batch)) {
	if f == nil {
		s.tel.onBatch.Store(nil)
		return
	}
	s.tel.onBatch.Store(&f)
}

// Sinks describes the configured alert sinks (no secrets).
func (s *Server) Sinks() []api.AlertSink { return s.tel.sinks }

// telemetryBatch is the ingester's OnBatch: it hands the batch to the feed
// worker, waiting while the feed is full so that ingestion slows down
// (batches stay unacknowledged and devices resend) rather than the alert
// engine missing observations.
func (s *Server) telemetryBatch(b telemetry.Batch) {
	if f := s.tel.onBatch.Load(); f != nil {
		(*f)(b)
	}
	select {
	case s.tel.feed <- b:
	case <-s.tel.feedDone:
	}
}

// runFeed evaluates accepted telemetry against the alert rules until ctx
// ends: each point is observed, and what a batch shows — dropped points, a
// reboot, failed local logins, a certificate near expiry — is reported as
// an event.
func (s *Server) runFeed(ctx context.Context) error {
	defer close(s.tel.feedDone)
	for {
		select {
		case <-ctx.Done():
			return nil
		case b := <-s.tel.feed:
			s.observe(b)
		}
	}
}

// maxAuthEvents bounds the auth-failure events one point reports.
const maxAuthEvents = 64

func (s *Server) observe(b telemetry.Batch) {
	id := b.DeviceID
	for i := range b.Points {
		if _, ok := b.Points[i].Sets["listen.tcp"]; ok {
			s.rescore(id) // listening ports count in the risk score
			break
		}
		if _, ok := b.Points[i].Sets["listen.udp"]; ok {
			s.rescore(id)
			break
		}
	}
	if b.Dropped > 0 {
		s.alertEvent(id, EventTelemetryDropped, string(alert.SeverityWarning), time.Now(),
			map[string]string{"dropped": strconv.FormatUint(b.Dropped, 10)})
	}
	for i := range b.Points {
		p := &b.Points[i]
		m, sets := alertInputs(p)
		if err := s.Alerts.Observe(id, p.Time, m, sets); err != nil {
			s.log.Warn("alert: observation not evaluated", "device_id", id, "err", err)
		}
		if n := p.Metrics["auth.failures"]; n >= 1 {
			for range min(int(n), maxAuthEvents) {
				s.alertEvent(id, alert.EventAuthFailure, string(alert.SeverityWarning), p.Time, map[string]string{"source": "device log"})
			}
		}
		if v, ok := p.Metrics["cert.expiry_seconds"]; ok {
			s.certExpiry(id, p.Time, v)
		}
	}
	if b.Reboot {
		at := time.Now()
		if len(b.Points) > 0 {
			at = b.Points[len(b.Points)-1].Time
		}
		s.alertEvent(id, EventReboot, string(alert.SeverityInfo), at, nil)
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
func (s *Server) certExpiry(deviceID string, at time.Time, seconds float64) {
	near := seconds < time.Duration(s.cfg.DeviceLifetime).Seconds()/6
	s.tel.mu.Lock()
	was := s.tel.nearExpiry[deviceID]
	if near {
		s.tel.nearExpiry[deviceID] = true
	} else {
		delete(s.tel.nearExpiry, deviceID)
	}
	s.tel.mu.Unlock()
	switch {
	case near && !was:
		s.alertEvent(deviceID, alert.EventCertNearExpiry, string(alert.SeverityWarning), at,
			map[string]string{"expires_in": (time.Duration(seconds) * time.Second).String()})
	case !near && was:
		s.alertEvent(deviceID, alert.EventCertRenewed, string(alert.SeverityInfo), at, nil)
	}
}

// alertEvent reports a security event; the engine logs what it cannot use.
func (s *Server) alertEvent(deviceID, kind, severity string, at time.Time, attrs map[string]string) {
	if s.Alerts == nil {
		return
	}
	if err := s.Alerts.Event(deviceID, kind, severity, at, attrs); err != nil {
		s.log.Warn("alert: event not evaluated", "device_id", deviceID, "kind", kind, "err", err)
	}
}

// alertSeen tells absence rules the device was heard from (its hello).
func (s *Server) alertSeen(deviceID string) {
	if s.Alerts == nil {
		return
	}
	if err := s.Alerts.Seen(deviceID, time.Now()); err != nil {
		s.log.Warn("alert: seen not recorded", "device_id", deviceID, "err", err)
	}
}

// attestVerdict reports each recorded attestation verdict (attest's
// Config.Verdict): a failure as alert.EventAttestationFailed, a pass as
// alert.EventAttestationPassed, which resolves the failure's alert.
func (s *Server) attestVerdict(deviceID string, rec *attest.Record) {
	s.rescore(deviceID) // verdicts count in the risk score
	if f := s.consoleVerdict.Load(); f != nil {
		(*f)(deviceID, rec, 0)
	}
	if rec.Result == wire.VerdictPass && s.secretSvc != nil {
		s.secretSvc.queue(deviceID) // secrets wait for a current pass (attest.Service.Current)
	}
	if s.tel == nil {
		return
	}
	s.verdictCounter(rec.Result).Inc()
	if rec.Result == wire.VerdictPass {
		s.alertEvent(deviceID, alert.EventAttestationPassed, string(alert.SeverityInfo), rec.Time, nil)
		return
	}
	attrs := map[string]string{"reason": rec.Reason, "message": truncate(rec.Message, 256)}
	if rec.PolicyID != "" {
		attrs["policy"] = rec.PolicyID
	}
	if rec.Action != "" {
		attrs["action"] = rec.Action
	}
	s.alertEvent(deviceID, alert.EventAttestationFailed, string(alert.SeverityCritical), rec.Time, attrs)
}

// attestAlert receives attest's other alerts (its Config.Alert):
// quarantines, stale devices, TPM errors, counter rollbacks and releases
// become events of the same kind. Attestation failures arrive through
// attestVerdict.
func (s *Server) attestAlert(a attest.Alert) {
	kind := a.Kind
	switch kind {
	case "attestation-failed":
		return // reported by attestVerdict with its evidence
	case "quarantined":
		s.tel.quarantines.Add(1)
		kind = EventQuarantined
	case "stale":
		kind = "attestation-stale"
	}
	s.alertEvent(a.DeviceID, kind, a.Severity, a.Time, map[string]string{"summary": truncate(a.Summary, 256)})
}

// lifecycleEvent follows the inventory's lifecycle events: renewals clear
// certificate-expiry alerts and are counted; clone suspicions are
// reported; a decommissioned device is forgotten by the ingester and the
// alert engine (its open alerts resolve).
func (s *Server) lifecycleEvent(e inventory.Event) {
	if s.tel == nil || s.Alerts == nil {
		return
	}
	switch e.Kind {
	case "renewed":
		s.tel.renewals.Add(1)
		s.alertEvent(e.DeviceID, alert.EventCertRenewed, string(alert.SeverityInfo), e.Time, nil)
	// "clone-suspect" is not alerted here: governance's clone incident
	// (governanceAlert) raises the one alert for it.
	case "decommissioned":
		s.Telemetry.Forget(e.DeviceID)
		if err := s.Alerts.Forget(e.DeviceID); err != nil {
			s.log.Warn("alert: forgetting a decommissioned device failed", "device_id", e.DeviceID, "err", err)
		}
	}
}

// inventoryEvent is the inventory's event hook: the audit log's copy, then
// the alerting's view.
func (s *Server) inventoryEvent(e inventory.Event) {
	s.auditEvent(e)
	s.lifecycleEvent(e)
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

// serverRules are installed with alert.DefaultRules at first start.
func serverRules() []alert.Rule {
	d := func(x time.Duration) config.Duration { return config.Duration(x) }
	rules := []alert.Rule{
		{ID: "telemetry-dropped", Name: "Telemetry dropped by a full outbox", Severity: alert.SeverityWarning,
			Event: &alert.EventMatch{Kind: EventTelemetryDropped, ClearAfter: d(time.Hour)}},
		{ID: "device-rebooted", Name: "Device rebooted", Severity: alert.SeverityInfo,
			Event: &alert.EventMatch{Kind: EventReboot, ClearAfter: d(30 * time.Minute)}},
		{ID: "tpm-unhealthy", Name: "TPM does not answer", Severity: alert.SeverityCritical,
			Threshold: &alert.Threshold{Metric: "tpm.ok", Op: alert.OpLT, Value: 1}},
	}
	for i := range rules {
		rules[i].SetDefaults()
	}
	return rules
}

// installDefaultRules puts the default rules once, at the fleet's first
// start; rules the operators delete later stay deleted.
func (s *Server) installDefaultRules() error {
	done, err := s.tel.cursors.flag(metaRulesInstalled)
	if err != nil || done {
		return err
	}
	for _, r := range append(alert.DefaultRules(), serverRules()...) {
		if _, err := s.Alerts.Rule(r.ID); err == nil {
			continue
		}
		if _, err := s.Alerts.PutRule(r); err != nil {
			return fmt.Errorf("server: default alert rule %s: %w", r.ID, err)
		}
	}
	s.log.Info("default alert rules installed", "rules", len(s.Alerts.Rules()))
	return s.tel.cursors.setFlag(metaRulesInstalled)
}

// alertRoutes builds a route per configured sink.
func (s *Server) alertRoutes() ([]alert.Route, error) {
	var routes []alert.Route
	var errs []error
	names := map[string]bool{}
	for i, c := range s.cfg.AlertSinks {
		rt, info, closer, err := buildSink(c)
		if err == nil && names[c.Name] {
			err = errors.New("name used twice")
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("server: alert_sinks[%d] %q: %w", i, c.Name, err))
			continue
		}
		names[c.Name] = true
		routes = append(routes, rt)
		s.tel.sinks = append(s.tel.sinks, info)
		if closer != nil {
			s.tel.closers = append(s.tel.closers, closer)
		}
	}
	if err := errors.Join(errs...); err != nil {
		for _, c := range s.tel.closers {
			_ = c()
		}
		return nil, err
	}
	return routes, nil
}

func buildSink(c AlertSink) (alert.Route, api.AlertSink, func() error, error) {
	rt := alert.Route{Name: c.Name, MinSeverity: alert.Severity(c.MinSeverity), Attempts: c.Attempts, Backoff: time.Duration(c.Backoff)}
	info := api.AlertSink{Name: c.Name, Type: c.Type, MinSeverity: c.MinSeverity}
	switch {
	case c.Name == "":
		return rt, info, nil, errors.New("name is required")
	case c.MinSeverity != "" && !rt.MinSeverity.Valid():
		return rt, info, nil, errors.New("min_severity must be info, warning or critical")
	case c.Attempts < 0 || c.Backoff < 0:
		return rt, info, nil, errors.New("attempts and backoff may not be negative")
	}
	roots, err := loadRoots(c.TLSCAFile)
	if err != nil {
		return rt, info, nil, err
	}
	var secret []byte
	if c.SecretFile != "" {
		b, err := os.ReadFile(c.SecretFile)
		if err != nil {
			return rt, info, nil, fmt.Errorf("secret_file: %w", err)
		}
		if secret = []byte(strings.TrimSpace(string(b))); len(secret) == 0 {
			return rt, info, nil, errors.New("secret_file is empty")
		}
	}
	switch c.Type {
	case SinkAlertmanager:
		var header http.Header
		if secret != nil {
			header = http.Header{"Authorization": {"Bearer " + string(secret)}}
		}
		am, err := sink.NewAlertmanager(sink.AlertmanagerConfig{URL: c.URL, Client: httpClient(roots), Header: header})
		if err != nil {
			return rt, info, nil, err
		}
		rt.Notifier = am
		// Open alerts stay open in the Alertmanager only if re-sent.
		rt.Transitions = []alert.Transition{alert.TransitionFiring, alert.TransitionResolved, alert.TransitionRepeat}
		info.Target = c.URL
	case SinkWebhook:
		wh, err := sink.NewWebhook(sink.WebhookConfig{URL: c.URL, Client: httpClient(roots), Secret: secret})
		if err != nil {
			return rt, info, nil, err
		}
		rt.Notifier, info.Target, info.Signed = wh, c.URL, secret != nil
	case SinkSyslog:
		var tlsCfg *tls.Config
		if c.TLS || roots != nil {
			host, _, err := net.SplitHostPort(c.Addr)
			if err != nil {
				return rt, info, nil, fmt.Errorf("addr %q is not host:port", c.Addr)
			}
			tlsCfg = &tls.Config{RootCAs: roots, ServerName: host, MinVersion: tls.VersionTLS12}
		}
		sl, err := sink.NewSyslog(sink.SyslogConfig{Addr: c.Addr, TLS: tlsCfg})
		if err != nil {
			return rt, info, nil, err
		}
		rt.Notifier, info.Target = sl, c.Addr
		return rt, info, sl.Close, nil
	default:
		return rt, info, nil, fmt.Errorf("type %q is not alertmanager, syslog or webhook", c.Type)
	}
	return rt, info, nil, nil
}

// loadRoots reads a PEM CA file; "" means the system roots (nil).
func loadRoots(path string) (*x509.CertPool, error) {
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tls_ca_file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("tls_ca_file %s holds no PEM certificate", path)
	}
	return pool, nil
}

// httpClient returns nil (the sink's default client) for the system roots,
// else a client trusting roots that, like the default, does not follow
// redirects.
func httpClient(roots *x509.CertPool) *http.Client {
	if roots == nil {
		return nil
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	return &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
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
//	process_*, go_*                         the process's CPU, memory and file descriptors (metrics.RegisterProcess)
func (s *Server) controlPlaneMetrics() error {
	r := s.Metrics
	b := s.Broker.Stats
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
		{"sigil_alert_feed_queued", "Telemetry batches waiting for alert evaluation.", func() float64 { return float64(len(s.tel.feed)) }},
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
		{"sigil_quarantines_total", "Devices quarantined.", func() float64 { return u(s.tel.quarantines.Load()) }},
		{"sigil_renewals_total", "Device certificates renewed.", func() float64 { return u(s.tel.renewals.Load()) }},
		{"sigil_alerts_fired_total", "Alerts opened.", func() float64 { return u(a().Fired) }},
		{"sigil_alerts_deduplicated_total", "Firings absorbed by an open alert.", func() float64 { return u(a().Deduplicated) }},
		{"sigil_alerts_resolved_total", "Alerts resolved.", func() float64 { return u(a().Resolved) }},
		{"sigil_alerts_held_total", "New alerts flood control held back (each counted in its rule's summary alert).", func() float64 { return u(a().Held) }},
		{"sigil_alert_notifications_delivered_total", "Alert notifications a sink accepted.", func() float64 { return u(a().Delivered) }},
		{"sigil_alert_notifications_retried_total", "Failed alert deliveries that were retried.", func() float64 { return u(a().Retried) }},
		{"sigil_alert_notifications_dead_lettered_total", "Alert notifications recorded as dead letters.", func() float64 { return u(a().DeadLettered) }},
		{"sigil_alert_actions_failed_total", "Alert rule actions that failed.", func() float64 { return u(a().ActionsFailed) }},
	}
	errs := []error{r.RegisterProcess()}
	for _, g := range gauges {
		errs = append(errs, r.GaugeFunc(g.name, g.help, g.fn))
	}
	for _, c := range counters {
		errs = append(errs, r.CounterFunc(c.name, c.help, c.fn))
	}
	vec, err := r.CounterVec("sigil_attestation_verdicts_total", "Attestation verdicts recorded, by result.", "result")
	errs = append(errs, err)
	if vec != nil {
		for _, res := range []string{wire.VerdictPass, wire.VerdictFail} {
			c, err := vec.With(res)
			errs = append(errs, err)
			s.tel.verdicts[res] = c
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("server: metrics: %w", err)
	}
	return nil
}

func (s *Server) verdictCounter(result string) *metrics.Counter {
	if c := s.tel.verdicts[result]; c != nil {
		return c
	}
	return &metrics.Counter{} // an unexpected result: not exported
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// cursorStore keeps telemetry cursors in a bbolt file (telemetry.Cursors),
// and the fleet's telemetry flags.
type cursorStore struct{ db *bolt.DB }

var _ telemetry.Cursors = (*cursorStore)(nil)

var (
	bucketCursors = []byte("cursors")
	bucketMeta    = []byte("meta")
)

// metaRulesInstalled marks that the default alert rules were installed.
const metaRulesInstalled = "default_rules_installed"

func openCursors(path string) (*cursorStore, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return nil, fmt.Errorf("server: telemetry store: %w", err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketCursors, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("server: telemetry store: %w", err)
	}
	return &cursorStore{db: db}, nil
}

func (c *cursorStore) close() { c.db.Close() }

// Cursor returns a device's stored cursor.
func (c *cursorStore) Cursor(deviceID string) (telemetry.Cursor, bool, error) {
	var cur telemetry.Cursor
	var ok bool
	err := c.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketCursors).Get([]byte(deviceID))
		if v == nil {
			return nil
		}
		ok = true
		return json.Unmarshal(v, &cur)
	})
	if err != nil {
		return telemetry.Cursor{}, false, fmt.Errorf("server: telemetry cursor of %s: %w", deviceID, err)
	}
	return cur, ok, nil
}

// SetCursor stores a device's cursor; concurrent calls share one commit.
func (c *cursorStore) SetCursor(deviceID string, cur telemetry.Cursor) error {
	v, err := json.Marshal(cur)
	if err != nil {
		return err
	}
	return c.db.Batch(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketCursors).Put([]byte(deviceID), v)
	})
}

func (c *cursorStore) flag(name string) (bool, error) {
	var set bool
	err := c.db.View(func(tx *bolt.Tx) error {
		set = tx.Bucket(bucketMeta).Get([]byte(name)) != nil
		return nil
	})
	return set, err
}

func (c *cursorStore) setFlag(name string) error {
	return c.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put([]byte(name), []byte{1})
	})
}
