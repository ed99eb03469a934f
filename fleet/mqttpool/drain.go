package mqttpool

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/sigil-iot/sigil/fleet/storage/lease"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// drainMax bounds each wait of a broker's drain (its CONNACKs, the
// session going quiet); the drain renews its lease every drainRenew
// meanwhile, and stops, leaving the session as it is, once it no longer
// holds it: another replica (or the session's owner, back) has it.
const (
	drainMax   = 10 * time.Second
	drainRenew = 2 * time.Second
)

// drainLoop drains, every DrainEvery until ctx ends, the sessions of the
// replicas whose lease expired.
func (p *Pool) drainLoop(ctx context.Context) {
	t := time.NewTicker(p.cfg.DrainEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		names, err := p.cfg.Sessions.Expired(ctx, p.sessionPrefix())
		if err != nil {
			if ctx.Err() == nil {
				p.log.Warn("looking for dead replicas' sessions failed", "err", err)
			}
			continue
		}
		for _, name := range names {
			id := strings.TrimPrefix(name, p.sessionPrefix())
			if id == p.session || !wire.ValidID(id) {
				continue
			}
			l, ok, err := p.cfg.Sessions.TryAcquire(ctx, name)
			if err != nil || !ok {
				continue // another replica drains it
			}
			n, err := p.drain(ctx, id, func() error { return p.cfg.Sessions.Renew(ctx, l) })
			if err != nil {
				// Its lease expires again: a later round retries.
				p.log.Warn("draining a dead replica's session failed", "session", id, "err", err)
				continue
			}
			if err := p.cfg.Sessions.Retire(ctx, l); err != nil {
				p.log.Warn("a drained session's lease was not retired", "session", id, "err", err)
			}
			p.log.Info("a dead replica's session drained", "session", id, "messages", n)
		}
	}
}

// drain receives, on every device broker, what it kept for the session id
// of a replica that died, hands it to the device handler like any
// message (acknowledged once handled), then removes the session. It
// returns how many messages it handled. A broker that cannot be drained
// (down) does not hold up the others, which go on queuing for the dead
// session until it is removed there: each is drained, and the error
// names those that were not (a later round drains them again; draining
// one whose session is already removed finds nothing).
func (p *Pool) drain(ctx context.Context, id string, hold func() error) (int64, error) {
	p.mu.Lock()
	h := p.subs[wire.SegDevice]
	p.mu.Unlock()
	var total int64
	var errs []error
	for _, addr := range p.cfg.Devices {
		n, err := p.drainAt(ctx, addr, id, h, hold)
		total += n
		if errors.Is(err, lease.ErrLost) {
			return total, fmt.Errorf("mqttpool: drain %s: %w", id, err)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("mqttpool: drain %s at %s: %w", id, addr, err))
		}
	}
	return total, errors.Join(errs...)
}

// drainAt drains one broker's session id: connected as it (the broker
// sends what it queued for it and, again, what it sent and had no
// acknowledgement for), it waits until the session has been silent for
// DrainQuiet and every message received was handled and acknowledged;
// then it connects with a clean session, which removes it. hold renews the
// drain's lease: it is called before each step and every drainRenew, and
// its failure stops the drain with the session left as it is.
func (p *Pool) drainAt(ctx context.Context, addr, id string, h func(Message), hold func() error) (int64, error) {
	if err := hold(); err != nil {
		return 0, err
	}
	var received, acked atomic.Int64
	var last atomic.Int64 // unix nanoseconds of the last message
	o := p.options(addr, p.sessionClientID(id))
	o.SetCleanSession(false)
	o.SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) {
		received.Add(1)
		last.Store(time.Now().UnixNano())
		ack := func() { m.Ack(); acked.Add(1) }
		tp, err := p.cfg.Topics.Parse(m.Topic())
		if h == nil || err != nil || tp.Segment != wire.SegDevice || tp.Dir != wire.Up {
			ack()
			return
		}
		j := job{h: h, m: Message{Topic: tp, Name: m.Topic(), Payload: m.Payload(), Broker: addr}, ack: ack}
		select {
		case p.queue(tp.ID) <- j:
		case <-p.stop:
		}
	})
	c := mqtt.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(drainMax) {
		c.Disconnect(0) // a late CONNACK must not leave a connection holding the session
		return 0, errors.New("no CONNACK in time")
	}
	if err := tok.Error(); err != nil {
		return 0, err
	}
	last.Store(time.Now().UnixNano())
	deadline := time.Now().Add(drainMax)
	renewed := time.Now()
	t := time.NewTicker(p.cfg.DrainQuiet / 10)
	defer t.Stop()
	for {
		if time.Since(renewed) >= drainRenew {
			if err := hold(); err != nil {
				c.Disconnect(250)
				return acked.Load(), err
			}
			renewed = time.Now()
		}
		quiet := time.Since(time.Unix(0, last.Load())) >= p.cfg.DrainQuiet
		if quiet && acked.Load() == received.Load() {
			break
		}
		if time.Now().After(deadline) {
			c.Disconnect(250)
			return acked.Load(), fmt.Errorf("still busy after %s (%d received, %d handled)", drainMax, received.Load(), acked.Load())
		}
		select {
		case <-ctx.Done():
			c.Disconnect(250)
			return acked.Load(), ctx.Err()
		case <-t.C:
		}
	}
	c.Disconnect(250)
	// A clean session ends the kept one: the broker forgets its
	// subscription, and stops queuing for a replica that is gone. Only
	// while the lease is still the drain's: the session may be its
	// owner's again.
	if err := hold(); err != nil {
		return acked.Load(), err
	}
	o = p.options(addr, p.sessionClientID(id))
	o.SetCleanSession(true)
	c = mqtt.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(drainMax) || tok.Error() != nil {
		c.Disconnect(0)
		return acked.Load(), fmt.Errorf("removing the session: %v", tok.Error())
	}
	c.Disconnect(250)
	return acked.Load(), nil
}
