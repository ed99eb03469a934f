package audit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/sigil-iot/sigil/fleet/storage/pgtest"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
)

// conformance holds, for the runs of TestConformance on PostgreSQL, the
// server and the database each Config.Path stands for (a test that
// reopens a path reopens its database).
var conformance sync.Map // test name prefix -> *pgBackend

type pgBackend struct {
	srv *pgtest.Server
	mu  sync.Mutex
	dbs map[string]string // Config.Path -> database URL
}

// openBackend opens cfg in bbolt, or in PostgreSQL under
// TestConformance/postgres.
func openBackend(t testing.TB, cfg Config) (*Log, error) {
	var be *pgBackend
	conformance.Range(func(k, v any) bool {
		if strings.HasPrefix(t.Name(), k.(string)) {
			be = v.(*pgBackend)
		}
		return be == nil
	})
	if be == nil {
		return Open(cfg)
	}
	be.mu.Lock()
	url, ok := be.dbs[cfg.Path]
	if !ok {
		url = be.srv.NewDatabase(t)
		be.dbs[cfg.Path] = url
	}
	be.mu.Unlock()
	db, err := postgres.Open(context.Background(), url, postgres.Options{})
	if err != nil {
		return nil, err
	}
	t.Cleanup(db.Close)
	return OpenPostgres(context.Background(), db, cfg)
}

// conformanceTests are the log's tests run against both backends (the
// others read or change the bbolt file itself).
var conformanceTests = []struct {
	name string
	fn   func(*testing.T)
}{
	{"ChainVerifies", TestChainVerifies},
	{"EmptyLog", TestEmptyLog},
	{"RestartContinuesChain", TestRestartContinuesChain},
	{"ConcurrentAppendsKeepOneChain", TestConcurrentAppendsKeepOneChain},
	{"CanceledAppends", TestCanceledAppends},
	{"AppendRefusesBadEntries", TestAppendRefusesBadEntries},
	{"NoSigner", TestNoSigner},
	{"LongLines", TestLongLines},
	{"List", TestList},
	{"VerifyDetectsTampering", TestVerifyDetectsTampering},
	{"VerifyCannotSeeUnsignedTail", TestVerifyCannotSeeUnsignedTail},
}

// TestConformance runs the log's tests on PostgreSQL (pgtest: skipped
// without one unless CI=true); the package's tests run them on bbolt.
func TestConformance(t *testing.T) {
	srv := pgtest.Start(t)
	conformance.Store(t.Name()+"/postgres/", &pgBackend{srv: srv, dbs: map[string]string{}})
	t.Cleanup(func() { conformance.Delete(t.Name() + "/postgres/") })
	t.Run("postgres", func(t *testing.T) {
		for _, c := range conformanceTests {
			t.Run(c.name, c.fn)
		}
		t.Run("ReplicasShareOneChain", func(t *testing.T) { testReplicasShareOneChain(t, srv) })
	})
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
