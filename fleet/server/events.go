package server

import (
	"context"
	"hash/fnv"
	"sync"

	"github.com/sigil-iot/sigil/fleet/broker"
)

// Connection events are recorded in the inventory by eventWorkers
// goroutines, each with its own queue; a device's events always go to the
// same one, so they are recorded in order. Each record is an fsync'd
// inventory write, and concurrent writes share a commit (group commit):
// one goroutine recorded about 100 a second under load, fewer than a
// reconnect storm or a growing fleet of 20,000 devices brings, and the
// rest were dropped (the inventory's connected flag and last-seen time
// left behind, a rotation job not told that its device came back).
const (
	eventWorkers = 16
	eventQueue   = 1024 // per worker
)

// eventQueues makes the workers' queues.
func eventQueues() []chan broker.Event {
	qs := make([]chan broker.Event, eventWorkers)
	for i := range qs {
		qs[i] = make(chan broker.Event, eventQueue)
	}
	return qs
}

// eventQueue is the queue of a device's events.
func (s *Server) eventQueue(deviceID string) chan broker.Event {
	h := fnv.New32a()
	h.Write([]byte(deviceID))
	return s.events[h.Sum32()%uint32(len(s.events))]
}

// recordEvents applies connection events to the inventory until ctx ends.
func (s *Server) recordEvents(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, q := range s.events {
		wg.Go(func() {
			for {
				select {
				case <-ctx.Done():
					return
				case ev := <-q:
					s.connectionEvent(ev)
				}
			}
		})
	}
	wg.Wait()
	return nil
}
