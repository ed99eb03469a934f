package inventory

import (
	"context"
	"fmt"
	"sync"

	"github.com/sigil-iot/sigil/fleet/storage/notify"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// TopicProtocols is the notify topic of a change of a device's protocol
// version (Device.Protocol; payload: the device's ID): each replica
// forgets the version it keeps for it (Store.Protocol).
const TopicProtocols = "device_protocols"

// Bus tells the replicas sharing a database of changes
// (fleet/storage/notify).
type Bus interface {
	Subscribe(topic string, fn func(notify.Event)) error
}

// WithBus has a store in PostgreSQL keep each device's protocol version
// (Store.Protocol) in memory, forgotten when bus says another replica
// changed it (TopicProtocols) and all at each resync. Without it a store
// in PostgreSQL reads the version for every message; a store in bbolt,
// one process's, always keeps it.
func WithBus(bus Bus) Option { return func(o *options) { o.bus = bus } }

// maxProtocols bounds the versions a store keeps: past it, it starts
// over.
const maxProtocols = 1 << 20

// protocols keeps the protocol version of the devices the fleet sends to
// (Store.Protocol): read from the record once, then kept until a write
// changes it (and, with replicas, until the change's TopicProtocols
// arrives).
type protocols struct {
	mu  sync.Mutex
	gen uint64 // counts forgets: a read that began before one is not kept
	v   map[string]int
}

func newProtocols() *protocols { return &protocols{v: map[string]int{}} }

// get returns the version kept for id, and the generation to give put
// after reading it from the record.
func (p *protocols) get(id string) (v int, gen uint64, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	v, ok = p.v[id]
	return v, p.gen, ok
}

// put keeps v for id unless something was forgotten since gen.
func (p *protocols) put(id string, v int, gen uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.gen != gen {
		return
	}
	if len(p.v) >= maxProtocols {
		clear(p.v)
	}
	p.v[id] = v
}

// forget drops id's version ("" drops every one).
func (p *protocols) forget(id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.gen++
	if id == "" {
		clear(p.v)
		return
	}
	delete(p.v, id)
}

// listen has bus make p forget what other replicas changed.
func (p *protocols) listen(bus Bus) error {
	err := bus.Subscribe(TopicProtocols, func(ev notify.Event) {
		if ev.Resync {
			p.forget("")
			return
		}
		if ev.Payload != "" {
			p.forget(ev.Payload)
		}
	})
	if err != nil {
		return fmt.Errorf("inventory: %w", err)
	}
	return nil
}

// Protocol returns the wire protocol version to speak to a device: the one
// it last spoke (Device.Protocol), or wire.OldestVersion for a record that
// holds none (written by a release that did not keep it: every device
// speaks it, and says hello with its own at its next connection). It is
// read for every message the fleet sends: the store keeps it once read
// (bbolt; PostgreSQL WithBus) until a write changes it, so that a message
// costs no read (on PostgreSQL, no statement); otherwise it decodes
// nothing else of the record.
func (s *Store) Protocol(ctx context.Context, id string) (int, error) {
	var gen uint64
	if s.protos != nil {
		v, g, ok := s.protos.get(id)
		if ok {
			return v, nil
		}
		gen = g
	}
	d, err := s.brief(ctx, id)
	if err != nil {
		return 0, err
	}
	v := d.Protocol
	if v == 0 {
		v = wire.OldestVersion
	}
	if s.protos != nil {
		s.protos.put(id, v, gen)
	}
	return v, nil
}
