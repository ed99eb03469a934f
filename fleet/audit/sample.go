package audit

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// SampledAction is the action of the entry a Sampler records for the
// entries it left out of an interval.
const SampledAction = "audit.sampled"

// SamplerConfig tunes a Sampler. Zero fields take their defaults.
type SamplerConfig struct {
	// Interval is the window Burst is counted over. Default 1 minute.
	Interval time.Duration
	// Burst is the entries recorded per Interval; the rest are counted.
	// Default 20.
	Burst int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Sampler is a Recorder for entries that anyone can cause without a
// credential (an API request refused for want of one, for example): it
// passes the first Burst entries of each Interval to its Recorder and
// counts the others, and once the interval is over it records one
// SampledAction entry saying how many it left out, by action. The log then
// grows with time, at most Burst+1 entries per interval, however many
// requests arrive. Entries of authenticated actors must not go through a
// Sampler: they are each recorded.
//
// The summary of an interval is recorded when the next entry arrives after
// it, or by Flush (Run calls it every Interval, and once more when it
// stops). Its methods are safe for concurrent use.
type Sampler struct {
	rec        Recorder
	cfg        SamplerConfig
	suppressed atomic.Uint64

	mu       sync.Mutex
	start    time.Time // of the current interval; zero when none is open
	recorded int
	left     int            // entries left out of the interval
	byAction map[string]int // of which per action (bounded; see count)
	actor    Actor          // actor of the entries left out, if all the same
	mixed    bool           // entries of several actors were left out
}

var _ Recorder = (*Sampler)(nil)

// maxSampledActions bounds the per-action counts of a summary entry (the
// rest are summed under "other").
const maxSampledActions = 24

// NewSampler returns a Sampler recording through rec.
func NewSampler(rec Recorder, cfg SamplerConfig) *Sampler {
	if cfg.Interval <= 0 {
		cfg.Interval = time.Minute
	}
	if cfg.Burst <= 0 {
		cfg.Burst = 20
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Sampler{rec: rec, cfg: cfg}
}

// Record records e if the interval's burst allows it, and counts it
// otherwise. It first records the summary of an interval that is over.
func (s *Sampler) Record(ctx context.Context, e Entry) error {
	now := s.cfg.Now()
	s.mu.Lock()
	var sum *Entry
	if !s.start.IsZero() && now.Sub(s.start) >= s.cfg.Interval {
		sum = s.closeLocked(now)
	}
	if s.start.IsZero() {
		s.start = now
	}
	keep := s.recorded < s.cfg.Burst
	if keep {
		s.recorded++
	} else {
		s.countLocked(e)
	}
	s.mu.Unlock()

	var errs []error
	if sum != nil {
		errs = append(errs, s.rec.Record(ctx, *sum))
	}
	if keep {
		errs = append(errs, s.rec.Record(ctx, e))
	} else {
		s.suppressed.Add(1)
	}
	return errors.Join(errs...)
}

// Suppressed is the number of entries counted instead of recorded so far.
func (s *Sampler) Suppressed() uint64 { return s.suppressed.Load() }

// Flush records the summary of the current interval if it is over.
func (s *Sampler) Flush(ctx context.Context) error {
	return s.flush(ctx, false)
}

func (s *Sampler) flush(ctx context.Context, force bool) error {
	now := s.cfg.Now()
	s.mu.Lock()
	var sum *Entry
	if !s.start.IsZero() && (force || now.Sub(s.start) >= s.cfg.Interval) {
		sum = s.closeLocked(now)
	}
	s.mu.Unlock()
	if sum == nil {
		return nil
	}
	return s.rec.Record(ctx, *sum)
}

// Run flushes every Interval until ctx ends, then records the summary of
// the interval in progress.
func (s *Sampler) Run(ctx context.Context) error {
	t := time.NewTicker(s.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return s.flush(context.WithoutCancel(ctx), true)
		case <-t.C:
			if err := s.Flush(ctx); err != nil && ctx.Err() == nil {
				return err
			}
		}
	}
}

// countLocked counts an entry left out.
func (s *Sampler) countLocked(e Entry) {
	if s.left == 0 {
		s.actor, s.mixed = e.Actor, false
		s.byAction = make(map[string]int)
	} else if e.Actor != s.actor {
		s.mixed = true
	}
	s.left++
	key := e.Action
	if _, ok := s.byAction[key]; !ok && (len(s.byAction) >= maxSampledActions || len(key) > MaxKey) {
		key = "other"
	}
	s.byAction[key]++
}

// closeLocked ends the current interval at now and returns its summary
// entry, or nil when nothing was left out.
func (s *Sampler) closeLocked(now time.Time) *Entry {
	defer func() {
		s.start, s.recorded, s.left, s.byAction = time.Time{}, 0, 0, nil
	}()
	if s.left == 0 {
		return nil
	}
	actor := s.actor
	if s.mixed {
		actor = System("audit")
	}
	e := New(actor, SampledAction, "").
		With("left_out", strconv.Itoa(s.left)).
		With("recorded", strconv.Itoa(s.recorded)).
		With("since", s.start.UTC().Format(time.RFC3339Nano)).
		With("until", now.UTC().Format(time.RFC3339Nano))
	for a, n := range s.byAction {
		e = e.With(a, strconv.Itoa(n))
	}
	return &e
}
