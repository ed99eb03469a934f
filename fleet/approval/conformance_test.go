package approval

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/storage/pgtest"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
)

// openBackend opens cfg in bbolt, or in PostgreSQL under
// TestConformance/postgres.
func openBackend(t testing.TB, cfg Config) (*Manager, error) {
	return pgtest.OpenBackend(t, cfg.Path, cfg, Open, OpenPostgres)
}

// conformanceTests are the store's tests run against both backends.
var conformanceTests = []pgtest.Test{
	{Name: "TwoPersonRule", Fn: TestTwoPersonRule},
	{Name: "SelfApprovalThroughAToken", Fn: TestSelfApprovalThroughAToken},
	{Name: "ApprovalCount", Fn: TestApprovalCount},
	{Name: "ExecutesOnceUnderConcurrentApprovals", Fn: TestExecutesOnceUnderConcurrentApprovals},
	{Name: "ExpiredCannotBeApproved", Fn: TestExpiredCannotBeApproved},
	{Name: "RejectedCannotBeExecuted", Fn: TestRejectedCannotBeExecuted},
	{Name: "ExecutorFailureAndPanicAreRecorded", Fn: TestExecutorFailureAndPanicAreRecorded},
	{Name: "ExecutorOutlivesTheApproversContext", Fn: TestExecutorOutlivesTheApproversContext},
	{Name: "AuditorFailureBlocksTheDecision", Fn: TestAuditorFailureBlocksTheDecision},
	{Name: "Inbox", Fn: TestInbox},
	{Name: "StateSurvivesRestart", Fn: TestStateSurvivesRestart},
	{Name: "SubmitValidation", Fn: TestSubmitValidation},
	{Name: "ListPages", Fn: TestListPages},
	{Name: "RunRecordsExpiry", Fn: TestRunRecordsExpiry},
	{Name: "AccountChangedAfterTheRequestCannotApprove", Fn: TestAccountChangedAfterTheRequestCannotApprove},
	{Name: "RequesterCheckedWhenItRuns", Fn: TestRequesterCheckedWhenItRuns},
	{Name: "NoRequesterNoRun", Fn: TestNoRequesterNoRun},
	{Name: "OlderRequestsRunAsTheRequestersRole", Fn: TestOlderRequestsRunAsTheRequestersRole},
	{Name: "WithdrawNeedsTheRequestPermission", Fn: TestWithdrawNeedsTheRequestPermission},
}

// TestConformance runs the store's tests on PostgreSQL (pgtest: skipped
// without one unless CI=true); the package's tests run them on bbolt.
func TestConformance(t *testing.T) {
	srv := pgtest.Conformance(t, conformanceTests)
	t.Run("ReplicasExecuteOnce", func(t *testing.T) { testReplicasExecuteOnce(t, srv) })
}

// testReplicasExecuteOnce: approvals of one request arriving at once on
// two replicas sharing the database run its executor once.
func testReplicasExecuteOnce(t *testing.T, srv *pgtest.Server) {
	url := srv.NewDatabase(t)
	var runs atomic.Int64
	open := func() *Manager {
		m := pgtest.Replica(t, url, func(db *postgres.DB) (*Manager, error) {
			return OpenPostgres(t.Context(), db, Config{Requester: asFiled,
				Rules: map[Kind]Rule{KindMassRevocation: {Request: auth.PermRotationWrite, Approve: auth.PermSecurityApprove, Approvals: 2}}})
		})
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
