package approval

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/sigil-iot/sigil/fleet/auth"
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
func openBackend(t testing.TB, cfg Config) (*Manager, error) {
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

// conformanceTests are the store's tests run against both backends.
var conformanceTests = []struct {
	name string
	fn   func(*testing.T)
}{
	{"TwoPersonRule", TestTwoPersonRule},
	{"SelfApprovalThroughAToken", TestSelfApprovalThroughAToken},
	{"ApprovalCount", TestApprovalCount},
	{"ExecutesOnceUnderConcurrentApprovals", TestExecutesOnceUnderConcurrentApprovals},
	{"ExpiredCannotBeApproved", TestExpiredCannotBeApproved},
	{"RejectedCannotBeExecuted", TestRejectedCannotBeExecuted},
	{"ExecutorFailureAndPanicAreRecorded", TestExecutorFailureAndPanicAreRecorded},
	{"ExecutorOutlivesTheApproversContext", TestExecutorOutlivesTheApproversContext},
	{"AuditorFailureBlocksTheDecision", TestAuditorFailureBlocksTheDecision},
	{"Inbox", TestInbox},
	{"StateSurvivesRestart", TestStateSurvivesRestart},
	{"SubmitValidation", TestSubmitValidation},
	{"ListPages", TestListPages},
	{"RunRecordsExpiry", TestRunRecordsExpiry},
	{"AccountChangedAfterTheRequestCannotApprove", TestAccountChangedAfterTheRequestCannotApprove},
	{"RequesterCheckedWhenItRuns", TestRequesterCheckedWhenItRuns},
	{"NoRequesterNoRun", TestNoRequesterNoRun},
	{"OlderRequestsRunAsTheRequestersRole", TestOlderRequestsRunAsTheRequestersRole},
	{"WithdrawNeedsTheRequestPermission", TestWithdrawNeedsTheRequestPermission},
}

// TestConformance runs the store's tests on PostgreSQL (pgtest: skipped
// without one unless CI=true); the package's tests run them on bbolt.
func TestConformance(t *testing.T) {
	srv := pgtest.Start(t)
	conformance.Store(t.Name()+"/postgres/", &pgBackend{srv: srv, dbs: map[string]string{}})
	t.Cleanup(func() { conformance.Delete(t.Name() + "/postgres/") })
	t.Run("postgres", func(t *testing.T) {
		for _, c := range conformanceTests {
			t.Run(c.name, c.fn)
		}
		t.Run("ReplicasExecuteOnce", func(t *testing.T) { testReplicasExecuteOnce(t, srv) })
	})
}

// testReplicasExecuteOnce: approvals of one request arriving at once on
// two replicas sharing the database run its executor once.
func testReplicasExecuteOnce(t *testing.T, srv *pgtest.Server) {
	url := srv.NewDatabase(t)
	var runs atomic.Int64
	open := func() *Manager {
		db, err := postgres.Open(t.Context(), url, postgres.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(db.Close)
		m, err := OpenPostgres(t.Context(), db, Config{Requester: asFiled,
			Rules: map[Kind]Rule{KindMassRevocation: {Request: auth.PermRotationWrite, Approve: auth.PermSecurityApprove, Approvals: 2}}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		if err := m.Register(KindMassRevocation, func(context.Context, Request, Actor) error { runs.Add(1); return nil }); err != nil {
			t.Fatal(err)
		}
		return m
	}
	replicas := []*Manager{open(), open()}
	const requests = 5
	for i := range requests {
		r, err := replicas[i%2].Submit(t.Context(), alice, Draft{Kind: KindMassRevocation, Target: fmt.Sprintf("group=batch-%d", i), Justification: "leaked keys"})
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		var ok atomic.Int64
		for j := range 6 {
			wg.Go(func() {
				p := auth.Principal{User: fmt.Sprintf("sec%d", j), Role: auth.RoleSecurityAdmin}
				_, err := replicas[j%2].Approve(t.Context(), p, r.ID, "")
				switch {
				case err == nil:
					ok.Add(1)
				case !errors.Is(err, ErrNotPending):
					t.Errorf("approve: %v", err)
				}
			})
		}
		wg.Wait()
		if ok.Load() != 2 || runs.Load() != int64(i+1) {
			t.Fatalf("request %d: %d approvals accepted (want 2), executor ran %d times (want %d)", i, ok.Load(), runs.Load(), i+1)
		}
	}
}
