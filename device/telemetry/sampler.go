package telemetry

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/sigil-iot/sigil/pkg/wire"
)

// DefaultInterval is the sampling interval when SamplerConfig.Interval is
// zero.
const DefaultInterval = 30 * time.Second

// Appender stores points durably: device/state.Outbox.
type Appender interface {
	Append(points ...wire.TelemetryPoint) (dropped int, err error)
}

// SamplerConfig configures a Sampler.
type SamplerConfig struct {
	// Collect takes a point: Collector.Collect. Required.
	Collect func(ctx context.Context) wire.TelemetryPoint
	// Outbox stores the points. Required.
	Outbox Appender
	// Interval between points; 0 means DefaultInterval.
	Interval time.Duration
	// Appended, if set, is called after each point is stored (e.g.
	// Sender.Kick).
	Appended func()
	// Logger; nil means discard.
	Logger *slog.Logger
}

// Sampler appends a point to the outbox every interval.
type Sampler struct {
	cfg SamplerConfig
	log *slog.Logger
}

// NewSampler returns a sampler.
func NewSampler(cfg SamplerConfig) (*Sampler, error) {
	if cfg.Collect == nil || cfg.Outbox == nil {
		return nil, errors.New("telemetry: sampler needs Collect and Outbox")
	}
	if cfg.Interval < 0 {
		return nil, errors.New("telemetry: negative sampling interval")
	}
	if cfg.Interval == 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Sampler{cfg: cfg, log: cfg.Logger}, nil
}

// Run takes a point at once and then every interval until ctx ends. A
// point that cannot be stored (disk full) is logged and lost; the next
// one is tried as usual.
func (s *Sampler) Run(ctx context.Context) error {
	t := time.NewTicker(s.cfg.Interval)
	defer t.Stop()
	full := false
	for {
		p := s.cfg.Collect(ctx)
		dropped, err := s.cfg.Outbox.Append(p)
		switch {
		case err != nil:
			s.log.Warn("telemetry: storing a point failed", "err", err)
		case dropped > 0 && !full:
			s.log.Warn("telemetry outbox full: dropping the oldest points (the drops are counted and reported)", "dropped", dropped)
		case dropped == 0 && full:
			s.log.Info("telemetry outbox has room again")
		}
		full = err == nil && dropped > 0
		if err == nil && s.cfg.Appended != nil {
			s.cfg.Appended()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
