package server

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/broker"
	"github.com/sigil-iot/sigil/internal/wait"
)

// dropCounter counts the warnings about dropped connection events.
type dropCounter struct {
	slog.Handler
	n *atomic.Int64
}

func (h dropCounter) Enabled(context.Context, slog.Level) bool { return true }

func (h dropCounter) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, "one dropped") {
		h.n.Add(1)
	}
	return nil
}

func (h dropCounter) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h dropCounter) WithGroup(string) slog.Handler      { return h }

// TestConnectionEventBurst: a burst of connection events — 8,000 devices
// connecting at once, as in a reconnect storm — is queued whole for the
// inventory and recorded by several workers. One queue of 4,096 and one
// worker dropped thousands of them when sigil-sim bench fleet grew a fleet
// to 19,900 devices (the inventory's connected flag and last-seen time
// left behind, rotation jobs not told that their devices came back).
func TestConnectionEventBurst(t *testing.T) {
	var drops atomic.Int64
	s, err := New(Config{DataDir: t.TempDir(), MQTTAddr: "127.0.0.1:0", APIAddr: "127.0.0.1:0"}, slog.New(dropCounter{n: &drops}))
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	const devices = 8000
	for i := range devices {
		id := fmt.Sprintf("%032x", i)
		s.brokerEvent(broker.Event{Kind: broker.Connected, Identity: broker.Identity{ClientID: id, DeviceID: id}, Time: time.Now()})
	}
	if n := drops.Load(); n != 0 {
		t.Fatalf("%d of %d connection events dropped", n, devices)
	}
	if queued := s.events.Len(); queued != devices {
		t.Fatalf("%d events queued, want %d", queued, devices)
	}
	if s.events.Workers() < 2 {
		t.Fatalf("%d event workers", s.events.Workers())
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.recordEvents(ctx) }()
	wait.Until(t, func() error {
		if left := s.events.Len(); left > 0 {
			return fmt.Errorf("%d events not recorded", left)
		}
		return nil
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
