package attest

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/device/tpm"
	"github.com/sigil-iot/sigil/fleet/inventory"
	"github.com/sigil-iot/sigil/fleet/storage/lease"
	"github.com/sigil-iot/sigil/fleet/storage/pgtest"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
	"github.com/sigil-iot/sigil/internal/wait"
	"github.com/sigil-iot/sigil/pkg/wire"
	"github.com/sigil-iot/sigil/sim/softtpm"
)

// replicaSet is n attestation services on one PostgreSQL database, as n
// `sigil serve` replicas run them, and one device on a software TPM that
// they all know. Each replica's messages to the device are kept apart, so
// that a test can take a challenge from one and answer another.
type replicaSet struct {
	svcs []*Service
	inv  *inventory.Store
	dev  string
	tpm  *softtpm.TPM
	ak   *tpm.KeyBlob

	mu  sync.Mutex
	out [][]*wire.Envelope // per replica, the messages it sent
}

func newReplicaSet(t *testing.T, n int, opts ...func(i int, db *postgres.DB, cfg *Config)) *replicaSet {
	t.Helper()
	url := pgtest.Start(t).NewDatabase(t)
	r := &replicaSet{out: make([][]*wire.Envelope, n)}
	seed := sha256.Sum256([]byte("replica device"))
	var err error
	if r.tpm, err = softtpm.New(softtpm.WithSeed(seed[:])); err != nil {
		t.Fatal(err)
	}
	if r.ak, err = r.tpm.CreateAK(); err != nil {
		t.Fatal(err)
	}
	r.dev = fmt.Sprintf("%x", seed[:16])
	for i := range n {
		// One pool per replica, as separate processes would have.
		db := pgtest.Open(t, url)
		inv, err := inventory.OpenPostgres(t.Context(), db)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { inv.Close() })
		h, err := OpenHistoryPostgres(t.Context(), db, 100)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { h.Close() })
		if i == 0 {
			r.inv = inv
			if err := inv.PutDevice(t.Context(), &inventory.Device{ID: r.dev, EKFingerprint: fmt.Sprintf("%x", seed), Model: "gw-1",
				State: inventory.StateActive, CertSerial: "c0ffee01", AKPublic: r.ak.Public}); err != nil {
				t.Fatal(err)
			}
		}
		cfg := Config{Inventory: inv, History: h, Interval: time.Minute, StaleAfter: 2, CommitDelay: -1,
			Send: func(_, _ string, b []byte) error {
				env, err := wire.Decode(b)
				if err != nil {
					return err
				}
				r.mu.Lock()
				r.out[i] = append(r.out[i], env)
				r.mu.Unlock()
				return nil
			},
			Disconnect: func(string) {}}
		shareState(t, db, &cfg)
		for _, o := range opts {
			o(i, db, &cfg)
		}
		svc, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		r.svcs = append(r.svcs, svc)
	}
	return r
}

// challenge has replica i challenge the device and returns the nonce.
func (r *replicaSet) challenge(t *testing.T, i int, purpose string) []byte {
	t.Helper()
	if err := r.svcs[i].challenge(r.dev, purpose); err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	env := r.out[i][len(r.out[i])-1]
	r.mu.Unlock()
	var ch wire.AttestChallenge
	if err := wire.DecodeBody(env, wire.TypeAttestChallenge, &ch); err != nil {
		t.Fatal(err)
	}
	return ch.Nonce
}

