package server

import (
	"context"

	"github.com/sigil-iot/sigil/fleet/broker"
	"github.com/sigil-iot/sigil/fleet/internal/shard"
)

// Connection events are recorded in the inventory by eventWorkers
// goroutines, each with its own queue; a device's events always go to the
// same one, so they are recorded in order (fleet/internal/shard). Each
// record is an fsync'd inventory write, and concurrent writes share a
// commit (group commit): one goroutine recorded about 100 a second under
// load, fewer than a reconnect storm or a growing fleet of 20,000 devices
// brings, and the rest were dropped (the inventory's connected flag and
// last-seen time left behind, a rotation job not told that its device
// came back).
const (
	eventWorkers = 16
	eventQueue   = 1024 // per worker
)

// eventQueues makes the workers' queues.
func eventQueues() *shard.Queues[broker.Event] {
	return shard.New[broker.Event](eventWorkers, eventQueue)
}

// recordEvents applies connection events to the inventory until ctx ends.
func (s *Server) recordEvents(ctx context.Context) error { return s.events.Run(ctx, s.connectionEvent) }
