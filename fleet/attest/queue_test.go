package attest

import (
	"context"
	"crypto/rand"
	"fmt"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/internal/wait"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// answers counts the verdicts sent to the fixture's device.
func (f *fixture) answers() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, env := range f.out[f.dev] {
		if env.Type == wire.TypeAttestVerdict {
			n++
		}
	}
	return n
}

// staleEvidence is evidence for a nonce the fleet never issued: each is
// answered (refused unjudged) as soon as a worker takes it.
func (f *fixture) staleEvidence() (*wire.Envelope, []byte) {
	f.t.Helper()
	nonce := make([]byte, 32)
	rand.Read(nonce)
	b, err := wire.Encode(wire.TypeAttestEvidence, nil, f.now(), &wire.AttestEvidence{Nonce: nonce, Firmware: "1.0.0"})
	if err != nil {
		f.t.Fatal(err)
	}
	env, err := wire.Decode(b)
	if err != nil {
		f.t.Fatal(err)
	}
	return env, b
}

// oneWorker is the fixture's service again with a single worker (one
// queue), not running.
func (f *fixture) oneWorker(wait time.Duration) *Service {
	f.t.Helper()
	cfg := f.svc.cfg
	cfg.Workers, cfg.QueueWait = 1, wait
	svc, err := New(cfg)
	if err != nil {
		f.t.Fatal(err)
	}
	return svc
}

// TestEvidenceWaitsForRoom: evidence that finds its queue full waits for
// a worker to make room — the broker holds the device's PUBACK meanwhile
// — and is answered like the rest. It was dropped at once, unanswered and
// uncounted: in the scale runs (sigil-sim bench fleet, 5,000 devices
// reconnecting after a forced re-key) hundreds of devices each waited for
// their next scheduled attestation, and the fleet's counters could not
// account for what they had sent.
func TestEvidenceWaitsForRoom(t *testing.T) {
	f := newFixture(t)
	svc := f.oneWorker(time.Minute)
	n := cap(svc.shards[0]) + 1 // one more than the queue holds
	for range n - 1 {
		env, raw := f.staleEvidence()
		svc.Submit(f.dev, env, raw) // no worker yet: the queue fills
	}
	env, raw := f.staleEvidence()
	submitted := make(chan struct{})
	go func() { svc.Submit(f.dev, env, raw); close(submitted) }()
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- svc.Run(ctx) }()
	defer func() { cancel(); <-ran }()
	<-submitted
	wait.Until(t, func() error {
		if a := f.answers(); a < n {
			return fmt.Errorf("%d of %d pieces of evidence answered", a, n)
		}
		return nil
	})
	if st := svc.Stats(); st.EvidenceDropped != 0 || st.EvidenceQueued != uint64(n) {
		t.Fatalf("stats %+v, want %d queued and none dropped", st, n)
	}
}

// TestEvidenceDroppedCounted: evidence still without room after the
// service's QueueWait is dropped — and counted, so that what devices sent
// is accounted for.
func TestEvidenceDroppedCounted(t *testing.T) {
	f := newFixture(t)
	svc := f.oneWorker(time.Millisecond)
	n := cap(svc.shards[0])
	for range n + 3 {
		env, raw := f.staleEvidence()
		svc.Submit(f.dev, env, raw) // no worker: the last three find no room
	}
	if st := svc.Stats(); st.EvidenceDropped != 3 || st.EvidenceQueued != uint64(n) {
		t.Fatalf("stats %+v, want %d queued and 3 dropped", st, n)
	}
}