// evidence is the device's answer to nonce.
func (r *replicaSet) evidence(t *testing.T, nonce []byte) []byte {
	t.Helper()
	q, err := r.tpm.Quote(r.ak, nonce, wire.DefaultSelection())
	if err != nil {
		t.Fatal(err)
	}
	raw, err := wire.Encode(wire.TypeAttestEvidence, nil, time.Now(), &wire.AttestEvidence{Nonce: nonce, Firmware: "1.0.0", Quotes: []wire.Quote{*q}})
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// judge has replica i judge raw, as its worker does once the evidence
// reached it through the broker pool.
func (r *replicaSet) judge(t *testing.T, i int, raw []byte) *Record {
	t.Helper()
	env, err := wire.Decode(raw)
	if err != nil {
		t.Fatal(err)
	}
	rec := r.svcs[i].evidence(job{deviceID: r.dev, env: env, raw: raw, at: time.Now()})
	if rec == nil {
		t.Fatal("evidence dropped")
	}
	return rec
}

// TestReplicasShareNonces: a challenge one replica issued is answered on
// another and passes; the nonce is then used up on every replica.
func TestReplicasShareNonces(t *testing.T) {
	r := newReplicaSet(t, 2)
	raw := r.evidence(t, r.challenge(t, 0, ""))
	if rec := r.judge(t, 1, raw); rec.Result != wire.VerdictPass {
		t.Fatalf("evidence answering replica A's challenge, judged on B: %s %s (%s)", rec.Result, rec.Reason, rec.Message)
	}
	for i := range r.svcs {
		if rec := r.judge(t, i, raw); rec.Code != wire.ReasonNonceInvalid {
			t.Errorf("the same evidence replayed to replica %d: %s %s (%s), want nonce_invalid", i, rec.Result, rec.Reason, rec.Message)
		}
	}
	// A renewal's nonce is not a plain attestation's, on any replica.
	raw = r.evidence(t, r.challenge(t, 1, wire.PurposeRenew))
	if rec := r.judge(t, 0, raw); rec.Code != wire.ReasonNonceInvalid {
		t.Errorf("a renewal nonce from B presented as plain evidence on A: %s %s", rec.Reason, rec.Message)
	}
	// A renewal: the device asks replica A for a renewal nonce, and its
	// renewal request, with the evidence, reaches replica B (rotation
	// calls Judge there).
	raw = r.evidence(t, r.challenge(t, 0, wire.PurposeRenew))
	env, err := wire.Decode(raw)
	if err != nil {
		t.Fatal(err)
	}
	var ev wire.AttestEvidence
	if err := wire.DecodeBody(env, wire.TypeAttestEvidence, &ev); err != nil {
		t.Fatal(err)
	}
	rec, err := r.svcs[1].Judge(r.dev, &ev)
	if err != nil || rec.Result != wire.VerdictPass {
		t.Fatalf("renewal evidence for A's nonce judged on B: %+v, %v", rec, err)
	}
	if rec, err := r.svcs[0].Judge(r.dev, &ev); err != nil || rec.Code != wire.ReasonNonceInvalid {
		t.Errorf("the renewal evidence replayed to A: %+v, %v", rec, err)
	}
}

// TestReplicasShareSessions: the session a replica started (the device's
// hello reached it) and the pass another judged make Current hold on every
// replica; a new session, or its end, anywhere makes it fail everywhere.
func TestReplicasShareSessions(t *testing.T) {
	r := newReplicaSet(t, 2)
	a, b := r.svcs[0], r.svcs[1]
	a.SessionStarted(r.dev, time.Now())
	if err := b.Current(r.dev); !errors.Is(err, ErrNoCurrentVerdict) {
		t.Fatalf("Current before any attestation: %v", err)
	}
	if rec := r.judge(t, 1, r.evidence(t, r.challenge(t, 1, ""))); rec.Result != wire.VerdictPass {
		t.Fatalf("pass on B: %s %s", rec.Reason, rec.Message)
	}
	for i, s := range r.svcs {
		if err := s.Current(r.dev); err != nil {
			t.Errorf("replica %d: Current after a pass in the session replica A started: %v", i, err)
		}
	}
	// The device reconnects (its hello reaches A): the earlier pass no
	// longer counts anywhere.
	a.SessionStarted(r.dev, time.Now())
	if err := b.Current(r.dev); !errors.Is(err, ErrNoCurrentVerdict) {
		t.Errorf("B: Current after a new session started on A: %v, want ErrNoCurrentVerdict", err)
	}
	if rec := r.judge(t, 0, r.evidence(t, r.challenge(t, 1, ""))); rec.Result != wire.VerdictPass {
		t.Fatalf("pass on A of B's challenge: %s %s", rec.Reason, rec.Message)
	}
	if err := b.Current(r.dev); err != nil {
		t.Errorf("B: Current after a pass in the new session: %v", err)
	}
	a.SessionEnded(r.dev)
	if err := b.Current(r.dev); !errors.Is(err, ErrNoCurrentVerdict) {
		t.Errorf("B: Current after the session ended on A: %v, want ErrNoCurrentVerdict", err)
	}
}

// TestReplicasShareLiveness: challenges one replica sent and evidence
// another received count together: the device answered, so no replica's
// stale sweep flags it.
func TestReplicasShareLiveness(t *testing.T) {
	r := newReplicaSet(t, 2)
	var nonce []byte
	for range 2 { // StaleAfter unanswered challenges from A
		nonce = r.challenge(t, 0, "")
	}
	if rec := r.judge(t, 1, r.evidence(t, nonce)); rec.Result != wire.VerdictPass {
		t.Fatalf("pass on B: %s %s", rec.Reason, rec.Message)
	}
	if err := r.svcs[0].sweepStale(t.Context()); err != nil {
		t.Fatal(err)
	}
	d, err := r.inv.Device(t.Context(), r.dev)
	if err != nil {
		t.Fatal(err)
	}
	if d.HasFlag(FlagStale) {
		t.Error("replica A flagged stale a device that answered on replica B")
	}
}

// TestReplicasHelloAfterVerdict: a broker pool's shared subscriptions
// spread a device's messages over the replicas, so its hello (the start
// of its session) may be handled after the evidence it sent next was
// judged on another replica. That pass no longer counts (it may belong to
// the previous session); Hello asks the device for evidence at once, and
// the pass on that nonce, judged anywhere, makes Current hold everywhere.
func TestReplicasHelloAfterVerdict(t *testing.T) {
	r := newReplicaSet(t, 2)
	a, b := r.svcs[0], r.svcs[1]
	a.SessionStarted(r.dev, time.Now()) // the device's previous connection
	if rec := r.judge(t, 1, r.evidence(t, r.challenge(t, 1, ""))); rec.Result != wire.VerdictPass {
		t.Fatalf("pass on B: %s %s", rec.Reason, rec.Message)
	}
	r.mu.Lock()
	sent := len(r.out[0])
	r.mu.Unlock()
	a.Hello(r.dev, time.Now()) // the new connection's hello, handled late on A
	if err := b.Current(r.dev); !errors.Is(err, ErrNoCurrentVerdict) {
		t.Fatalf("B: Current after the hello on A: %v, want ErrNoCurrentVerdict", err)
	}
	r.mu.Lock()
	out := r.out[0][sent:]
	r.mu.Unlock()
	if len(out) != 1 || out[0].Type != wire.TypeAttestChallenge {
		t.Fatalf("A sent %d messages at the hello, want one challenge", len(out))
	}
	var ch wire.AttestChallenge
	if err := wire.DecodeBody(out[0], wire.TypeAttestChallenge, &ch); err != nil {
		t.Fatal(err)
	}
	if rec := r.judge(t, 1, r.evidence(t, ch.Nonce)); rec.Result != wire.VerdictPass {
		t.Fatalf("pass on B of A's challenge at the hello: %s %s", rec.Reason, rec.Message)
	}
	for i, s := range r.svcs {
		if err := s.Current(r.dev); err != nil {
			t.Errorf("replica %d: Current after the pass on the hello's challenge: %v", i, err)
		}
	}
}

// TestReplicasSweepOnce: two replicas run at once on one database; the
// stale sweep runs on one of them only (the lease's holder), which flags
// the device that left its challenges unanswered and alerts once; when it
// stops, the other takes the sweep over.
func TestReplicasSweepOnce(t *testing.T) {
	var alerts atomic.Int64
	r := newReplicaSet(t, 2, func(i int, db *postgres.DB, cfg *Config) {
		ls, err := lease.Open(t.Context(), db, lease.Config{Holder: fmt.Sprintf("replica-%d", i), TTL: 3 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		cfg.Leases = ls
		cfg.Interval = 200 * time.Millisecond // a sweep every 50ms
		cfg.Alert = func(a Alert) {
			if a.Kind == "stale" {
				alerts.Add(1)
			}
		}
	})
	for range 2 { // StaleAfter unanswered challenges
		r.challenge(t, 0, "")
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	cancels := make([]context.CancelFunc, len(r.svcs))
	for i, s := range r.svcs {
		sctx, scancel := context.WithCancel(ctx)
		cancels[i] = scancel
		wg.Go(func() {
			if err := s.Run(sctx); err != nil {
				t.Errorf("replica %d: Run: %v", i, err)
			}
		})
	}
	sweeps := func(i int) uint64 { return r.svcs[i].Stats().StaleSweeps }
	wait.For(t, "ten sweeps", func() bool { return sweeps(0)+sweeps(1) >= 10 })
	holder := 0
	if sweeps(1) > 0 {
		holder = 1
	}
	if other := 1 - holder; sweeps(other) != 0 {
		t.Fatalf("both replicas swept: %d and %d sweeps", sweeps(0), sweeps(1))
	}
	d, err := r.inv.Device(t.Context(), r.dev)
	if err != nil {
		t.Fatal(err)
	}
	if !d.HasFlag(FlagStale) {
		t.Error("the device that left its challenges unanswered is not flagged stale")
	}
	if n := alerts.Load(); n != 1 {
		t.Errorf("%d stale alerts, want 1", n)
	}
	// The holder stops: the other replica takes the sweep over.
	cancels[holder]()
	other := 1 - holder
	wait.For(t, "the other replica to sweep", func() bool { return sweeps(other) > 0 })
	if n := alerts.Load(); n != 1 {
		t.Errorf("%d stale alerts after the takeover, want 1", n)
	}
}
