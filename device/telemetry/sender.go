package telemetry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/sigil-iot/sigil/pkg/wire"
)

// Publisher sends an encoded telemetry batch to the fleet on the device's
// up "telemetry" topic with QoS 1 and returns once the broker acknowledged
// it (a PUBACK), or an error, e.g. while there is no session.
type Publisher interface {
	Publish(ctx context.Context, payload []byte) error
}

// PublisherFunc adapts a function to Publisher.
type PublisherFunc func(ctx context.Context, payload []byte) error

// Publish calls f.
func (f PublisherFunc) Publish(ctx context.Context, payload []byte) error { return f(ctx, payload) }

// Queue is the outbox as the sender uses it: device/state.Outbox.
type Queue interface {
	// Pending returns the oldest points as a batch, or nil when empty.
	Pending(maxPoints, maxBytes int) (*wire.TelemetryBatch, error)
	// Ack deletes the points of stream up to through.
	Ack(stream []byte, through uint64) (int, error)
}

// Defaults of SenderConfig.
const (
	DefaultBatchBytes = 256 << 10
	DefaultAckTimeout = 30 * time.Second
	DefaultMinBackoff = time.Second
	DefaultMaxBackoff = 5 * time.Minute
	DefaultPoll       = time.Minute
)

// SenderConfig configures a Sender.
type SenderConfig struct {
	// Outbox holds the points to send. Required.
	Outbox Queue
	// Publisher sends batches. Required.
	Publisher Publisher
	// MaxPoints per batch; 0 means wire.MaxTelemetryPoints.
	MaxPoints int
	// MaxBytes of encoded points per batch; 0 means DefaultBatchBytes.
	MaxBytes int
	// AckTimeout is how long to wait for the fleet's ack after the broker
	// took a batch; 0 means DefaultAckTimeout.
	AckTimeout time.Duration
	// MinBackoff and MaxBackoff bound the wait after a failed attempt,
	// doubling from one to the other; 0 means DefaultMinBackoff and
	// DefaultMaxBackoff.
	MinBackoff, MaxBackoff time.Duration
	// Poll is how often an idle sender looks at the outbox without being
	// kicked; 0 means DefaultPoll.
	Poll time.Duration
	// Jitter spreads a backoff d; nil means a uniform draw in [d/2, d].
	Jitter func(d time.Duration) time.Duration
	// Now is the device clock stamped on envelopes; nil means time.Now.
	Now func() time.Time
	// Logger; nil means discard.
	Logger *slog.Logger
}

// SenderStats are the sender's counters since it started.
type SenderStats struct {
	Batches  uint64 // batches the broker took
	Acked    uint64 // points deleted because the fleet acknowledged them
	Failures uint64 // attempts that failed: publish error or no ack in time
	Refused  uint64 // points the fleet refused as invalid (and deleted)
}

// Sender sends the outbox to the fleet.
type Sender struct {
	cfg    SenderConfig
	log    *slog.Logger
	acks   chan wire.TelemetryAck
	points chan struct{} // Kick
	wake   chan struct{} // Retry

	mu    sync.Mutex
	stats SenderStats
}

// NewSender returns a sender.
func NewSender(cfg SenderConfig) (*Sender, error) {
	if cfg.Outbox == nil || cfg.Publisher == nil {
		return nil, errors.New("telemetry: sender needs Outbox and Publisher")
	}
	if cfg.MaxPoints <= 0 || cfg.MaxPoints > wire.MaxTelemetryPoints {
		cfg.MaxPoints = wire.MaxTelemetryPoints
	}
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = DefaultBatchBytes
	}
	if cfg.AckTimeout <= 0 {
		cfg.AckTimeout = DefaultAckTimeout
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = DefaultMinBackoff
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = DefaultMaxBackoff
	}
	cfg.MaxBackoff = max(cfg.MaxBackoff, cfg.MinBackoff)
	if cfg.Poll <= 0 {
		cfg.Poll = DefaultPoll
	}
	if cfg.Jitter == nil {
		cfg.Jitter = func(d time.Duration) time.Duration { return d/2 + rand.N(d/2+1) }
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Sender{cfg: cfg, log: cfg.Logger, acks: make(chan wire.TelemetryAck, 16),
		points: make(chan struct{}, 1), wake: make(chan struct{}, 1)}, nil
}

// Kick tells an idle sender that points were stored (SamplerConfig's
// Appended). It does not end a backoff.
func (s *Sender) Kick() {
	select {
	case s.points <- struct{}{}:
	default:
	}
}

// Retry ends a backoff: call it when the session to the fleet is
// (re)established.
func (s *Sender) Retry() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// HandleAck takes a telemetry.ack from the device's down topic. It never
// blocks: acks are cumulative, so when too many wait the oldest is
// discarded.
func (s *Sender) HandleAck(env *wire.Envelope) error {
	var ack wire.TelemetryAck
	if err := wire.DecodeBody(env, wire.TypeTelemetryAck, &ack); err != nil {
		return fmt.Errorf("telemetry: %w", err)
	}
	for {
		select {
		case s.acks <- ack:
			return nil
		default:
		}
		select {
		case <-s.acks:
		default:
		}
	}
}

