package feed

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sigil-iot/sigil/fleet/alert"
	"github.com/sigil-iot/sigil/fleet/alert/sink"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
	"github.com/sigil-iot/sigil/fleet/telemetry"
)

// The pipeline's files, relative to PipelineConfig.Dir.
const (
	// TelemetryFile keeps each device's telemetry cursor (stream and the
	// sequence up to which every point was stored or counted), so that a
	// restarted fleet still ingests every point exactly once, and the
	// feed's flags (the default rules installed).
	TelemetryFile = telemetry.File
	// AlertsFile holds the alert rules, alerts, dead letters and learned
	// baselines (fleet/alert).
	AlertsFile = alert.File
)

// PipelineConfig configures OpenPipeline. Dir and Metrics are required.
type PipelineConfig struct {
	// Dir is the fleet's data directory: TelemetryFile and AlertsFile.
	Dir string
	// Database, when set, keeps the telemetry cursors and the alerts in
	// PostgreSQL instead of Dir's files; the replicas sharing it ingest
	// each telemetry batch once (telemetry.Config.SharedCursors).
	Database *postgres.DB
	// Leases and Bus are the engine's (alert.Config): the replicas
	// sharing Database re-send once and see each other's rule changes.
	Leases alert.Leases
	Bus    alert.Bus
	// Sinks are the alert sinks (the alert_sinks configuration), each
	// built into a route of the engine (sink.Routes).
	Sinks []sink.Config
	// Flood is the engine's flood control (alert.FloodConfig.Flood).
	Flood alert.Flood
	// Actions carries out rules' actions (alert.Config.Actions).
	Actions alert.Actions
	// OnTransition is told of each alert's transitions
	// (alert.Config.OnTransition).
	OnTransition func(alert.Notification)
	// CertLifetime and Rescore are the feed's (Config).
	CertLifetime time.Duration
	Rescore      func(deviceID string)
	// Send publishes the ingester's acknowledgements to a device
	// (telemetry.Config.Send).
	Send func(deviceID, kind string, payload []byte) error
	// Metrics is the fleet's shared registry, where the ingester
	// registers its aggregates.
	Metrics *prometheus.Registry
	Logger  *slog.Logger
}

// Pipeline is the fleet's telemetry and alerting, built together: the
// ingester (its cursors in TelemetryFile) hands each accepted batch to
// the feed, which evaluates it, and the fleet's security events, with the
// alert engine (AlertsFile), whose notifications go to the configured
// sinks. Each of Telemetry, Alerts and Feed has its own Run; Close
// releases the stores and sinks once they returned.
type Pipeline struct {
	Telemetry *telemetry.Ingester
	Alerts    *alert.Engine
	Feed      *Feed
	// Sinks describes the configured sinks (no secrets).
	Sinks []sink.Info

	log     *slog.Logger
	closers []func() error // in the order opened
}

// OpenPipeline opens the telemetry cursors, builds the sinks' routes and
// opens the alert engine with them, installs the default alert rules at
// the fleet's first start (InstallDefaultRules), and builds the feed and
// the ingester. On failure it closes what it opened.
func OpenPipeline(cfg PipelineConfig) (_ *Pipeline, err error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Pipeline{log: log}
	defer func() {
		if err != nil {
			p.Close()
		}
	}()
	var cursors *telemetry.CursorStore
	if cfg.Database != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cursors, err = telemetry.OpenCursorsPostgres(ctx, cfg.Database)
	} else {
		cursors, err = telemetry.OpenCursors(filepath.Join(cfg.Dir, TelemetryFile))
	}
	if err != nil {
		return nil, err
	}
	p.closers = append(p.closers, cursors.Close)
	routes, infos, closeSinks, err := sink.Routes(cfg.Sinks)
	if err != nil {
		return nil, err
	}
	p.Sinks = infos
	p.closers = append(p.closers, func() error { closeSinks(); return nil })
	acfg := alert.Config{
		Path: filepath.Join(cfg.Dir, AlertsFile), Routes: routes,
		Actions: cfg.Actions, Logger: log.With("component", "alert"),
		OnTransition: cfg.OnTransition, Flood: cfg.Flood, Leases: cfg.Leases, Bus: cfg.Bus,
	}
	if cfg.Database != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		p.Alerts, err = alert.OpenPostgres(ctx, cfg.Database, acfg)
	} else {
		p.Alerts, err = alert.Open(acfg)
	}
	if err != nil {
		return nil, err
	}
	p.closers = append(p.closers, func() error { // after its Run returned
		if err := p.Alerts.Close(); err != nil {
			log.Error("closing the alert store failed", "err", err)
		}
		return nil
	})
	if err := InstallDefaultRules(p.Alerts, cursors, log); err != nil {
		return nil, err
	}
	p.Feed = New(Config{Engine: p.Alerts, CertLifetime: cfg.CertLifetime, Rescore: cfg.Rescore,
		Forget: func(id string) { p.Telemetry.Forget(id) }, Logger: log})
	p.Telemetry, err = telemetry.New(telemetry.Config{
		Send: cfg.Send, Metrics: cfg.Metrics, Cursors: cursors, SharedCursors: cfg.Database != nil, OnBatch: p.Feed.Batch,
		Logger: log.With("component", "telemetry"),
	})
	if err != nil {
		return nil, err
	}
	return p, nil
}

// Close closes what OpenPipeline opened, last opened first, once the
// Runs of Telemetry, Alerts and Feed returned.
func (p *Pipeline) Close() error {
	var errs []error
	for i := len(p.closers) - 1; i >= 0; i-- {
		errs = append(errs, p.closers[i]())
	}
	p.closers = nil
	return errors.Join(errs...)
}
