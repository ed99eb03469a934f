package audit

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/fleet/storage/pgtest"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
	"github.com/sigil-iot/sigil/internal/wait"
)

// openBackend opens cfg in bbolt, or in PostgreSQL under
// TestConformance/postgres.
func openBackend(t testing.TB, cfg Config) (*Log, error) {
	return pgtest.OpenBackend(t, cfg.Path, cfg, Open, OpenPostgres)
}

// conformanceTests are the log's tests run against both backends (the
// others read or change the bbolt file itself).
var conformanceTests = []pgtest.Test{
	{Name: "ChainVerifies", Fn: TestChainVerifies},
	{Name: "EmptyLog", Fn: TestEmptyLog},
	{Name: "RestartContinuesChain", Fn: TestRestartContinuesChain},
	{Name: "ConcurrentAppendsKeepOneChain", Fn: TestConcurrentAppendsKeepOneChain},
	{Name: "CanceledAppends", Fn: TestCanceledAppends},
	{Name: "AppendRefusesBadEntries", Fn: TestAppendRefusesBadEntries},
	{Name: "NoSigner", Fn: TestNoSigner},
	{Name: "LongLines", Fn: TestLongLines},
	{Name: "List", Fn: TestList},
	{Name: "VerifyDetectsTampering", Fn: TestVerifyDetectsTampering},
	{Name: "VerifyCannotSeeUnsignedTail", Fn: TestVerifyCannotSeeUnsignedTail},
}

// TestConformance runs the log's tests on PostgreSQL (pgtest: skipped
// without one unless CI=true); the package's tests run them on bbolt.
func TestConformance(t *testing.T) {
	srv := pgtest.Conformance(t, conformanceTests)
	t.Run("ReplicasShareOneChain", func(t *testing.T) { testReplicasShareOneChain(t, srv) })
	t.Run("ReplicasCheckpointOnce", func(t *testing.T) { testReplicasCheckpointOnce(t, srv) })
}

// testReplicasShareOneChain: logs of two replicas on one database,
// appending and checkpointing at once, write one chain that verifies in
// the store and exported, each entry once.
func testReplicasShareOneChain(t *testing.T, srv *pgtest.Server) {
	url := srv.NewDatabase(t)
	key := newKey(t)
	open := func() *Log {
		return pgtest.Replica(t, url, func(db *postgres.DB) (*Log, error) {
			return OpenPostgres(t.Context(), db, Config{Signer: key})
		})
	}
	logs := []*Log{open(), open()}
	const workers, each = 6, 25
	appendConcurrently(t, logs, workers, each, 10)
	if _, err := logs[1].Checkpoint(t.Context()); err != nil {
		t.Fatal(err)
	}
	const n = 2 * workers * each
	for i, l := range logs {
		rep, err := l.VerifyStore(t.Context(), &key.PublicKey)
		if err != nil {
			t.Fatalf("replica %d: %v", i, err)
		}
		if rep.Entries != n || rep.Last != n || rep.Checkpoints == 0 {
			t.Fatalf("replica %d: report %+v, want %d entries and checkpoints", i, rep, n)
		}
	}
	var buf bytes.Buffer
	if err := logs[0].Export(t.Context(), &buf, 0, 0); err != nil {
		t.Fatal(err)
	}
	if rep, err := Verify(&buf, &key.PublicKey); err != nil || rep.Entries != n {
		t.Fatalf("export: %+v, %v", rep, err)
	}
	seen := map[string]int{}
	for seq := uint64(1); seq <= n; seq++ {
		e, err := logs[seq%2].Get(t.Context(), seq)
		if err != nil {
			t.Fatal(err)
		}
		seen[e.Target]++
	}
	if len(seen) != n {
		t.Fatalf("%d distinct entries of %d appended", len(seen), n)
	}
}

// countingSigner counts the checkpoints a replica signs.
type countingSigner struct {
	*ecdsa.PrivateKey
	n atomic.Int64
}

func (c *countingSigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	c.n.Add(1)
	return c.PrivateKey.Sign(r, digest, opts)
}

// testReplicasCheckpointOnce: two replicas' logs on one database run at
// once; each new head is signed by the holder of the checkpoint lease
// only, never by both; when it stops, the other one signs.
func testReplicasCheckpointOnce(t *testing.T, srv *pgtest.Server) {
	url := srv.NewDatabase(t)
	key := newKey(t)
	var signers []*countingSigner
	var logs []*Log
	for i := range 2 {
		s := &countingSigner{PrivateKey: key}
		signers = append(signers, s)
		logs = append(logs, pgtest.Replica(t, url, func(db *postgres.DB) (*Log, error) {
			return OpenPostgres(t.Context(), db, Config{Signer: s, CheckpointInterval: 10 * time.Millisecond, Leases: pgtest.Lease(t, db, i)})
		}))
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	cancels := make([]context.CancelFunc, len(logs))
	done := make([]chan struct{}, len(logs))
	for i, l := range logs {
		ctx, cancel := context.WithCancel(t.Context())
		cancels[i], done[i] = cancel, make(chan struct{})
		defer cancel()
		wg.Go(func() {
			defer close(done[i])
			if err := l.Run(ctx); err != nil {
				t.Errorf("replica %d: Run: %v", i, err)
			}
		})
	}
	signed := func() int64 { return signers[0].n.Load() + signers[1].n.Load() }
	const heads = 20
	for i := range heads {
		record(t, logs[i%2], sample(i))
		wait.For(t, "the new head's checkpoint", func() bool { return signed() > int64(i) })
	}
	holder := 0
	if signers[1].n.Load() > 0 {
		holder = 1
	}
	other := 1 - holder
	if n := signers[other].n.Load(); n != 0 {
		t.Fatalf("both replicas signed periodic checkpoints: %d and %d", signers[0].n.Load(), signers[1].n.Load())
	}
	if n := signed(); n != heads {
		t.Fatalf("%d checkpoints signed for %d heads", n, heads)
	}
	cancels[holder]()
	<-done[holder] // its final checkpoint signed nothing new: the head was signed
	before := signers[other].n.Load()
	record(t, logs[other], sample(heads))
	wait.For(t, "the other replica to sign", func() bool { return signers[other].n.Load() > before })
	if rep, err := logs[other].VerifyStore(t.Context(), &key.PublicKey); err != nil || rep.Unsigned != 0 {
		t.Fatalf("after the takeover: %+v, %v", rep, err)
	}
}
