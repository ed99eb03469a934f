package alert

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sigil-iot/sigil/fleet/storage/notify"
	"github.com/sigil-iot/sigil/fleet/storage/pgtest"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
	"github.com/sigil-iot/sigil/internal/wait"
)

// openBackend opens cfg in bbolt, or in PostgreSQL under
// TestConformance/postgres.
func openBackend(t testing.TB, cfg Config) (*Engine, error) {
	return pgtest.OpenBackend(t, cfg.Path, cfg, Open, OpenPostgres)
}

// conformanceTests are the engine's tests run against both backends (the
// others run in a synctest bubble, check the file lock or need no store).
var conformanceTests = []pgtest.Test{
	{Name: "ThresholdFiresAndResolves", Fn: TestThresholdFiresAndResolves},
	{Name: "RateFiresAndResolves", Fn: TestRateFiresAndResolves},
	{Name: "EventCountWithinWindowAndClearAfter", Fn: TestEventCountWithinWindowAndClearAfter},
	{Name: "EventClearOnAndKeys", Fn: TestEventClearOnAndKeys},
	{Name: "AbsenceCountsFromEngineStart", Fn: TestAbsenceCountsFromEngineStart},
	{Name: "NewListeningPort", Fn: TestNewListeningPort},
	{Name: "AckResolveDedupe", Fn: TestAckResolveDedupe},
	{Name: "QueryPaging", Fn: TestQueryPaging},
	{Name: "QuarantineAction", Fn: TestQuarantineAction},
	{Name: "PersistAcrossRestart", Fn: TestPersistAcrossRestart},
	{Name: "Routing", Fn: TestRouting},
	{Name: "RetryThenDeadLetterThenRedrive", Fn: TestRetryThenDeadLetterThenRedrive},
	{Name: "PermanentFailureIsNotRetried", Fn: TestPermanentFailureIsNotRetried},
	{Name: "QueueFullAndShutdownDeadLetter", Fn: TestQueueFullAndShutdownDeadLetter},
	{Name: "DeleteRuleAndForget", Fn: TestDeleteRuleAndForget},
	{Name: "BadInput", Fn: TestBadInput},
	{Name: "HistoryBound", Fn: TestHistoryBound},
	{Name: "RepeatsAreSkippedNotDeadLettered", Fn: TestRepeatsAreSkippedNotDeadLettered},
	{Name: "ForgetDropsLearnedState", Fn: TestForgetDropsLearnedState},
	{Name: "EventsDoNotCountAsContact", Fn: TestEventsDoNotCountAsContact},
	{Name: "FloodControl", Fn: TestFloodControl},
	{Name: "GroupsAndBulkAcknowledge", Fn: TestGroupsAndBulkAcknowledge},
	{Name: "FloodSummarySentAfterRestart", Fn: TestFloodSummarySentAfterRestart},
	{Name: "BaselineCatchesCPUJump", Fn: TestBaselineCatchesCPUJump},
	{Name: "PutRuleKeepsStateAcrossCosmeticChange", Fn: TestPutRuleKeepsStateAcrossCosmeticChange},
}

// TestConformance runs the engine's tests on PostgreSQL (pgtest: skipped
// without one unless CI=true); the package's tests run them on bbolt.
func TestConformance(t *testing.T) {
	srv := pgtest.Conformance(t, conformanceTests)
	t.Run("ReplicasFireOnce", func(t *testing.T) { testReplicasFireOnce(t, srv) })
	t.Run("ReplicasShareRules", func(t *testing.T) { testReplicasShareRules(t, srv) })
	t.Run("ReplicasRepeatOnce", func(t *testing.T) { testReplicasRepeatOnce(t, srv) })
	t.Run("ReplicasBoundTheHistory", func(t *testing.T) { testReplicasBoundTheHistory(t, srv) })
	t.Run("HistoryCountedNearItsBound", func(t *testing.T) { testHistoryCountedNearItsBound(t, srv) })
}

