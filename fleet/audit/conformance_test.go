package audit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/sigil-iot/sigil/fleet/storage/pgtest"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
)

// openBackend opens cfg in bbolt, or in PostgreSQL under
// TestConformance/postgres.
func openBackend(t testing.TB, cfg Config) (*Log, error) {
	db, ok := pgtest.Database(t, cfg.Path)
	if !ok {
		return Open(cfg)
	}
	return OpenPostgres(context.Background(), db, cfg)
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
}

// testReplicasShareOneChain: logs of two replicas on one database,
// appending and checkpointing at once, write one chain that verifies in
// the store and exported, each entry once.
func testReplicasShareOneChain(t *testing.T, srv *pgtest.Server) {
	url := srv.NewDatabase(t)
	key := newKey(t)
	open := func() *Log {
		db, err := postgres.Open(t.Context(), url, postgres.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(db.Close)
		l, err := OpenPostgres(t.Context(), db, Config{Signer: key})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		return l
	}
	logs := []*Log{open(), open()}
	const workers, each = 6, 25
	var wg sync.WaitGroup
	errs := make(chan error, 2*workers*each)
	for r, l := range logs {
		for w := range workers {
			wg.Go(func() {
				for i := range each {
					e := New(User(fmt.Sprintf("user-%d", w)), "device.tag", fmt.Sprintf("%d/%d/%d", r, w, i))
					if err := l.Record(context.Background(), e); err != nil {
						errs <- err
					}
					if i%10 == 0 {
						if _, err := l.Checkpoint(context.Background()); err != nil && !errors.Is(err, ErrEmpty) {
							errs <- err
						}
					}
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
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
