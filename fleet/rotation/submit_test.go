package rotation

import (
	"context"
	"log/slog"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sigil-iot/sigil/pkg/wire"
)

// idleLeases never grants its lease: Run handles renewals and steps no job.
type idleLeases struct{}

func (idleLeases) Hold(ctx context.Context, _ string, _ func(context.Context) error) error {
	<-ctx.Done()
	return nil
}

// TestSubmitReturnsOnceHandled: with WaitHandled (the broker pool),
// Submit returns only once its renewal request was handled and answered. The broker pool acknowledges a
// device's message when the handler returns: a Submit that returned with
// the request still queued in memory let a replica killed at that moment
// lose it, acknowledged, and the device's renewal waited for its rotation
// job to ask it again a minute later (review item 5, seen in
// TestReplicas). Unacknowledged, it is drained to another replica.
func TestSubmitReturnsOnceHandled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var answers atomic.Int64
		s := &Service{cfg: Config{Workers: 1, Now: time.Now, Leases: idleLeases{}, WaitHandled: true,
			Send: func(string, string, []byte) error { answers.Add(1); return nil }},
			log: slog.New(slog.DiscardHandler), q: make(chan request, 4), stopped: make(chan struct{})}
		b, err := wire.Encode(wire.TypeHello, nil, time.Now(), &wire.Hello{})
		if err != nil {
			t.Fatal(err)
		}
		env, err := wire.Decode(b) // not a renewal request: answered at once as malformed
		if err != nil {
			t.Fatal(err)
		}
		var returned atomic.Bool
		go func() {
			s.Submit("dev-a", env)
			returned.Store(true)
		}()
		synctest.Wait()
		if returned.Load() {
			t.Fatal("Submit returned before its request was handled: the transport would acknowledge a request still in memory")
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- s.Run(ctx) }()
		synctest.Wait()
		if !returned.Load() || answers.Load() != 1 {
			t.Fatalf("after Run handled it: Submit returned %v, %d answers sent; want true, 1", returned.Load(), answers.Load())
		}
		// A request Run never handles (it stopped) does not hold Submit.
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		returned.Store(false)
		go func() {
			s.Submit("dev-a", env)
			returned.Store(true)
		}()
		synctest.Wait()
		if !returned.Load() {
			t.Fatal("Submit waits for a Run that stopped")
		}
	})
}