// testReplicasFireOnce: the same condition seen at once by two engines
// sharing the database opens one alert per device, which absorbs the
// other replica's firing; the dead letters the replicas record each get their own
// ID.
func testReplicasFireOnce(t *testing.T, srv *pgtest.Server) {
	url := srv.NewDatabase(t)
	clk := newClock()
	open := func() *Engine {
		return pgtest.Replica(t, url, func(db *postgres.DB) (*Engine, error) {
			return OpenPostgres(t.Context(), db, Config{Now: clk.Now})
		})
	}
	a := open()
	if _, err := a.PutRule(Rule{ID: "hot", Severity: SeverityWarning, Threshold: &Threshold{Metric: "temp", Op: OpGE, Value: 80}}); err != nil {
		t.Fatal(err)
	}
	replicas := []*Engine{a, open()} // the second loads the rule
	const devices, rounds = 20, 4
	var start, wg sync.WaitGroup
	start.Add(1)
	for d := range devices {
		for i := range 2 * rounds {
			wg.Go(func() {
				start.Wait()
				id := fmt.Sprintf("d%d", d)
				if err := replicas[i%2].Observe(id, clk.Now(), map[string]float64{"temp": 90}, nil); err != nil {
					t.Error(err)
				}
			})
		}
	}
	start.Done() // every firing at once
	wg.Wait()
	all, _, err := a.Alerts(Query{Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != devices {
		t.Fatalf("%d alerts for %d devices: %+v", len(all), devices, all)
	}
	for _, al := range all {
		// Each replica fires once (its own state then holds the
		// condition as firing): one opens the alert, the other's
		// firing is absorbed.
		if al.Count != 2 || al.State != StateFiring {
			t.Errorf("alert of %s: count %d (want 2: one firing per replica), state %s", al.DeviceID, al.Count, al.State)
		}
	}
	if fired := a.Stats().Fired + replicas[1].Stats().Fired; fired != devices {
		t.Errorf("%d alerts reported opened by the replicas, want %d (one per device)", fired, devices)
	}

	for i := range 10 {
		wg.Go(func() {
			replicas[i%2].deadLetter("hook", Notification{Transition: TransitionFiring, Alert: all[0]}, 1, errDown, false)
		})
	}
	wg.Wait()
	dls, _, err := replicas[1].DeadLetters(0, 100)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[uint64]bool{}
	for _, d := range dls {
		ids[d.ID] = true
	}
	if len(dls) != 10 || len(ids) != 10 {
		t.Fatalf("%d dead letters with %d IDs, want 10 each", len(dls), len(ids))
	}
}

// testReplicasShareRules: a rule put on replica A is used by replica B's
// engine at once, a change of its condition resolves B's alert of it on
// B, and its deletion removes it from B.
func testReplicasShareRules(t *testing.T, srv *pgtest.Server) {
	url := srv.NewDatabase(t)
	clk := newClock()
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	open := func() *Engine {
		var bus *notify.Postgres
		e := pgtest.Replica(t, url, func(db *postgres.DB) (*Engine, error) {
			bus = notify.NewPostgres(db, nil)
			return OpenPostgres(t.Context(), db, Config{Now: clk.Now, Bus: bus})
		})
		wg.Go(func() {
			if err := bus.Run(ctx); err != nil {
				t.Error(err)
			}
		})
		return e
	}
	a, b := open(), open()
	hot := Rule{ID: "hot", Severity: SeverityWarning, Threshold: &Threshold{Metric: "temp", Op: OpGE, Value: 80}}
	if _, err := a.PutRule(hot); err != nil {
		t.Fatal(err)
	}
	wait.Until(t, func() error { _, err := b.Rule("hot"); return err })
	if err := b.Observe("d1", clk.Now(), map[string]float64{"temp": 90}, nil); err != nil {
		t.Fatal(err)
	}
	open1, _, err := b.Alerts(Query{RuleID: "hot", Open: true})
	if err != nil || len(open1) != 1 || open1[0].DeviceID != "d1" {
		t.Fatalf("B's alerts of A's rule: %+v, %v", open1, err)
	}
	// A changes the condition: B resolves the alert it opened.
	hot.Threshold.Value = 95
	if _, err := a.PutRule(hot); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "B to resolve its alert of the changed rule", func() bool {
		al, err := b.Alert(open1[0].ID)
		return err == nil && al.State == StateResolved
	})
	if r, err := b.Rule("hot"); err != nil || r.Threshold.Value != 95 {
		t.Fatalf("B's rule after the change: %+v, %v", r, err)
	}
	if err := a.DeleteRule("hot"); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "B to drop the deleted rule", func() bool {
		_, err := b.Rule("hot")
		return errors.Is(err, ErrNotFound)
	})
	if err := b.Observe("d1", clk.Now(), map[string]float64{"temp": 99}, nil); err != nil {
		t.Fatal(err)
	}
	if al, _, err := b.Alerts(Query{Open: true}); err != nil || len(al) != 0 {
		t.Fatalf("B fired a deleted rule: %+v, %v", al, err)
	}
}

// testReplicasRepeatOnce: two engines sharing the store run at once; the
// open alert is re-sent by the holder of the lease LeaseRepeat only, so
// that the sinks get each repeat once; when it stops, the other engine
// re-sends.
func testReplicasRepeatOnce(t *testing.T, srv *pgtest.Server) {
	url := srv.NewDatabase(t)
	clk := newClock()
	var repeats [2]atomic.Int64
	open := func(i int) *Engine {
		sink := NotifierFunc(func(_ context.Context, n Notification) error {
			if n.Transition == TransitionRepeat {
				repeats[i].Add(1)
			}
			return nil
		})
		return pgtest.Replica(t, url, func(db *postgres.DB) (*Engine, error) {
			return OpenPostgres(t.Context(), db, Config{Now: clk.Now, Leases: pgtest.Lease(t, db, i), Resend: 10 * time.Millisecond,
				Routes: []Route{{Name: "am", Notifier: sink, Transitions: []Transition{TransitionFiring, TransitionRepeat}}}})
		})
	}
	a := open(0)
	if _, err := a.PutRule(Rule{ID: "hot", Severity: SeverityWarning, Threshold: &Threshold{Metric: "temp", Op: OpGE, Value: 80}}); err != nil {
		t.Fatal(err)
	}
	if err := a.Observe("d1", clk.Now(), map[string]float64{"temp": 90}, nil); err != nil {
		t.Fatal(err)
	}
	pgtest.OneHolder(t, pgtest.Leased{
		Run:    []func(context.Context) error{a.Run, open(1).Run},
		Done:   func(i int) int64 { return repeats[i].Load() },
		Enough: 10, Work: "re-sent the open alert", Unit: "repeats",
	}, nil)
}

