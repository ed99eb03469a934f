package enroll

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/internal/wait"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// TestQueueFullCounted: a message that finds the queue full is answered
// rate_limited — and an enrollment request refused so is counted
// (Stats.RequestsBusy, sigil_enroll_busy_total), so that what devices sent
// is accounted for: requests handled + refused busy. In the 19,900-device
// run (sigil-sim bench fleet) a third of the enrollment requests went
// unaccounted: answered, but counted nowhere.
func TestQueueFullCounted(t *testing.T) {
	s, _, out := newService(t)
	n := cap(s.q)
	msg := func(typ string, body any) []byte {
		b, err := wire.Encode(typ, nil, time.Now(), body)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for range n {
		s.Submit("e-1", msg(wire.TypeEnrollRequest, &wire.EnrollRequest{Model: "m"})) // no worker: the queue fills
	}
	s.Submit("e-2", msg(wire.TypeEnrollRequest, &wire.EnrollRequest{Model: "m"}))
	s.Submit("e-3", msg(wire.TypeEnrollRequest, &wire.EnrollRequest{Model: "m"}))
	s.Submit("e-4", msg(wire.TypeEnrollProof, &wire.EnrollProof{}))
	if got := s.Stats().RequestsBusy.Load(); got != 2 {
		t.Fatalf("%d requests counted as refused busy, want 2 (the proof is not a request)", got)
	}
	if r := out.last(t); r.Status != wire.StatusRefused || r.Reason != wire.ReasonRateLimited {
		t.Fatalf("answer %+v", r)
	}
	out.mu.Lock()
	defer out.mu.Unlock()
	if len(out.msgs) != 3 {
		t.Fatalf("%d answers, want one per refused message", len(out.msgs))
	}
}

// TestStaleQueuedRequestNotHandled: a message that waited in the queue
// longer than Config.MaxWait is answered rate_limited and counted busy,
// unhandled: its device stopped waiting (30 s per answer) and asked again.
// In the 5,000-device scale-out run (sigil-sim bench fleet --brokers 3
// --replicas 2 --postgres) half of the enrollment requests the replicas
// handled came from devices that had already given up on them: 9,715
// handled for 5,000 enrolled, each an EK chain check, a credential and a
// stored session for nobody, while the queue turned devices away busy.
// A request that did not wait so long is still handled.
func TestStaleQueuedRequestNotHandled(t *testing.T) {
	s, _, out := newService(t)
	var mu sync.Mutex
	now := time.Date(2026, 12, 8, 0, 0, 0, 0, time.UTC)
	s.cfg.Now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	req := func() []byte {
		b, err := wire.Encode(wire.TypeEnrollRequest, nil, time.Now(), &wire.EnrollRequest{Model: "m"})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	s.Submit("e-stale", req()) // no worker yet: it waits
	advance(s.cfg.MaxWait + time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() { cancel(); <-done }()
	wait.For(t, "the stale request's answer", func() bool { out.mu.Lock(); defer out.mu.Unlock(); return len(out.msgs) == 1 })
	if r := out.last(t); r.Status != wire.StatusRefused || r.Reason != wire.ReasonRateLimited || r.RetryAfter == 0 {
		t.Fatalf("answer to the stale request %+v: want rate_limited with a retry time", r)
	}
	if st := s.Stats(); st.Requests.Load() != 0 || st.RequestsBusy.Load() != 1 {
		t.Fatalf("%d requests handled, %d busy: want the stale one counted busy, unhandled", st.Requests.Load(), st.RequestsBusy.Load())
	}
	s.Submit("e-fresh", req())
	wait.For(t, "the fresh request's answer", func() bool { out.mu.Lock(); defer out.mu.Unlock(); return len(out.msgs) == 2 })
	// Handled: refused for what it is (no EK certificate), not busy.
	if r := out.last(t); r.Reason != wire.ReasonBadRequest {
		t.Fatalf("answer to the fresh request %+v: want it handled (bad_request: no EK)", r)
	}
	if st := s.Stats(); st.Requests.Load() != 1 || st.RequestsBusy.Load() != 1 {
		t.Fatalf("%d requests handled, %d busy: want the fresh one handled", st.Requests.Load(), st.RequestsBusy.Load())
	}
}
