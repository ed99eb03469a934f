package governance

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/storage/kv"
)

// rescoreQueue holds the devices whose risk inputs changed, in two
// generations: a device marked now is young; each tick of Run scores the
// ripe ones (marked before the previous tick) and ripens the young. A
// device is so scored between one and two Config.RescoreDelay after its
// first mark — after the change that marked it has settled — and at most
// once per tick however often it is marked (a telemetry stream, a burst
// of alerts).
type rescoreQueue struct {
	mu          sync.Mutex
	young, ripe map[string]struct{}
	all         bool   // score everything: a full sweep at the next tick
	overflows   uint64 // marks that found the queue full (turned into a sweep)
	scored      uint64 // devices scored from the queue
}

// RescoreStats counts the event-driven scoring.
type RescoreStats struct {
	Queued    int    // devices waiting to be scored
	Scored    uint64 // devices scored because an input changed
	Overflows uint64 // marks that found the queue full; a full sweep covered them
}

// Rescore marks a device whose risk inputs changed (a verdict, an alert
// opened or resolved, its listening ports, firmware, ownership, state,
// connection): Run scores it again and stores the score within two
// Config.RescoreDelay, once however often it was marked. It never blocks
// on disk and may be called from any goroutine, including the callbacks
// of the services that feed the score. When Config.MaxRescore devices are
// already waiting, the next tick runs a full sweep instead.
func (s *Service) Rescore(deviceID string) {
	if deviceID == "" {
		return
	}
	q := &s.rescore
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.all {
		return
	}
	if _, ok := q.young[deviceID]; ok {
		return
	}
	if len(q.young)+len(q.ripe) >= s.cfg.MaxRescore {
		q.overflows++
		q.all = true
		clear(q.young)
		clear(q.ripe)
		return
	}
	q.young[deviceID] = struct{}{}
}

// RescoreAll asks for every device to be scored again at Run's next tick
// (an input of many devices changed, such as an owner's status).
func (s *Service) RescoreAll() {
	q := &s.rescore
	q.mu.Lock()
	q.all = true
	clear(q.young)
	clear(q.ripe)
	q.mu.Unlock()
}

// RescoreStats returns the event-driven scoring's counters.
func (s *Service) RescoreStats() RescoreStats {
	q := &s.rescore
	q.mu.Lock()
	defer q.mu.Unlock()
	return RescoreStats{Queued: len(q.young) + len(q.ripe), Scored: q.scored, Overflows: q.overflows}
}

// ScorePending scores every device marked so far now, without waiting
// for their tick (both generations; a full sweep if one was asked for),
// and returns how many it scored.
func (s *Service) ScorePending(ctx context.Context) (int, error) {
	q := &s.rescore
	q.mu.Lock()
	ids := make([]string, 0, len(q.young)+len(q.ripe))
	for id := range q.ripe {
		ids = append(ids, id)
	}
	for id := range q.young {
		ids = append(ids, id)
	}
	all := q.all
	q.all = false
	clear(q.young)
	clear(q.ripe)
	q.mu.Unlock()
	return s.scoreMarked(ctx, ids, all)
}

// rescoreTick scores the ripe generation and ripens the young one.
func (s *Service) rescoreTick(ctx context.Context) {
	q := &s.rescore
	q.mu.Lock()
	ids := make([]string, 0, len(q.ripe))
	for id := range q.ripe {
		ids = append(ids, id)
	}
	all := q.all
	q.all = false
	q.ripe, q.young = q.young, q.ripe
	clear(q.young)
	q.mu.Unlock()
	if _, err := s.scoreMarked(ctx, ids, all); err != nil && ctx.Err() == nil {
		s.log.Error("governance: scoring changed devices failed", "devices", len(ids), "err", err)
	}
}

func (s *Service) scoreMarked(ctx context.Context, ids []string, all bool) (int, error) {
	if all {
		rep, err := s.Sweep(ctx)
		s.addScored(rep.Scored)
		return rep.Scored, err
	}
	n := 0
	for len(ids) > 0 {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		batch := ids[:min(len(ids), sweepPage)]
		ids = ids[len(batch):]
		k, err := s.scoreDevices(batch)
		n += k
		s.addScored(k)
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

func (s *Service) addScored(n int) {
	s.rescore.mu.Lock()
	s.rescore.scored += uint64(n)
	s.rescore.mu.Unlock()
}

// scoreDevices computes and stores the risk of each device now, in one
// transaction; a device that left the inventory or was decommissioned
// loses its stored score. A device whose score cannot be computed keeps
// the previous one (logged).
func (s *Service) scoreDevices(ids []string) (int, error) {
	s.judgeMu.Lock()
	defer s.judgeMu.Unlock()
	now := s.cfg.Now().UTC()
	var risks []*Risk
	var gone []string
	for _, id := range ids {
		d, err := s.cfg.Devices.Device(context.TODO(), id)
		if errors.Is(err, inventory.ErrNotFound) || (err == nil && d.State == inventory.StateDecommissioned) {
			gone = append(gone, id)
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("governance: score %s: %w", id, err)
		}
		var own ownership
		err = s.db.View(context.TODO(), func(tx kv.Tx) error {
			own, err = loadOwnership(tx, d)
			return err
		})
		if err != nil {
			return 0, fmt.Errorf("governance: score %s: %w", id, err)
		}
		r, err := s.riskOf(d, own, now)
		if err != nil {
			s.log.Warn("governance: risk score failed", "device_id", id, "err", err)
			continue
		}
		risks = append(risks, r)
	}
	err := s.db.Update(context.TODO(), func(tx kv.Tx) error {
		for _, r := range risks {
			if err := putRisk(tx, r); err != nil {
				return err
			}
		}
		for _, id := range gone {
			if err := deleteRisk(tx, id); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("governance: store scores: %w", err)
	}
	return len(risks), nil
}