// testReplicasBoundTheHistory: alerts opened and resolved on both
// replicas count in the history's bound, which the holder of the lease
// LeaseRepeat keeps: the history shrinks to MaxAlerts.
func testReplicasBoundTheHistory(t *testing.T, srv *pgtest.Server) {
	url := srv.NewDatabase(t)
	clk := newClock()
	const maxAlerts = 2
	open := func(i int) *Engine {
		return pgtest.Replica(t, url, func(db *postgres.DB) (*Engine, error) {
			return OpenPostgres(t.Context(), db, Config{Now: clk.Now, Leases: pgtest.Lease(t, db, i), MaxAlerts: maxAlerts, SweepInterval: 10 * time.Millisecond})
		})
	}
	engines := []*Engine{open(0), open(1)}
	if _, err := engines[0].PutRule(Rule{ID: "hot", Severity: SeverityWarning, Threshold: &Threshold{Metric: "temp", Op: OpGE, Value: 80}}); err != nil {
		t.Fatal(err)
	}
	if err := engines[1].reloadRules(); err != nil { // no bus here
		t.Fatal(err)
	}
	// Five alerts opened and resolved on each replica, before Run.
	for i, e := range engines {
		for k := range 5 {
			id := fmt.Sprintf("d%d-%d", i, k)
			for _, v := range []float64{90, 50} {
				if err := e.Observe(id, clk.Now(), map[string]float64{"temp": v}, nil); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	count := func() int {
		n, err := engines[0].st.countAlerts(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := count(); n != 10 {
		t.Fatalf("%d alerts stored, want 10", n)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	for i, e := range engines {
		wg.Go(func() {
			if err := e.Run(ctx); err != nil {
				t.Errorf("replica %d: Run: %v", i, err)
			}
		})
	}
	wait.For(t, "the history bound to MaxAlerts", func() bool { return count() <= maxAlerts })
}

// countQueries counts the history bound's statements on a pool: the count
// of every alert row and the read of the alerts' sequence.
type countQueries struct{ counts, seqs atomic.Int64 }

func (c *countQueries) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	switch {
	case strings.HasPrefix(d.SQL, "SELECT count(*) FROM "+Table):
		c.counts.Add(1)
	case strings.HasPrefix(d.SQL, "SELECT seq FROM "+Table+"_seq"):
		c.seqs.Add(1)
	}
	return ctx
}

func (*countQueries) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// testHistoryCountedNearItsBound: the lease holder counts every alert row
// (a count(*) on PostgreSQL) only when the alerts last counted plus the
// IDs given since could pass MaxAlerts, not at every SweepInterval
// (docs/BENCHMARKS.md §12); alerts opened past the bound are still
// pruned.
func testHistoryCountedNearItsBound(t *testing.T, srv *pgtest.Server) {
	url := srv.NewDatabase(t)
	clk := newClock()
	const maxAlerts = 5
	q := &countQueries{}
	db, err := postgres.Open(t.Context(), url, postgres.Options{Tracer: q})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	e, err := OpenPostgres(t.Context(), db, Config{Now: clk.Now, Leases: pgtest.Lease(t, db, 0), MaxAlerts: maxAlerts, SweepInterval: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	if _, err := e.PutRule(Rule{ID: "hot", Severity: SeverityWarning, Threshold: &Threshold{Metric: "temp", Op: OpGE, Value: 80}}); err != nil {
		t.Fatal(err)
	}
	fire := func(n int, from int) {
		t.Helper()
		for k := range n {
			for _, v := range []float64{90, 50} {
				if err := e.Observe(fmt.Sprintf("d%d", from+k), clk.Now(), map[string]float64{"temp": v}, nil); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	fire(2, 0)
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	counts := q.counts.Load() // Open's
	wg.Go(func() {
		if err := e.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	checks := func() int64 { return max(q.seqs.Load(), q.counts.Load()-counts) } // either is read at each check
	wait.For(t, "20 checks of the history bound", func() bool { return checks() >= 20 })
	if n := q.counts.Load() - counts; n > 1 {
		t.Errorf("every alert row counted %d times in %d checks with 2 alerts of at most %d; want once", n, checks(), maxAlerts)
	}
	fire(6, 2)
	wait.For(t, "the history bound to MaxAlerts", func() bool {
		n, err := e.st.countAlerts(t.Context())
		return err == nil && n <= maxAlerts
	})
}