// Stats returns the sender's counters.
func (s *Sender) Stats() SenderStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// Source returns a Source adding the sender's counters to points as
// telemetry.batches, telemetry.acked, telemetry.failures and
// telemetry.refused.
func (s *Sender) Source() Source {
	return SourceFunc(func(_ context.Context, p *wire.TelemetryPoint) error {
		st := s.Stats()
		p.SetMetric("telemetry.batches", float64(st.Batches))
		p.SetMetric("telemetry.acked", float64(st.Acked))
		p.SetMetric("telemetry.failures", float64(st.Failures))
		p.SetMetric("telemetry.refused", float64(st.Refused))
		return nil
	})
}

// Run sends the outbox until ctx ends: the oldest points first, one batch
// at a time, each until the fleet acknowledges it.
func (s *Sender) Run(ctx context.Context) error {
	backoff := time.Duration(0)
	for {
		s.drainAcks()
		ok, idle := s.attempt(ctx)
		if ctx.Err() != nil {
			return nil
		}
		var wait time.Duration
		var points chan struct{} // nil while backing off: new points do not end a backoff
		switch {
		case ok:
			backoff = 0
			continue
		case idle:
			backoff = 0
			wait, points = s.cfg.Poll, s.points
		default:
			s.count(func(st *SenderStats) { st.Failures++ })
			backoff = min(max(2*backoff, s.cfg.MinBackoff), s.cfg.MaxBackoff)
			wait = s.cfg.Jitter(backoff)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-s.wake:
		case <-points:
		case <-t.C:
		}
		t.Stop()
	}
}

// attempt sends the oldest batch and waits for its ack. ok means the
// batch was acknowledged; idle means there was nothing to send.
func (s *Sender) attempt(ctx context.Context) (ok, idle bool) {
	batch, err := s.cfg.Outbox.Pending(s.cfg.MaxPoints, s.cfg.MaxBytes)
	if err != nil {
		s.log.Warn("telemetry: reading the outbox failed", "err", err)
		return false, false
	}
	if batch == nil {
		return false, true
	}
	payload, err := wire.Encode(wire.TypeTelemetryBatch, nil, s.cfg.Now(), batch)
	for errors.Is(err, wire.ErrTooLarge) && len(batch.Points) > 1 {
		batch.Points = batch.Points[:len(batch.Points)/2]
		payload, err = wire.Encode(wire.TypeTelemetryBatch, nil, s.cfg.Now(), batch)
	}
	if err != nil {
		s.log.Error("telemetry: encoding a batch failed", "first", batch.First, "err", err)
		return false, false
	}
	if err := s.cfg.Publisher.Publish(ctx, payload); err != nil {
		if ctx.Err() == nil {
			s.log.Debug("telemetry: publishing failed; backing off", "first", batch.First, "err", err)
		}
		return false, false
	}
	s.count(func(st *SenderStats) { st.Batches++ })
	t := time.NewTimer(s.cfg.AckTimeout)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return false, false
		case <-t.C:
			s.log.Debug("telemetry: no ack from the fleet in time; resending later", "first", batch.First)
			return false, false
		case ack := <-s.acks:
			if s.apply(ack) && ack.Through >= batch.Last() && bytes.Equal(ack.Stream, batch.Stream) {
				return true, false
			}
		}
	}
}

// apply deletes what ack covers; it reports whether the outbox took it.
func (s *Sender) apply(ack wire.TelemetryAck) bool {
	n, err := s.cfg.Outbox.Ack(ack.Stream, ack.Through)
	if err != nil {
		s.log.Debug("telemetry: ack not applied", "through", ack.Through, "err", err)
		return false
	}
	s.count(func(st *SenderStats) { st.Acked += uint64(n) })
	switch ack.Reason {
	case wire.ReasonOK:
	case wire.ReasonTelemetryDropped:
		s.log.Info("telemetry: the fleet counted points this device dropped", "dropped", ack.Dropped)
	case wire.ReasonBadRequest:
		s.count(func(st *SenderStats) { st.Refused += uint64(n) })
		s.log.Warn("telemetry: the fleet refused points as invalid", "through", ack.Through, "message", ack.Message)
	default:
		s.log.Info("telemetry: ack with an unknown reason", "reason", ack.Reason.String())
	}
	return true
}

func (s *Sender) drainAcks() {
	for {
		select {
		case ack := <-s.acks:
			s.apply(ack)
		default:
			return
		}
	}
}

func (s *Sender) count(f func(*SenderStats)) {
	s.mu.Lock()
	f(&s.stats)
	s.mu.Unlock()
}
